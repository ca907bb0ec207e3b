"""The objective of eq. 16 (each term against docs/spec.md §4 by hand), Algorithm 1's pieces, a short run
beating the untrained model, checkpoints (weights_only, atomic) and exact resume."""
import math
import os

import pytest
import torch

import dchml
from dchml.method.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from dchml.data import make_synthetic
from dchml.method.objective import LossWeights, full_objective, step_loss
from dchml.method.passes import update_codes
from dchml.method.proxies import proxy_diagnostics, train_proxies
from dchml.train import TrainConfig, evaluate, train
from conftest import train_until


def mds_row(b, g, y, eta, mu, other=None):
    """docs/spec.md §3 / eq. 14 for one row, in plain Python floats (float64)."""
    k = len(b)
    other = b if other is None else other
    pos = [j for j in range(len(y)) if y[j] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]
    gbar = [sum(g[j][t] for j in pos) / len(pos) for t in range(k)]
    dot = lambda a, c: sum(x * z for x, z in zip(a, c))  # noqa: E731
    u_num = dot(b, gbar) - mu * k
    u_den = dot(other, gbar) - mu * k
    den = math.exp(eta * u_den) + sum(math.exp(eta * dot(other, g[q])) for q in neg)
    return -(eta * u_num - math.log(den))


@pytest.fixture(scope="module")
def small_case():
    torch.manual_seed(3)
    b = torch.tanh(torch.randn(4, 6, dtype=torch.float64))
    o = torch.tanh(torch.randn(4, 6, dtype=torch.float64))
    c = torch.where(torch.randn(4, 6) > 0, 1.0, -1.0).double()
    g = torch.where(torch.randn(3, 6) > 0, 1.0, -1.0).double()
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.float64)
    return b, o, c, g, y


def test_step_loss_terms_match_method_md(small_case):
    b, o, c, g, y = small_case
    w = LossWeights(method="dchml", eta=0.3, mu=0.3, lam=0.5, gamma=0.2)  # large lam/gamma: terms visible
    bl, ol, gl, yl = b.tolist(), o.tolist(), g.tolist(), y.tolist()
    intra = [mds_row(bl[i], gl, yl[i], 0.3, 0.3) for i in range(4)]
    inter = [mds_row(bl[i], gl, yl[i], 0.3, 0.3, other=ol[i]) + mds_row(ol[i], gl, yl[i], 0.3, 0.3, other=bl[i])
             for i in range(4)]
    quant = [float(((b[i] - c[i]) ** 2).sum()) for i in range(4)]
    expected = sum(intra[i] + 0.5 * inter[i] + 0.2 * quant[i] for i in range(4)) / 4
    out = b.clone().requires_grad_(True)
    other = o.clone().requires_grad_(True)
    total, terms = step_loss(out, other, c, g, y, w)
    assert abs(float(total.detach()) - expected) < 1e-9
    assert abs(terms["intra"] - sum(intra) / 4) < 1e-9
    assert abs(terms["inter"] - sum(inter) / 4) < 1e-9
    assert abs(terms["quant"] - sum(quant) / 4) < 1e-9
    total.backward()
    assert out.grad is not None and other.grad is None  # only the trained modality gets gradients
    # a row with all labels positive has no negatives: its intra loss is 0 (docs/spec.md §3)
    assert abs(intra[3]) < 1e-12


def test_step_loss_gradient_matches_method_md(small_case):
    b, o, c, g, y = small_case
    w = LossWeights(method="dchml", eta=0.3, mu=0.3, lam=0.0, gamma=0.0)
    out = b.clone().requires_grad_(True)
    step_loss(out, o, c, g, y, w)[0].backward()
    for i in range(4):  # docs/spec.md §3: d/db = -eta (1 - p0) gbar + eta sum_q p_q g_q  (then /batch)
        pos, neg = y[i] > 0, y[i] == 0
        gbar = g[pos].mean(0)
        logits = torch.cat([(0.3 * (b[i] @ gbar - 0.3 * 6)).view(1), 0.3 * (g[neg] @ b[i])])
        p = torch.softmax(logits, 0)
        grad = -0.3 * (1 - p[0]) * gbar + 0.3 * (p[1:, None] * g[neg]).sum(0)
        assert torch.allclose(out.grad[i], grad / 4, atol=1e-12)


def test_dchml_p_and_q_weights(small_case):
    b, o, c, g, y = small_case
    q = LossWeights.for_method("dchml_q", eta=0.3, mu=0.3, lam=0.001, gamma=0.5)
    assert q.gamma == 0.0
    p = LossWeights(method="dchml_p", eta=0.3, mu=0.3, lam=0.0, gamma=0.0)
    total, terms = step_loss(b, o, c, g, y, p)
    assert torch.allclose(total, dchml.losses.functional.pairwise_proxy_loss(b, g, y))
    with pytest.raises(ValueError, match="method must be one of"):
        LossWeights.for_method("dcmh", eta=0.3, mu=0.3, lam=0.0, gamma=0.0)


