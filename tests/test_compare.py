"""`dchml compare` and `dchml sweep` end to end on a tiny generated set: the table and CSV,
continuation after an interruption, identical results with --jobs 1 and 2, refusal of
incomparable reruns, a failed run reported while the others go on, and bad input (one line,
exit 2, nothing trained). The statistics behind the mark are tested on their own."""
import csv
import json
import os

import pytest
import torch

import dchml.app.experiment
from dchml.app.cli import main
from dchml.app.comparison_table import Cell, format_cell, render_table
from dchml.app.seed_stats import mean_std, paired_lead
from dchml.data import make_synthetic, save_npz

TINY = ["--bits", "8", "--epochs", "2", "--batch-size", "32", "--proxy-steps", "50", "--topk", "50",
        "--eval-every", "1", "--seeds", "2"]
GRID = ["--methods", "dchml,dchml_p"]
RUNS = [f"{m}_8bits_seed{s}" for m in ("dchml", "dchml_p") for s in (0, 1)]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    save_npz(make_synthetic(n=240, n_labels=5, image_dim=16, text_dim=30, n_query=40, n_train=120, seed=3,
                            image_noise=0.5, label_noise=0.05, text_background=0.3), path)
    return str(path)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Small dense linear algebra: one thread avoids OpenMP spin-waiting on a busy CI machine."""


def _metrics(out, key):
    with open(os.path.join(out, "runs", key, "metrics.json")) as f:
        return json.load(f)


def _untimed(m):
    return (m["i2t_map"], m["t2i_map"], m["baselines"],
            [{k: v for k, v in e.items() if k != "seconds"} for e in m["history"]])


def _one_error_line(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "Traceback" not in err[0] and ": error: " in err[0]
    return err[0]


@pytest.fixture(scope="module")
def interrupted_then_continued(tiny_npz, tmp_path_factory):
    """A comparison interrupted (Ctrl-C) after dchml_p seed 1's first epoch, then rerun."""
    out = str(tmp_path_factory.mktemp("cmp") / "jobs1")
    argv = ["compare", "--data", tiny_npz, "--out", out, "--jobs", "1", "--quiet"] + GRID + TINY
    train = dchml.app.experiment.train

    def interrupting(data, cfg, **kw):
        if cfg.method == "dchml_p" and cfg.seed == 1 and not kw.get("resume"):
            def stop(epoch, record):
                raise KeyboardInterrupt
            kw["on_epoch_end"] = stop
        return train(data, cfg, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dchml.app.experiment, "train", interrupting)
        assert main(argv) == 130
    interrupted = os.path.join(out, "runs", "dchml_p_8bits_seed1")
    assert os.path.isfile(os.path.join(interrupted, "checkpoint.pt"))
    assert not os.path.exists(os.path.join(interrupted, "metrics.json"))
    finished = {k: os.stat(os.path.join(out, "runs", k, "metrics.json")).st_mtime_ns for k in RUNS[:3]}
    assert main(argv) == 0
    return out, argv, finished


def test_rerun_trains_only_what_was_missing(interrupted_then_continued):
    out, _, finished = interrupted_then_continued
    for key, mtime in finished.items():  # the finished runs were read, not trained or evaluated again
        assert os.stat(os.path.join(out, "runs", key, "metrics.json")).st_mtime_ns == mtime
    report = open(os.path.join(out, "compare.md")).read()
    assert "4 runs: 1 resumed, 3 kept from an earlier command." in report
    assert _metrics(out, "dchml_p_8bits_seed1")["epochs"] == 2


