"""Input normalisation: scale and shift invariance of the transform and of the trained codes, the
automatic choice, constant and rare dimensions, and the round trip through a checkpoint into
encode / search on raw inputs."""
import numpy as np
import pytest
import torch

import dchml
from dchml.method.checkpoint import model_from_checkpoint
from dchml.app.cli import main as cli_main
from dchml.data import from_arrays, make_synthetic
from dchml.method.normalize import FeatureNormalizer, choose_kind
from dchml.train import TrainConfig, train


def _counts(n=300, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    rates = torch.rand(d, generator=g) * 0.5
    return torch.poisson(rates.expand(n, d), generator=g)


def _dense(n=300, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(0.5, 3.0, d) + torch.linspace(-2, 2, d)


@pytest.mark.parametrize("make, kind", [(_dense, "standardize"), (_counts, "log")])
@pytest.mark.parametrize("a, b", [(300.0, 0.0), (1e-3, 0.0), (7.0, -3.0), (0.02, 5.0)])
def test_transform_is_invariant_to_scale_and_shift(make, kind, a, b):
    x = make().double()
    y = a * x + b
    assert choose_kind(x) == choose_kind(y) == kind
    nx = FeatureNormalizer(x.shape[1]).double().fit(x)
    ny = FeatureNormalizer(x.shape[1]).double().fit(y)
    assert nx.kind == ny.kind == kind
    query = make(n=50, seed=1).double()
    torch.testing.assert_close(nx(query), ny(a * query + b), rtol=0, atol=1e-6)


def test_standardised_values_and_constant_and_rare_dimensions():
    x = _dense()
    x[:, 3] = 4.25  # constant in training
    norm = FeatureNormalizer(x.shape[1]).fit(x, "standardize", clip=5.0)
    z = norm(x)
    keep = [j for j in range(x.shape[1]) if j != 3]
    torch.testing.assert_close(z[:, keep].mean(0), torch.zeros(len(keep)), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, keep].std(0, unbiased=False), torch.ones(len(keep)), atol=1e-4, rtol=0)
    assert torch.equal(z[:, 3], torch.zeros(len(x)))
    shifted = x[:5].clone()
    shifted[:, 3] = 100.0  # a value never seen on a constant dimension contributes nothing
    assert torch.equal(norm(shifted)[:, 3], torch.zeros(5))
    assert norm.describe()["constant_dims"] == 1
    rare = torch.zeros(1000, 2)
    rare[0, 0], rare[:, 1] = 1.0, torch.arange(1000.0)
    out = FeatureNormalizer(2).fit(rare, "standardize", clip=5.0)(torch.tensor([[1.0, 0.0]]))
    assert out[0, 0] == 5.0  # a rare feature (z = 31.6) is clipped instead of dominating the input


def test_none_is_the_identity_and_bad_calls_are_refused():
    x = _counts()
    norm = FeatureNormalizer(x.shape[1]).fit(x, "none")
    assert torch.equal(norm(x), x) and norm.kind == "none"
    with pytest.raises(ValueError, match="must be one of"):
        FeatureNormalizer(3).fit(torch.zeros(4, 3), "zscore")
    with pytest.raises(ValueError, match="3-d features got shape"):
        FeatureNormalizer(3).fit(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="zero training items"):
        FeatureNormalizer(3).fit(torch.zeros(0, 3))


def _tiny(image_scale=1.0, image_shift=0.0, text_scale=1.0):
    base = make_synthetic(n=400, n_labels=6, image_dim=32, text_dim=64, n_query=80, n_train=200, seed=1,
                          image_noise=0.5, label_noise=0.05, text_background=0.3, nuisance_scale=0.5,
                          text_counts=True)
    return from_arrays(base.image * image_scale + image_shift, base.text * text_scale, base.labels,
                       query_idx=base.query_idx, retrieval_idx=base.retrieval_idx, train_idx=base.train_idx,
                       name="tiny")


_CFG = dict(bits=16, epochs=3, batch_size=32, eval_every=1, proxy_steps=300, image_hidden=64, text_hidden=64,
            proxy_hidden=32, topk=100, seed=3, lr=1e-3)


def test_codes_are_invariant_to_the_scale_of_the_feature_files():
    plain = _tiny()
    scaled = _tiny(image_scale=300.0, image_shift=-2.0, text_scale=0.001)
    a = train(plain, TrainConfig(**_CFG), progress=False, log=None).model
    b = train(scaled, TrainConfig(**_CFG), progress=False, log=None).model
    for modality, x, y in (("image", plain.image, scaled.image), ("text", plain.text, scaled.text)):
        ca, cb = dchml.method.encoding.hash_codes(a, x, modality), dchml.method.encoding.hash_codes(b, y, modality)
        agree = float((ca == cb).float().mean())
        assert agree > 0.999, (modality, agree)  # equal up to floating-point rounding
    assert a.text_net.normalizer.kind == "log" and a.image_net.normalizer.kind == "standardize"


def test_paper_recipe_trains_on_raw_features():
    model = train(_tiny(), TrainConfig.paper(**{**_CFG, "lr": 1e-3}), progress=False, log=None).model
    assert model.image_net.normalizer.kind == "none" and model.text_net.normalizer.kind == "none"


def test_normaliser_round_trips_through_the_checkpoint_and_encodes_raw_inputs(tmp_path, capsys):
    data = _tiny(text_scale=50.0)
    path = tmp_path / "ck.pt"
    result = train(data, TrainConfig(**_CFG), checkpoint_path=str(path), progress=False, log=None)
    loaded = model_from_checkpoint(str(path))
    for modality in ("image", "text"):
        saved, live = loaded.net(modality).normalizer, result.model.net(modality).normalizer
        assert saved.kind == live.kind != "none"
        for name, buffer in live.named_buffers():
            assert torch.equal(buffer, getattr(saved, name)), name
    raw = data.text[:7].numpy()
    np.save(tmp_path / "raw.npy", raw)
    assert cli_main(["encode", "--checkpoint", str(path), "--modality", "text", "--input",
                           str(tmp_path / "raw.npy"), "--out", str(tmp_path / "codes.npy")]) == 0
    expected = dchml.encode(result.model, torch.from_numpy(raw), "text").numpy()
    assert np.array_equal(np.load(tmp_path / "codes.npy"), expected)
    # without its normaliser the model would give other codes for the same raw rows
    loaded.text_net.normalizer.kind_code.fill_(0)
    assert not np.array_equal(dchml.encode(loaded, torch.from_numpy(raw), "text").numpy(), expected)


def test_version_1_checkpoints_still_load_with_identity_normalisers(tmp_path):
    data = _tiny()
    path = tmp_path / "ck.pt"
    train(data, TrainConfig.paper(**_CFG), checkpoint_path=str(path), progress=False, log=None)
    state = torch.load(path, weights_only=True)
    state["version"] = 1
    state["model"] = {k: v for k, v in state["model"].items() if ".normalizer." not in k}
    old = tmp_path / "old.pt"
    torch.save(state, old)
    model = model_from_checkpoint(str(old))
    assert model.text_net.normalizer.kind == "none"
    torch.testing.assert_close(model.net("text")(data.text[:4]), model_from_checkpoint(str(path)).net("text")(data.text[:4]))
