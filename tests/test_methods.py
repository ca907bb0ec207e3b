"""The methods over one loop: PSLDH's and CSQ's objectives against their definitions (docs/spec.md
§6, §12), their training through the shared loop (selection, exact resume, evaluation per task),
the command line on single-modality data, and the per-method hyper-parameters."""
import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import train_until
from dchml.app.cli import main
from dchml.data import make_synthetic, save_npz
from dchml.losses.functional import category_code_loss, central_similarity_loss
from dchml.method.checkpoint import load_checkpoint
from dchml.method.methods import get_method, tasks_of
from dchml.method.methods.csq import hash_centers, item_centers
from dchml.method.passes import learning_rate
from dchml.train import TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def images():
    """Image-only data: 300 items, 5 labels (multi-label), 24-d features."""
    return make_synthetic(n=300, n_labels=5, image_dim=24, text_dim=8, n_query=60, n_train=160, seed=2,
                          image_noise=0.5, label_noise=0.05, nuisance_scale=0.5, modalities=("image",))


def _cfg(method, **kw):
    base = dict(method=method, bits=16, epochs=3, batch_size=32, eval_every=1, patience=0, proxy_steps=200,
                image_hidden=32, text_hidden=32, proxy_hidden=16, topk=100, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_category_code_loss_is_psldh_formula():
    torch.manual_seed(0)
    g = torch.tanh(torch.randn(5, 8, dtype=torch.float64))
    c, k = g.shape
    sep = sum(max(0.0, float(g[i] @ g[j]) - (k if i == j else 0)) ** 2 for i in range(c) for j in range(c)) / c**2
    balance = float((g.sum(0) ** 2).sum()) / c
    quant = float(((torch.where(g > 0, 1.0, -1.0) - g) ** 2).sum()) / c
    assert float(category_code_loss(g, alpha=0.3, beta=0.7)) == pytest.approx(sep + 0.3 * balance + 0.7 * quant,
                                                                              rel=1e-12)


def test_psldh_batch_loss_is_the_partial_softmax_plus_quantization(images):
    torch.manual_seed(1)
    out = torch.tanh(torch.randn(4, 6, dtype=torch.float64))
    g = torch.where(torch.randn(3, 6) > 0, 1.0, -1.0).double()
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float64)
    cfg = _cfg("psldh", gamma=0.5, sigma=0.3, lam=0.2)
    run = type("Run", (), {"cfg": cfg, "labels": y, "model": type("M", (), {"proxies": g})()})()
    loss, terms = get_method("psldh").pass_loss(run, "image")(out, torch.arange(4))
    expected = 0.0
    for i in range(4):
        pos = [j for j in range(3) if y[i, j] == 1]
        neg = [j for j in range(3) if y[i, j] == 0]
        s = [0.5 * float(out[i] @ g[j]) for j in range(3)]
        row = 0.0
        for p in pos:  # the positive's own term and the negatives only (docs/spec.md §6.2)
            a = s[p] - 0.5 * 0.3 * 6
            row += -a + math.log(math.exp(a) + sum(math.exp(s[q]) for q in neg))
        quant = float(((torch.where(out[i] > 0, 1.0, -1.0) - out[i]) ** 2).sum())
        expected += row / len(pos) + 0.2 * quant
    assert float(loss) == pytest.approx(expected / 4, rel=1e-10)
    assert set(terms) == {"softmax", "quant"}