def test_table_and_csv(interrupted_then_continued):
    out, _, _ = interrupted_then_continued
    report = open(os.path.join(out, "compare.md")).read()
    assert "| method | 8 bits I->T | 8 bits T->I |" in report
    for row in ("DCHML", "DCHML_P", "kernel hasher", "linear hasher", "chance"):
        assert f"\n| {row} | " in report
    m = _metrics(out, "dchml_8bits_seed0"), _metrics(out, "dchml_8bits_seed1")
    mean, std = mean_std([m[0]["i2t_map"], m[1]["i2t_map"]])
    assert f"{mean:.4f} ± {std:.4f}" in report and report.count("**") >= 4  # a bold best per column
    for name in ("curves_i2t.png", "curves_t2i.png", "convergence.png", "compare.csv", "compare.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "compare.csv")) as f:
        rows = list(csv.DictReader(f))
    runs = [r for r in rows if r["kind"] == "run"]
    baselines = [r for r in rows if r["kind"] == "baseline"]
    assert len(runs) == 4 * 2 and {r["task"] for r in runs} == {"I->T", "T->I"}
    assert {r["method"] for r in baselines} == {"kernel hasher", "linear hasher", "chance"} and len(baselines) == 12
    row = next(r for r in runs if (r["method"], r["seed"], r["task"]) == ("dchml", "0", "I->T"))
    assert float(row["map"]) == m[0]["i2t_map"] and float(row["cell_mean"]) == pytest.approx(mean)
    assert row["data_content_sha256"] == m[0]["data"]["fingerprint"]["content"]
    assert json.loads(row["config"])["seed"] == 0 and row["torch_version"] == torch.__version__
    assert row["kept_epoch"] and row["dchml_version"] and row["status"] == "kept"


def test_jobs_2_gives_the_results_of_jobs_1(interrupted_then_continued, tmp_path):
    one, argv, _ = interrupted_then_continued
    two = str(tmp_path / "jobs2")
    assert main(["compare", "--data", argv[2], "--out", two, "--jobs", "2", "--quiet"] + GRID + TINY) == 0
    for key in RUNS:  # including the run that was interrupted and resumed
        assert _untimed(_metrics(one, key)) == _untimed(_metrics(two, key))
    table = lambda d: open(os.path.join(d, "compare.md")).read().split("## MAP")[1].split("## Training")[0]  # noqa
    assert table(one) == table(two)


def test_a_run_equals_the_same_run_made_by_dchml_train(interrupted_then_continued, tmp_path):
    one, argv, _ = interrupted_then_continued
    alone = str(tmp_path / "alone")
    assert main(["train", "--data", argv[2], "--out", alone, "--method", "dchml_p", "--seed", "1", "--threads", "1",
                 "--quiet"] + TINY[:-2]) == 0
    with open(os.path.join(alone, "metrics.json")) as f:
        assert _untimed(json.load(f)) == _untimed(_metrics(one, "dchml_p_8bits_seed1"))


def test_incomparable_rerun_is_refused_before_training(interrupted_then_continued, capsys):
    out, argv, _ = interrupted_then_continued
    before = {k: os.stat(os.path.join(out, "runs", k, "metrics.json")).st_mtime_ns for k in RUNS}
    changed = list(argv)
    changed[changed.index("--epochs") + 1] = "3"
    line = _one_error_line(capsys, main(changed))
    assert "epochs=2 (now 3)" in line and "--force" in line and "(and 3 more runs)" in line
    assert before == {k: os.stat(os.path.join(out, "runs", k, "metrics.json")).st_mtime_ns for k in RUNS}


def test_a_foreign_folder_is_refused(tiny_npz, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    line = _one_error_line(capsys, main(["compare", "--data", tiny_npz, "--out", str(tmp_path)] + TINY))
    assert "holds no dchml compare" in line and (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_failed_run_is_reported_and_the_others_go_on(tiny_npz, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "cmp")
    argv = ["compare", "--data", tiny_npz, "--out", out, "--methods", "dchml", "--jobs", "1", "--quiet"] + TINY
    train = dchml.app.experiment.train

    def failing(data, cfg, **kw):
        if cfg.seed == 0:
            raise FloatingPointError("the loss diverged at epoch 1")
        return train(data, cfg, **kw)

    monkeypatch.setattr(dchml.app.experiment, "train", failing)
    assert main(argv) == 1
    assert "1 run failed" in capsys.readouterr().err
    report = open(os.path.join(out, "compare.md")).read()
    assert "## Failed runs" in report and "seed 0 (`runs/dchml_8bits_seed0`): the loss diverged at epoch 1" in report
    assert "(1 of 2 seeds)" in report and os.path.isfile(os.path.join(out, "runs", "dchml_8bits_seed1", "metrics.json"))
    with open(os.path.join(out, "compare.csv")) as f:
        failed = [r for r in csv.DictReader(f) if r["status"] == "failed"]
    assert len(failed) == 2 and "diverged" in failed[0]["error"] and failed[0]["map"] == ""


def test_sweep_writes_table_csv_and_plot(tiny_npz, tmp_path):
    out = str(tmp_path / "sweep")
    argv = ["sweep", "--data", tiny_npz, "--out", out, "--param", "eta=0.2,0.3", "--param", "mu=0.3", "--jobs", "1",
            "--quiet"] + TINY[:-2] + ["--seeds", "1"]
    assert main(argv) == 0
    assert sorted(os.listdir(os.path.join(out, "runs"))) == ["default_seed0", "eta=0.2_seed0"]  # defaults shared
    report = open(os.path.join(out, "sweep.md")).read()
    assert "## eta (default 0.3)" in report and "| 0.3 (default) |" in report and "## mu (default 0.3)" in report
    assert "kernel hasher" in report
    for name in ("sweep_eta.png", "sweep_mu.png", "sweep.csv"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "sweep.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "run"]
    assert {(r["param"], r["value"]) for r in rows} == {("eta", "0.2"), ("eta", "0.3"), ("mu", "0.3")}


@pytest.mark.parametrize("args, expected", [
    (["compare", "--methods", "dchml,nope"], "unknown 'nope'"),
    (["compare", "--methods", ","], "expected a comma-separated list"),
    (["compare", "--seeds", "0"], "--seeds: expected a positive integer"),
    (["compare", "--seed", "1"], "--seeds (0..N-1)"),
    (["compare", "--bits", "8", "--curves-bits", "16"], "--curves-bits 16"),
    (["sweep", "--param", "nope=1"], "not a numeric training parameter"),
    (["sweep", "--param", "eta=-1"], "eta must be a finite number >= 0"),
    (["sweep", "--param", "eta="], "no values given"),
    (["sweep", "--param", "epochs=1.5"], "takes whole numbers"),
    (["sweep", "--param", "eta=1", "--param", "eta=2"], "given twice"),
    (["sweep", "--param", "eta=1", "--bits", "8,16"], "one code length"),
])
def test_bad_input_is_one_line_before_any_training(args, expected, tmp_path, capsys):
    out = tmp_path / "never"
    line = _one_error_line(capsys, main(args + ["--out", str(out)]))
    assert line.startswith(f"dchml {args[0]}: error: ") and expected in line
    assert not out.exists()


def test_the_mark_follows_the_written_rule():
    assert paired_lead({0: 0.8}, {0: 0.7}).within_spread  # one seed: no spread to judge by
    assert not paired_lead({0: 0.80, 1: 0.81}, {0: 0.70, 1: 0.70}).within_spread  # mean 0.105 > std 0.007
    assert paired_lead({0: 0.80, 1: 0.70}, {0: 0.70, 1: 0.71}).within_spread  # mean 0.045 <= std 0.078
    steady = paired_lead({0: 0.80, 1: 0.81, 2: 0.82}, {0: 0.70, 1: 0.705, 2: 0.72})
    assert not steady.within_spread and steady.p_value < 0.05
    noisy = paired_lead({0: 0.80, 1: 0.70, 2: 0.75}, {0: 0.72, 1: 0.74, 2: 0.74})
    assert noisy.within_spread and noisy.p_value >= 0.05
    assert paired_lead({0: 0.8, 1: 0.8, 2: 0.8}, {0: 0.8, 1: 0.8, 2: 0.8}).within_spread  # a tie


def test_cells_and_bold_best():
    cells = {("a", "x"): Cell({0: 0.8, 1: 0.82}), ("b", "x"): Cell({0: 0.7, 1: 0.71}, {2: "boom"}),
             ("chance", "x"): Cell({0: 0.9, 1: 0.9})}
    lines, leads = render_table(["a", "b", "chance"], [("x", "X")], cells, first_header="method")
    assert lines[2] == "| a | **0.8100 ± 0.0141** |"  # chance is never the best
    assert lines[3] == "| b | 0.7050 ± 0.0071 (2 of 3 seeds) |" and leads[0].best == "a"
    assert format_cell(Cell({}, {0: "x"})) == "failed" and format_cell(None) == "-"


def test_single_modality_data_compares_the_methods_that_can_train_on_it(tmp_path, capsys):
    path = str(tmp_path / "images.npz")
    save_npz(make_synthetic(n=240, n_labels=5, image_dim=16, text_dim=30, n_query=40, n_train=120, seed=3,
                            image_noise=0.5, label_noise=0.05, modalities=("image",)), path)
    flags = ["--data", path, "--bits", "8", "--epochs", "1", "--proxy-steps", "50", "--topk", "50", "--seeds", "1",
             "--quiet"]
    out = str(tmp_path / "cmp")
    assert main(["compare", "--out", out] + flags) == 0  # by default: the methods that can train on images alone
    assert sorted(os.listdir(os.path.join(out, "runs"))) == ["csq_8bits_seed0", "psldh_8bits_seed0"]
    report = open(os.path.join(out, "compare.md")).read()
    assert "| method | 8 bits I->I |" in report and "\n| PSLDH | " in report and "\n| kernel hasher | " in report
    line = _one_error_line(capsys, main(["compare", "--out", str(tmp_path / "x"), "--methods", "dchml,psldh"] + flags))
    assert "--methods dchml: DCHML is a cross-modal method" in line and not os.path.exists(tmp_path / "x")
