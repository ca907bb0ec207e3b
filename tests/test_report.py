"""report.md and its PNG plots from metrics dicts (one run, and two runs side by side)."""
import os

import pytest

from dchml.report import render_markdown, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(method, i2t, t2i, bits=16):
    history = [{"epoch": e, "seconds": 0.5, "objective": 10.0 / e, "i2t_map": (i2t * e / 3 if e % 2 == 0 or e == 3 else None),
                "t2i_map": (t2i * e / 3 if e % 2 == 0 or e == 3 else None)} for e in (1, 2, 3)]
    curve = {"precision_at_n": {"n": [1, 10, 100], "precision": [0.9, 0.8, 0.7]},
             "pr": {"precision": [0.95 - 0.05 * r for r in range(bits + 1)], "recall": [r / bits for r in range(bits + 1)]}}
    return {"method": method, "bits": bits, "topk": 100, "i2t_map": i2t, "t2i_map": t2i, "epochs": 3,
            "seconds_per_epoch": 0.5, "history": history, "curves": {"i2t": curve, "t2i": curve},
            "proxies": {"min_hamming": 6.0, "mean_hamming": 8.2},
            "config": {"epochs": 3, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "eta": 0.3, "mu": 0.3, "lam": 0.001,
                       "gamma": 0.01, "alpha": 0.05, "beta": 0.1, "seed": 0},
            "data": {"name": "synthetic", "n": 300, "n_labels": 5, "image": "24-d features", "text_dim": 40,
                     "n_query": 60, "n_retrieval": 240, "n_train": 150},
            "device": "test machine", "date": "2026-11-26 07:00 UTC", "dchml_version": "0.1.0", "torch_version": "x",
            "command": "dchml demo --out d"}


def test_comparison_report(tmp_path):
    runs = {"dchml": _metrics("dchml", 0.7712, 0.7801), "dchml_p": _metrics("dchml_p", 0.6123, 0.6234)}
    path = write_report(str(tmp_path), runs, title="compare", notes=["a note"])
    text = open(path).read()
    assert text.startswith("# compare")
    assert "| DCHML | 16 | 0.7712 | 0.7801 | 3 | 0.50 | 6 / 8.2 |" in text
    assert "| DCHML_P | 16 | 0.6123 | 0.6234 |" in text
    assert "- a note" in text and "`dchml demo --out d`" in text
    for name in ("pr_curves.png", "precision_at_n.png", "training.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == PNG
        assert os.path.getsize(tmp_path / name) > 5000  # a real figure, not an empty canvas
    assert sorted(os.listdir(tmp_path)) == ["pr_curves.png", "precision_at_n.png", "report.md", "training.png"]


def test_dchml_q_note_only_with_dchml_q():
    assert "gamma = 0" not in render_markdown({"a": _metrics("dchml", 0.5, 0.5)}, title="t")
    assert "gamma = 0" in render_markdown({"a": _metrics("dchml_q", 0.5, 0.5)}, title="t")


def test_report_needs_a_run(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        write_report(str(tmp_path), {})