def test_hash_centres_hadamard_bernoulli_and_item_centres():
    centers, how = hash_centers(10, 16, seed=0)
    assert how == "hadamard" and centers.shape == (10, 16)
    dist = (16 - centers @ centers.T) / 2
    assert set(dist[~torch.eye(10, dtype=torch.bool)].tolist()) <= {8.0, 16.0}  # rows of [H; -H]
    many, how = hash_centers(40, 16, seed=0)  # c > 2k: Bernoulli
    assert how == "bernoulli" and torch.equal(many, hash_centers(40, 16, seed=0)[0])
    assert ((many == -1).sum(1) == 8).all()
    assert not torch.equal(many, hash_centers(40, 16, seed=1)[0])
    assert hash_centers(5, 12, seed=0)[1] == "bernoulli"  # 12 is not a power of two
    fill = torch.tensor([1.0, -1.0, 1.0, -1.0])
    c = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    got = item_centers(labels, c, fill)
    assert torch.equal(got[0], c[0])
    assert torch.equal(got[1], torch.tensor([1.0, -1.0, 1.0, -1.0]))  # ties (bits 1, 2) from fill


def test_central_similarity_loss_is_bce_plus_quantization():
    torch.manual_seed(2)
    u = torch.tanh(torch.randn(5, 8, dtype=torch.float64))
    h = torch.where(torch.randn(5, 8) > 0, 1.0, -1.0).double()
    bce = torch.nn.BCELoss()(0.5 * (u + 1), 0.5 * (h + 1))
    expected = bce + 1e-2 * (u.abs() - 1).pow(2).mean()
    assert float(central_similarity_loss(u, h, lam=1e-2)) == pytest.approx(float(expected), rel=1e-12)


def test_step_schedule_divides_the_rate_every_step_every_epochs():
    cfg = TrainConfig.paper(method="psldh")
    assert (cfg.schedule, cfg.step_every, cfg.step_factor, cfg.batch_size, cfg.epochs) == ("step", 100, 0.3, 80, 150)
    assert learning_rate(cfg, 1, 0, 10) == learning_rate(cfg, 100, 9, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 101, 0, 10) == pytest.approx(3e-4)


def test_method_parameters_are_the_methods_own():
    assert TrainConfig().method_params == {"eta": 0.3, "mu": 0.3, "lam": 0.001, "gamma": 0.01, "alpha": 0.05,
                                           "beta": 0.1}
    psldh = TrainConfig(method="psldh")
    assert (psldh.gamma, psldh.sigma, psldh.lam, psldh.eta, psldh.image_backbone) == (0.05, 0.4, 0.001, None, "vgg11")
    paper = TrainConfig.paper(method="psldh")  # the public code's values, not the measured defaults
    assert (paper.gamma, paper.sigma, paper.lam, paper.alpha, paper.beta) == (0.2, 0.2, 0.01, 0.05, 0.01)
    assert TrainConfig(method="csq").method_params == {"lam": 1e-4}
    with pytest.raises(ValueError, match="eta: not a parameter of psldh"):
        TrainConfig(method="psldh", eta=0.3)
    with pytest.raises(ValueError, match="modality is for single-modality methods"):
        TrainConfig(modality="image")
    assert tasks_of(("image", "text")) == ("i2t", "t2i", "i2i", "t2t") and tasks_of(("text",)) == ("t2t",)


@pytest.mark.parametrize("method", ["psldh", "csq"])
def test_single_modality_methods_train_select_and_resume_exactly(images, method, tmp_path):
    cfg = _cfg(method, val_fraction=0.2)
    full = train(images, cfg, checkpoint_path=str(tmp_path / "full.pt"), progress=False, log=None)
    assert full.model.modalities == ("image",) and not hasattr(full.model, "text_net")
    history = full.history
    assert [r["epoch"] for r in history] == [1, 2, 3] and all(r["val_i2i_map"] is not None for r in history)
    assert history[-1]["objective"] < history[0]["objective"]
    scores = evaluate(full.model, images, topk=100)
    assert set(scores) == {"topk", "i2i_map"} and scores["i2i_map"] > 0.5

    path = str(tmp_path / "cut.pt")
    train_until(train, images, cfg, path, epoch=1)
    torch.manual_seed(999)
    resumed = train(images, cfg, checkpoint_path=path, resume=True, progress=False, log=None)
    for key, value in full.state["model"].items():
        assert torch.equal(value, resumed.state["model"][key]), key
    assert torch.equal(full.state["stored_image"], resumed.state["stored_image"])
    assert "codes_c" not in full.state and "stored_text" not in full.state