def test_full_objective_is_eq16_per_pair(small_case):
    b, o, c, g, y = small_case
    w = LossWeights(method="dchml", eta=0.3, mu=0.3, lam=0.5, gamma=0.2)
    full = full_objective(b, o, c, g, y, w, chunk=3)  # chunking must not change the sums
    bl, ol, gl, yl = b.tolist(), o.tolist(), g.tolist(), y.tolist()
    total = 0.0
    for i in range(4):
        l_i = mds_row(bl[i], gl, yl[i], 0.3, 0.3, other=ol[i]) + mds_row(ol[i], gl, yl[i], 0.3, 0.3, other=bl[i])
        total += (mds_row(bl[i], gl, yl[i], 0.3, 0.3) + mds_row(ol[i], gl, yl[i], 0.3, 0.3) + 0.5 * l_i
                  + 0.2 * float(((b[i] - c[i]) ** 2).sum() + ((o[i] - c[i]) ** 2).sum()))
    assert abs(full["objective"] - total / 4) < 1e-9


def test_update_codes_and_proxy_diagnostics():
    bv = torch.tensor([[0.5, -0.2, 0.1]])
    bt = torch.tensor([[-0.1, 0.2, -0.1]])
    assert update_codes(bv, bt).tolist() == [[1.0, -1.0, -1.0]]  # 0 -> -1
    g = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1], [-1, -1, -1, -1]])
    d = proxy_diagnostics(g)
    assert d["min_hamming"] == 2 and abs(d["mean_hamming"] - (2 + 4 + 2) / 3) < 1e-6


