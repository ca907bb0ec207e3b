"""report.md and its PNG plots from metrics dicts (one run, and two runs side by side)."""
import os

import pytest

from dchml.app.report import render_markdown, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(method, i2t, t2i, bits=16, linear=(0.70, 0.71), chance=0.2):
    history = [{"epoch": e, "seconds": 0.5, "objective": 10.0 / e,
                "val_i2t_map": (i2t * e / 3 if e % 2 == 0 or e == 3 else None),
                "val_t2i_map": (t2i * e / 3 if e % 2 == 0 or e == 3 else None)} for e in (1, 2, 3)]
    curve = {"precision_at_n": {"n": [1, 10, 100], "precision": [0.9, 0.8, 0.7]},
             "pr": {"precision": [0.95 - 0.05 * r for r in range(bits + 1)], "recall": [r / bits for r in range(bits + 1)]}}
    return {"method": method, "bits": bits, "topk": 100, "i2t_map": i2t, "t2i_map": t2i, "epochs": 3,
            "seconds_per_epoch": 0.5, "history": history, "curves": {"i2t": curve, "t2i": curve},
            "proxies": {"min_hamming": 6.0, "mean_hamming": 8.2},
            "baselines": {"linear": {"i2t_map": linear[0], "t2i_map": linear[1], "ridge_strength": 1.0},
                          "chance": {"i2t_map": chance, "t2i_map": chance}},
            "selection": {"kept_epoch": 2, "last_epoch": 3, "reason": "kept epoch 2 of 3: best mean validation MAP"},
            "normalization": {"image": {"kind": "standardize", "clip": 5.0, "dim": 24, "constant_dims": 1},
                              "text": {"kind": "log", "clip": 5.0, "dim": 40, "constant_dims": 0}},
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
    assert "| method | task | 16 bits |" in text
    assert "| **DCHML** | I->T | 0.7712 |" in text and "| **DCHML** | T->I | 0.7801 |" in text
    assert "| **DCHML_P** | I->T | 0.6123 |" in text
    assert "| linear hasher | I->T | 0.7000 |" in text and "| chance | T->I | 0.2000 |" in text
    assert "| DCHML | 16 | 2 | 3 | 0.50 | 6 / 8.2 |" in text  # kept epoch 2 of 3 run
    assert "DCHML at 16 bits beats the linear hasher, the best shallow baseline, by +0.0706" in text
    assert "DCHML_P at 16 bits does NOT beat the linear hasher, the best shallow baseline" in text
    assert "kept epoch 2 of 3: best mean validation MAP" in text
    assert "image standardised per dimension, clipped to +-5, 1 constant dimensions set to 0" in text
    assert "- a note" in text and "`dchml demo --out d`" in text
    for name in ("pr_curves.png", "precision_at_n.png", "training.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == PNG
        assert os.path.getsize(tmp_path / name) > 5000  # a real figure, not an empty canvas
    assert sorted(os.listdir(tmp_path)) == ["pr_curves.png", "precision_at_n.png", "report.md", "training.png"]


def test_dchml_q_note_only_with_dchml_q():
    assert "gamma = 0" not in render_markdown({"a": _metrics("dchml", 0.5, 0.5)}, title="t")
    assert "gamma = 0" in render_markdown({"a": _metrics("dchml_q", 0.5, 0.5)}, title="t")


def test_code_lengths_side_by_side_and_chance_verdict():
    runs = {f"dchml {b}": _metrics("dchml", 0.1 + b / 1000, 0.1 + b / 1000, bits=b, chance=0.1 + b / 1000)
            for b in (16, 32, 64)}
    text = render_markdown(runs, title="t")
    assert "| method | task | 16 bits | 32 bits | 64 bits |" in text
    assert "| **DCHML** | I->T | 0.1160 | 0.1320 | 0.1640 |" in text
    assert text.count("is at chance level") == 3


def test_report_needs_a_run(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        write_report(str(tmp_path), {})


def test_verdicts_compare_with_the_best_shallow_baseline():
    from dchml.app.report import verdicts

    m = _metrics("dchml", 0.75, 0.75)
    m["baselines"]["kernel"] = {"i2t_map": 0.78, "t2i_map": 0.77}
    assert verdicts({"a": m}) == ["DCHML at 16 bits does NOT beat the kernel hasher, the best shallow baseline (mean "
                                  "MAP 0.7500 vs 0.7750). Train longer (--epochs), or try another --lr; the kernel "
                                  "hasher is the better code here."]