def test_cli_single_modality_file(images, tmp_path, capsys):
    data = str(tmp_path / "images.npz")
    save_npz(images, data)
    out = str(tmp_path / "run")
    flags = ["--bits", "16", "--epochs", "2", "--eval-every", "1", "--topk", "100", "--quiet", "--threads", "1"]
    assert main(["train", "--data", data, "--out", str(tmp_path / "refused")] + flags) == 2
    assert "use --method psldh" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "refused")
    assert main(["train", "--data", data, "--method", "psldh", "--eta", "0.5", "--out", out] + flags) == 2
    assert "eta: not a parameter of psldh" in capsys.readouterr().err
    assert main(["train", "--data", data, "--method", "psldh", "--out", out] + flags) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["modalities"] == ["image"] and metrics["topk"] == 100
    assert "i2i_map" in metrics and "i2t_map" not in metrics
    assert "i2i_map" in metrics["baselines"]["linear"] and "i2i_map" in metrics["baselines"]["chance"]
    report = open(os.path.join(out, "report.md")).read()
    assert "| **PSLDH** | I->I |" in report and "| linear hasher | I->I |" in report
    capsys.readouterr()
    ck = os.path.join(out, "checkpoint.pt")
    assert main(["eval", "--checkpoint", ck, "--data", data]) == 0
    assert f"MAP@100 I->I {metrics['i2i_map']:.4f}" in capsys.readouterr().out
    assert main(["search", "--checkpoint", ck, "--data", data, "--query-modality", "image", "--queries", "0,1",
                 "-k", "3", "--out", str(tmp_path / "s.json")]) == 0
    with open(tmp_path / "s.json") as f:
        found = json.load(f)
    assert found["database_modality"] == "image" and len(found["results"][0]["results"]) == 3
    assert main(["encode", "--checkpoint", ck, "--modality", "text", "--input", data,
                 "--out", str(tmp_path / "c.npy")]) == 2
    assert "encodes image only" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", images.image[:4].numpy())
    assert main(["encode", "--checkpoint", ck, "--modality", "image", "--input", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "c.npy")]) == 0
    assert np.load(tmp_path / "c.npy").shape == (4, 2)


def test_psldh_on_cross_modal_data_says_which_side_and_takes_text(tmp_path, capsys):
    both = make_synthetic(n=300, n_labels=5, image_dim=24, text_dim=40, n_query=60, n_train=160, seed=3)
    data = str(tmp_path / "both.npz")
    save_npz(both, data)
    flags = ["--method", "psldh", "--bits", "16", "--epochs", "1", "--topk", "100", "--quiet", "--threads", "1"]
    assert main(["train", "--data", data, "--out", str(tmp_path / "img")] + flags) == 0
    assert "PSLDH trains on the image side" in capsys.readouterr().err
    assert main(["train", "--data", data, "--modality", "text", "--out", str(tmp_path / "txt")] + flags) == 0
    state = load_checkpoint(str(tmp_path / "txt" / "checkpoint.pt"))
    assert state["config"]["modality"] == "text" and state["model_spec"]["modalities"] == ["text"]
    with open(tmp_path / "txt" / "metrics.json") as f:
        assert "t2t_map" in json.load(f)


def test_psldh_on_two_processes_trains_like_one(images):
    from dchml.distributed import training as distributed

    cfg = _cfg("psldh", epochs=2)
    one = train(images, cfg, progress=False, log=None)
    two = distributed.train(images, cfg, nproc=2, progress=False, log=None)
    worst = max((one.state["model"][k] - two.state["model"][k]).abs().max().item() for k in one.state["model"])
    assert worst <= 1e-5
    assert [r["val_i2i_map"] for r in one.history] == pytest.approx([r["val_i2i_map"] for r in two.history],
                                                                     abs=1e-6)