def test_config_validation():
    with pytest.raises(ValueError, match="bits must be a positive integer"):
        TrainConfig(bits=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        TrainConfig(method="dchml_x")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"bits": 8, "colour": "red"})
    assert TrainConfig.from_dict(TrainConfig(bits=8).to_dict()) == TrainConfig(bits=8)
    d = TrainConfig()
    assert (d.eta, d.mu, d.lam, d.gamma, d.alpha, d.beta, d.batch_size) == (0.3, 0.3, 0.001, 0.01, 0.05, 0.1, 128)
    p = TrainConfig.paper()  # the paper's literal recipe, one call away
    assert (p.optimizer, p.lr, p.momentum, p.epochs, p.image_norm, p.text_norm, p.select) == (
        "sgd", 1e-3, 0.0, 120, "none", "none", "last")
    assert TrainConfig.for_recipe("paper", bits=16) == TrainConfig.paper(bits=16)
    with pytest.raises(ValueError, match="recipe must be one of"):
        TrainConfig.for_recipe("fast")
    for bad, match in ((dict(optimizer="lbfgs"), "optimizer must be one of"), (dict(image_norm="zscore"), "image_norm"),
                       (dict(val_fraction=1.0), "val_fraction"), (dict(patience=-1), "patience"),
                       (dict(norm_clip=0.0), "norm_clip")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


@pytest.fixture(scope="module")
def tiny():
    # less noise than the default synthetic set, so a few epochs on 200 pairs show clear learning
    return make_synthetic(n=400, n_labels=6, image_dim=32, text_dim=64, n_query=80, n_train=200, seed=1,
                          image_noise=0.5, label_noise=0.05, text_background=0.3, nuisance_scale=0.5)


def _cfg(**kw):
    base = dict(bits=16, epochs=3, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9, schedule="constant",
                warmup_epochs=0, patience=0, eval_every=1, proxy_steps=300, image_hidden=64, text_hidden=64,
                proxy_hidden=32, topk=100, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def test_short_run_beats_the_untrained_model(tiny):
    cfg = _cfg(epochs=4, eval_every=2)
    torch.manual_seed(cfg.seed)
    untrained = dchml.train.build_model(tiny, cfg)
    train_proxies(untrained, cfg)
    before = evaluate(untrained, tiny, topk=100)
    rng_before = torch.get_rng_state()
    result = train(tiny, cfg, progress=False, log=None)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    after = evaluate(result.model, tiny, topk=100)
    assert after["i2t_map"] > before["i2t_map"] + 0.15  # measured: 0.56 -> 0.90
    assert after["t2i_map"] > before["t2i_map"] + 0.15  # measured: 0.57 -> 0.87
    hist = result.history
    assert [r["epoch"] for r in hist] == list(range(1, 5))
    assert hist[-1]["objective"] < hist[0]["objective"]
    assert hist[0]["val_i2t_map"] is None and hist[1]["val_i2t_map"] is not None
    kept = max((r for r in hist if r["val_i2t_map"] is not None),
               key=lambda r: r["val_i2t_map"] + r["val_t2i_map"])["epoch"]
    assert result.selection["kept_epoch"] == kept and result.selection["validation_items"] == 20
    assert result.proxy_diagnostics["min_hamming"] > 0


@pytest.mark.parametrize("method", ["dchml_p", "dchml_q"])
def test_ablations_train(tiny, method):
    result = train(tiny, _cfg(method=method, epochs=2), progress=False, log=None)
    assert math.isfinite(result.history[-1]["objective"])
    if method == "dchml_q":
        assert result.history[-1]["objective"] == pytest.approx(
            result.history[-1]["intra_image"] + result.history[-1]["intra_text"]
            + 0.001 * result.history[-1]["inter"])


def test_same_seed_same_run_different_seed_differs(tiny):
    a = train(tiny, _cfg(epochs=1), progress=False, log=None)
    b = train(tiny, _cfg(epochs=1), progress=False, log=None)
    c = train(tiny, _cfg(epochs=1, seed=8), progress=False, log=None)
    assert torch.equal(a.state["stored_image"], b.state["stored_image"])
    assert not torch.equal(a.state["stored_image"], c.state["stored_image"])


def test_resume_equals_uninterrupted_run(tiny, tmp_path):
    cfg = _cfg(epochs=3)
    full = train(tiny, cfg, checkpoint_path=str(tmp_path / "full.pt"), progress=False, log=None)

    path = str(tmp_path / "cut.pt")
    train_until(train, tiny, cfg, path, epoch=2)
    assert load_checkpoint(path)["epoch"] == 2
    torch.manual_seed(12345)  # a different global RNG state must not matter
    resumed = train(tiny, cfg, checkpoint_path=path, resume=True, progress=False, log=None)
    a, b = full.state, resumed.state
    for key in ("codes_c", "stored_image", "stored_text"):
        assert torch.equal(a[key], b[key]), key
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for opt in ("optim_image", "optim_text"):
        for pid, st in a[opt]["state"].items():
            assert torch.equal(st["momentum_buffer"], b[opt]["state"][pid]["momentum_buffer"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])


def test_checkpoint_is_weights_only_and_atomic(tiny, tmp_path):
    path = tmp_path / "ck.pt"
    train(tiny, _cfg(epochs=1), checkpoint_path=str(path), progress=False, log=None)
    state = torch.load(path, weights_only=True)
    assert state["format"] == "dchml-checkpoint" and state["epoch"] == 1
    assert state["model"]["proxies"].shape == (6, 16)
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]  # no temporary files left behind
    model = model_from_checkpoint(str(path))
    assert model.bits == 16 and not model.training
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(str(corrupt))
    other = tmp_path / "other.pt"
    torch.save({"hello": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not a dchml checkpoint"):
        load_checkpoint(str(other))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pt"))


def test_resume_refuses_other_data(tiny, tmp_path):
    path = str(tmp_path / "ck.pt")
    train(tiny, _cfg(epochs=1), checkpoint_path=path, progress=False, log=None)
    other = make_synthetic(n=400, n_labels=6, image_dim=32, text_dim=64, n_query=80, n_train=200, seed=2)
    with pytest.raises(CheckpointError, match="different data"):
        train(other, _cfg(epochs=2), checkpoint_path=path, resume=True, progress=False, log=None)


def test_resume_with_fewer_epochs_than_done(tiny, tmp_path):
    path = str(tmp_path / "ck.pt")
    train(tiny, _cfg(epochs=2), checkpoint_path=path, progress=False, log=None)
    with pytest.raises(ValueError, match="already completed 2 epochs"):
        train(tiny, _cfg(epochs=1), checkpoint_path=path, resume=True, progress=False, log=None)


def test_pixel_images_train_with_alexnet():
    data = make_synthetic(n=60, n_labels=4, image_dim=16, text_dim=20, n_query=10, n_train=16, seed=0)
    pixels = torch.randint(0, 256, (60, 3, 64, 64), dtype=torch.uint8)
    data = dchml.data.from_arrays(pixels, data.text, data.labels, query_idx=data.query_idx,
                                  retrieval_idx=data.retrieval_idx, train_idx=data.train_idx, name="pixels")
    cfg = _cfg(epochs=1, image_size=64, batch_size=8, topk=20)
    result = train(data, cfg, progress=False, log=None)
    assert result.model.image_net.uses_pixels
    assert result.selection["rule"] == "last"  # 16 training items: too few to spare a validation slice


def test_progress_bar_and_epoch_lines(tiny, capsys):
    messages = []
    train(tiny, _cfg(epochs=1), progress=True, log=messages.append)
    err = capsys.readouterr().err
    assert "dchml epoch 1/1" in err and "loss=" in err  # tqdm bar with the running loss
    assert messages[0].startswith("PHNet:") and "Hamming distance min" in messages[0]
    assert "validation MAP I->T" in messages[-2] and messages[-1].startswith("kept epoch 1 of 1")
