"""The `dchml` command line end to end on a tiny data set, and its error paths (one line, exit 2)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dchml
from dchml.app.cli import main
from dchml.data import make_synthetic, save_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TRAIN = ["--bits", "16", "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--momentum", "0.9",
              "--eval-every", "1", "--proxy-steps", "200", "--topk", "100", "--quiet"]


def _tiny():
    return make_synthetic(n=300, n_labels=5, image_dim=24, text_dim=40, n_query=60, n_train=150, seed=3,
                          image_noise=0.5, label_noise=0.05, text_background=0.3)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    save_npz(_tiny(), path)
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_npz, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "run")
    assert main(["train", "--data", tiny_npz, "--out", out] + TINY_TRAIN) == 0
    return out


def _one_error_line(capsys, code, expected_code=2):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and ": error: " in err[0]
    return err[0]


def test_train_writes_metrics_checkpoint_and_report(trained):
    with open(os.path.join(trained, "metrics.json")) as f:
        metrics = json.load(f)
    for key in ("bits", "topk", "i2t_map", "t2i_map", "history", "seconds_per_epoch", "device", "command"):
        assert key in metrics
    assert metrics["bits"] == 16 and metrics["topk"] == 100 and len(metrics["history"]) == 2
    assert 0 < metrics["i2t_map"] <= 1 and 0 < metrics["t2i_map"] <= 1
    assert len(metrics["curves"]["i2t"]["pr"]["precision"]) == 17  # radius 0..16
    for name in ("checkpoint.pt", "report.md", "pr_curves.png", "precision_at_n.png", "training.png"):
        assert os.path.getsize(os.path.join(trained, name)) > 0
    with open(os.path.join(trained, "training.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    report = open(os.path.join(trained, "report.md")).read()
    assert f"{metrics['i2t_map']:.4f}" in report and "![precision-recall](pr_curves.png)" in report


def test_eval_reproduces_the_training_map(trained, tiny_npz, capsys, tmp_path):
    out = str(tmp_path / "scores.json")
    assert main(["eval", "--checkpoint", os.path.join(trained, "checkpoint.pt"), "--data", tiny_npz,
                 "--topk", "100", "--out", out]) == 0
    with open(os.path.join(trained, "metrics.json")) as f:
        metrics = json.load(f)
    with open(out) as f:
        scores = json.load(f)
    assert scores["i2t_map"] == pytest.approx(metrics["i2t_map"], abs=1e-12)
    assert scores["t2i_map"] == pytest.approx(metrics["t2i_map"], abs=1e-12)
    assert "MAP@100 I->T" in capsys.readouterr().out


def test_encode_matches_the_python_api(trained, tmp_path, capsys):
    data = _tiny()
    inp, out = tmp_path / "text.npy", tmp_path / "codes.npy"
    np.save(inp, data.text[:9].numpy())
    ckpt = os.path.join(trained, "checkpoint.pt")
    assert main(["encode", "--checkpoint", ckpt, "--modality", "text", "--input", str(inp), "--out", str(out)]) == 0
    codes = np.load(out)
    model = dchml.method.checkpoint.model_from_checkpoint(ckpt)
    assert codes.dtype == np.uint8 and codes.shape == (9, 2)
    assert np.array_equal(codes, dchml.encode(model, data.text[:9], "text").numpy())
    # refuses to overwrite without --force
    code = main(["encode", "--checkpoint", ckpt, "--modality", "text", "--input", str(inp), "--out", str(out)])
    assert "already exists" in _one_error_line(capsys, code)


def test_search_lists_top_k(trained, tiny_npz, tmp_path, capsys):
    ckpt = os.path.join(trained, "checkpoint.pt")
    out = str(tmp_path / "results.json")
    assert main(["search", "--checkpoint", ckpt, "--data", tiny_npz, "--query-modality", "image",
                 "--queries", "0,3", "-k", "5", "--out", out]) == 0
    with open(out) as f:
        results = json.load(f)["results"]
    assert len(results) == 2 and all(len(r["results"]) == 5 for r in results)
    dists = [x["distance"] for x in results[0]["results"]]
    assert dists == sorted(dists) and all(0 <= d <= 16 for d in dists)
    # the same ranking as the codes' Hamming distances (ties by database position)
    data = _tiny()
    model = dchml.method.checkpoint.model_from_checkpoint(ckpt)
    q = dchml.method.encoding.hash_codes(model, data.image[data.query_idx[[0]]], "image")
    db = dchml.method.encoding.hash_codes(model, data.text[data.retrieval_idx], "text")
    d = ((16 - q @ db.T) / 2).squeeze(0)
    expected = sorted(range(len(d)), key=lambda i: (d[i].item(), i))[:5]
    assert [x["row"] for x in results[0]["results"]] == data.retrieval_idx[expected].tolist()
    assert main(["search", "--checkpoint", ckpt, "--data", tiny_npz, "--query-modality", "text",
                 "--queries", "1", "-k", "3"]) == 0
    assert "text query" in capsys.readouterr().out


def test_resume_continues_a_cli_run(tiny_npz, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--data", tiny_npz, "--out", out] + TINY_TRAIN) == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress, no epoch lines
    before = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert main(["train", "--data", tiny_npz, "--out", out, "--resume", "--epochs", "3", "--quiet"]) == 0
    after = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert before["epoch"] == 2 and after["epoch"] == 3
    assert after["config"]["lr"] == 0.05  # flags not given keep the run's values
    with open(os.path.join(out, "metrics.json")) as f:
        assert len(json.load(f)["history"]) == 3
    code = main(["train", "--data", tiny_npz, "--out", out, "--resume", "--epochs", "4", "--lr", "0.1", "--quiet"])
    assert "cannot change lr" in _one_error_line(capsys, code)


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "/nonexistent/x.mat", "--out", "{tmp}/o"], "no such file"),
    (["train", "--bits", "0", "--out", "{tmp}/o"], "positive integer"),
    (["train", "--method", "dcmh", "--out", "{tmp}/o"], "invalid choice"),
    (["train", "--data", "{tmp}/bad.npz", "--out", "{tmp}/o"], "bad.npz"),
    (["train", "--out", "{tmp}/full"], "already exists and is not empty"),
    (["train", "--out", "{tmp}/o", "--resume"], "nothing to resume"),
    (["eval", "--checkpoint", "{tmp}/bad.pt", "--data", "synthetic"], "corrupt"),
    (["encode", "--checkpoint", "{tmp}/missing.pt", "--modality", "text", "--input", "x.npy", "--out", "{tmp}/c.npy"],
     "not found"),
    (["search", "--checkpoint", "{ckpt}", "--data", "{npz}", "--query-modality", "image", "--queries", "9999"],
     "positions in"),
    (["encode", "--checkpoint", "{ckpt}", "--modality", "image", "--input", "{tmp}/wrong.npy", "--out", "{tmp}/c.npy"],
     "takes (n, 24)"),
    (["eval", "--checkpoint", "{ckpt}", "--data", "{tmp}/other.npz"], "does not fit"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_are_one_line_exit_2(argv, needle, tmp_path, trained, tiny_npz, capsys):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user file")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 7), np.float32))
    other = make_synthetic(n=100, n_labels=3, image_dim=24, text_dim=40, n_query=20, n_train=50, seed=0)
    save_npz(other, tmp_path / "other.npz")
    subst = {"{tmp}": str(tmp_path), "{ckpt}": os.path.join(trained, "checkpoint.pt"), "{npz}": tiny_npz}
    args = []
    for a in argv:
        for k, v in subst.items():
            a = a.replace(k, v)
        args.append(a)
    line = _one_error_line(capsys, main(args))
    assert needle in line
    assert (tmp_path / "full" / "keep.txt").read_text() == "user file"


def test_console_entry_point_exit_code_and_help():
    env = dict(os.environ, PYTHONPATH=ROOT)
    bad = subprocess.run([sys.executable, "-m", "dchml", "train", "--bits", "x", "--out", "o"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--bits" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "dchml", "--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0 and "demo" in ok.stdout


def test_demo_on_a_small_synthetic_set(tmp_path, monkeypatch, capsys):
    import dchml.data

    monkeypatch.setattr(dchml.data.load, "make_synthetic", lambda seed=0: _tiny())
    out = str(tmp_path / "demo")
    threads = torch.get_num_threads()
    argv = ["demo", "--epochs", "2", "--bits", "16", "--topk", "100", "--proxy-steps", "100", "--quiet"]
    assert main(argv + ["--out", out, "--jobs", "1"]) == 0
    report = open(os.path.join(out, "report.md")).read()
    assert "| DCHML | 16 |" in report and "| DCHML_P | 16 |" in report
    for sub in ("dchml", "dchml_p"):
        assert os.path.isfile(os.path.join(out, sub, "metrics.json"))
    printed = capsys.readouterr().out
    assert "report:" in printed
    assert "torch threads per run: 1" in report  # the demo's default, recorded in its report
    assert torch.get_num_threads() == threads  # and restored after main() returns
    # The two methods trained at once, one process each, give the sequential run's results exactly.
    parallel = str(tmp_path / "parallel")
    assert main(argv + ["--out", parallel, "--jobs", "2"]) == 0
    assert "2 runs at once" in open(os.path.join(parallel, "report.md")).read()
    for sub in ("dchml", "dchml_p"):
        one, two = (json.load(open(os.path.join(d, sub, "metrics.json"))) for d in (out, parallel))
        untimed = [[{k: v for k, v in epoch.items() if k != "seconds"} for epoch in m["history"]] for m in (one, two)]
        assert (one["i2t_map"], one["t2i_map"]) == (two["i2t_map"], two["t2i_map"]) and untimed[0] == untimed[1]
