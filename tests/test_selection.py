"""Model selection without peeking (the validation slice, the kept epoch, early stopping), the
learning-rate schedule, the baselines beside every run, several code lengths in one run, the
paper's recipe from the command line, and the default split of files without training items."""
import itertools
import json
import os

import numpy as np
import pytest
import torch

from dchml.method.baselines import chance_map, linear_hasher
from dchml.method.kernel_hasher import Ridge
from dchml.app.cli import main
from dchml.data import load_dataset, make_synthetic, save_npz
from dchml.retrieval.metrics import mean_average_precision
from dchml.method.evaluate import validation_split
from dchml.method.passes import learning_rate
from dchml.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(n=400, n_labels=6, image_dim=32, text_dim=64, n_query=80, n_train=200, seed=1,
                          image_noise=0.5, label_noise=0.05, text_background=0.3, nuisance_scale=0.5)


_CFG = dict(bits=16, batch_size=32, eval_every=1, proxy_steps=300, image_hidden=64, text_hidden=64,
            proxy_hidden=32, topk=100, seed=3)


def test_validation_slice_is_seeded_disjoint_and_never_the_queries(tiny):
    cfg = TrainConfig(val_fraction=0.25, **_CFG)
    fit, val = validation_split(tiny.train_idx, cfg)
    again_fit, again_val = validation_split(tiny.train_idx, cfg)
    assert torch.equal(fit, again_fit) and torch.equal(val, again_val)
    assert val.numel() == 50 and fit.numel() == 150
    assert not set(val.tolist()) & set(fit.tolist())
    assert set(val.tolist()) | set(fit.tolist()) == set(tiny.train_idx.tolist())
    assert not set(val.tolist()) & set(tiny.query_idx.tolist())
    other = validation_split(tiny.train_idx, TrainConfig(val_fraction=0.25, **{**_CFG, "seed": 4}))[1]
    assert not torch.equal(val, other)
    capped = validation_split(tiny.train_idx, TrainConfig(val_fraction=0.5, val_max=30, **_CFG))[1]
    assert capped.numel() == 30
    assert validation_split(tiny.train_idx, TrainConfig(val_fraction=0.0, **_CFG))[1].numel() == 0


def test_kept_epoch_is_the_best_validation_epoch_and_queries_are_never_read(tiny, monkeypatch):
    import dchml.train as train_module

    seen = []
    real = train_module.retrieval_scores

    def spy(model, data, query_idx, db_idx, **kw):
        seen.append(set(query_idx.tolist()) | set(db_idx.tolist()))
        return real(model, data, query_idx, db_idx, **kw)

    monkeypatch.setattr(train_module, "retrieval_scores", spy)
    result = train(tiny, TrainConfig(epochs=4, patience=0, **_CFG), progress=False, log=None)
    queries = set(tiny.query_idx.tolist())
    assert len(seen) == 4 and all(not (s & queries) for s in seen)
    hist = result.history
    best = max(hist, key=lambda r: (r["val_i2t_map"] + r["val_t2i_map"], -r["epoch"]))
    assert result.selection["kept_epoch"] == best["epoch"]
    kept_model = result.state["model"]
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in kept_model.items())
    if best["epoch"] != 4:
        assert "model_last" in result.state


def test_early_stopping_after_patience_evaluations_without_improvement(tiny):
    lines = []
    result = train(tiny, TrainConfig(epochs=12, patience=2, lr=1e-12, warmup_epochs=0, schedule="constant", **_CFG),
                   progress=False, log=lines.append)
    assert result.selection["kept_epoch"] == 1 and result.selection["last_epoch"] == 3
    assert result.selection["stopped_early"] and len(result.history) == 3
    assert any(line.startswith("stopping early") for line in lines)
    assert "stopped early after 2 evaluations without improvement" in result.selection["reason"]


def test_resume_after_early_stop_and_selection_state(tiny, tmp_path):
    cfg = TrainConfig(epochs=4, patience=0, **_CFG)
    full = train(tiny, cfg, checkpoint_path=str(tmp_path / "a.pt"), progress=False, log=None)

    class Stop(Exception):
        pass

    def stop(epoch, record):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(tiny, cfg, checkpoint_path=str(tmp_path / "b.pt"), progress=False, log=None, on_epoch_end=stop)
    resumed = train(tiny, cfg, checkpoint_path=str(tmp_path / "b.pt"), resume=True, progress=False, log=None)
    assert resumed.selection == full.selection
    for key, value in full.state["model"].items():
        assert torch.equal(value, resumed.state["model"][key]), key


def test_learning_rate_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, epochs=10, warmup_epochs=2)
    steps = 4
    assert learning_rate(cfg, 1, 0, steps) == pytest.approx(1e-3 / 8)
    assert learning_rate(cfg, 2, 3, steps) == pytest.approx(1e-3)
    assert learning_rate(cfg, 3, 0, steps) == pytest.approx(1e-3)
    assert learning_rate(cfg, 6, 2, steps) == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 3.5 / 8)))
    lrs = [learning_rate(cfg, e, s, steps) for e in range(3, 11) for s in range(steps)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1e-3 * 0.01
    flat = TrainConfig(lr=1e-3, epochs=10, warmup_epochs=0, schedule="constant")
    assert {learning_rate(flat, e, s, steps) for e in range(1, 11) for s in range(steps)} == {1e-3}


def test_chance_is_the_exact_mean_over_random_rankings():
    labels_q = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.float32)
    labels_d = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.float32)

    class Data:  # the fields chance_map reads
        labels = torch.cat([labels_q, labels_d])
        query_idx = torch.arange(2)
        retrieval_idx = torch.arange(2, 6)

    exact = []
    for order in itertools.permutations(range(4)):
        codes = torch.zeros(4, 8)
        for rank, item in enumerate(order):  # distinct distances in this order
            codes[item, :rank] = 1.0
        codes = codes * 2 - 1
        q = -torch.ones(2, 8)
        exact.append(mean_average_precision(q, codes, labels_q, labels_d, topk=4))
    assert chance_map(Data(), topk=4)["i2t_map"] == pytest.approx(float(np.mean(exact)), abs=1e-12)


@pytest.mark.parametrize("n, d", [(40, 6), (6, 40)])  # the primal and the dual (n < d) forms
def test_ridge_matches_the_closed_form(n, d):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(n, d, generator=g).double(), torch.randn(n, 3, generator=g).double()
    ridge = Ridge(x, t)
    w = ridge.weights(0.1)
    xc, tc = x - x.mean(0), t - t.mean(0)
    expected = torch.linalg.solve(xc.T @ xc + 0.1 * ridge.scale * torch.eye(d, dtype=torch.float64), xc.T @ tc)
    torch.testing.assert_close(w, expected)


def test_linear_hasher_beats_chance_on_tiny_data(tiny):
    result = train(tiny, TrainConfig(epochs=1, **_CFG), progress=False, log=None)
    split = result.state["split"]
    linear = linear_hasher(result.model, tiny, split["fit_idx"], split["val_idx"], topk=100)
    chance = chance_map(tiny, topk=100)
    assert linear["chosen_on"] == "validation slice"
    assert linear["i2t_map"] > chance["i2t_map"] + 0.1 and linear["t2i_map"] > chance["t2i_map"] + 0.1


def _npz(tmp_path, data):
    path = tmp_path / "tiny.npz"
    save_npz(data, str(path))
    return str(path)


def test_several_code_lengths_in_one_run_and_one_report(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", _npz(tmp_path, tiny), "--bits", "8,16", "--epochs", "2", "--topk", "100",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    for bits in (8, 16):
        metrics = json.loads((out / f"bits{bits}" / "metrics.json").read_text())
        assert metrics["bits"] == bits and "linear" in metrics["baselines"] and "chance" in metrics["baselines"]
        assert metrics["selection"]["kept_epoch"] in (1, 2)
        assert (out / f"bits{bits}" / "checkpoint.pt").is_file()
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["bits"] == [8, 16] and len(summary["runs"]) == 2
    report = (out / "report.md").read_text()
    assert "| method | task | 8 bits | 16 bits |" in report and "| linear hasher | I->T |" in report
    printed = capsys.readouterr().out
    assert "dchml 8 bits" in printed and "dchml 16 bits" in printed and "linear hasher" in printed
    assert main(argv + ["--resume"]) == 0  # both finished: the resume has nothing left to do
    assert main(["train", "--data", "synthetic", "--bits", "8,8", "--out", str(tmp_path / "x")]) == 2


def test_paper_recipe_from_the_command_line(tmp_path, tiny):
    out = tmp_path / "paper"
    assert main(["train", "--data", _npz(tmp_path, tiny), "--recipe", "paper", "--bits", "8", "--epochs", "1",
                 "--topk", "100", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    c = metrics["config"]
    assert (c["optimizer"], c["lr"], c["momentum"], c["image_norm"], c["text_norm"], c["select"]) == (
        "sgd", 1e-3, 0.0, "none", "none", "last")
    assert metrics["normalization"]["text"]["kind"] == "none"
    assert "kept the last epoch" in metrics["selection"]["reason"]


def test_a_file_with_queries_and_database_but_no_training_items(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    labels = np.zeros((n, 4), dtype=np.float32)
    labels[np.arange(n), rng.integers(4, size=n)] = 1
    arrays = dict(image=rng.standard_normal((n, 5)).astype(np.float32),
                  text=rng.random((n, 7)).astype(np.float32), labels=labels,
                  query_idx=np.arange(50), retrieval_idx=np.arange(50, n))
    path = tmp_path / "qd.npz"
    np.savez(path, **arrays)
    data = load_dataset(str(path))
    assert torch.equal(data.train_idx, data.retrieval_idx)  # a database of <= 10,000 items is the training set
    big = 10_050
    labels = np.zeros((big, 2), dtype=np.float32)
    labels[np.arange(big), np.arange(big) % 2] = 1
    np.savez(path, image=np.zeros((big, 2), np.float32), text=np.zeros((big, 2), np.float32), labels=labels,
             query_idx=np.arange(20), retrieval_idx=np.arange(20, big))
    a, b = load_dataset(str(path), seed=1), load_dataset(str(path), seed=1)
    assert a.train_idx.numel() == 10_000 and torch.equal(a.train_idx, b.train_idx)
    assert not torch.equal(a.train_idx, load_dataset(str(path), seed=2).train_idx)
    assert os.path.getsize(path) > 0
