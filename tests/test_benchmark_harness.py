"""The benchmarks' shared harness (benchmarks/harness.py): one results schema, appends that keep
earlier rows and refuse a file of another schema, every committed results file in it, and that a
benchmark run writes outside the tracked results unless asked (--record)."""
import argparse
import csv
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import harness  # noqa: E402


def test_append_rows_keeps_earlier_rows_and_stamps_provenance(tmp_path):
    path = str(tmp_path / "x_cpu.csv")
    prov = harness.Provenance("test device", note="a note")
    harness.append_rows(path, [prov.row("x", "case 1", "dchml", "median_s", 0.25)])
    harness.append_rows(path, [prov.row("x", "case 2", "dchml", "median_s", 1.5, note="second")])
    rows = harness.read_rows(path)
    assert [r["case"] for r in rows] == ["case 1", "case 2"]
    assert rows[0]["device"] == "test device" and rows[0]["commit"] and rows[0]["command"].startswith("python ")
    assert rows[1]["note"] == "a note; second" and float(rows[1]["value"]) == 1.5
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_append_rows_refuses_a_file_of_another_schema(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("kernel,provider,median_s\nmds,dchml,0.1\n")
    with pytest.raises(ValueError, match="not the results schema"):
        harness.append_rows(str(path), [{"benchmark": "x"}])
    assert path.read_text() == "kernel,provider,median_s\nmds,dchml,0.1\n"


def test_interleaved_medians_times_every_provider_each_round():
    calls = []
    out = harness.interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                      rounds=3, reps=2, warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert set(out) == {"a", "b"} and len(out["a"]["round_medians"]) == 3
    assert out["a"]["min_s"] <= out["a"]["median_s"] <= out["a"]["max_s"]


def test_every_results_file_uses_the_schema():
    folder = os.path.join(ROOT, "benchmarks", "results")
    files = [f for f in os.listdir(folder) if f.endswith(".csv")]
    assert files
    for name in files:
        with open(os.path.join(folder, name), newline="") as f:
            reader = csv.reader(f)
            assert next(reader) == harness.FIELDS, name
            for row in reader:
                assert len(row) == len(harness.FIELDS), (name, row)


# --- where results go: a new folder by default, benchmarks/results/ only with --record --------------


def _parse(argv):
    parser = argparse.ArgumentParser()
    harness.add_output_options(parser)
    return parser.parse_args(argv)


def test_output_folder_is_new_by_default_and_results_only_with_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = harness.output_folder(_parse([]), "bench_x"), harness.output_folder(_parse([]), "bench_x")
    assert first != second and all(os.path.dirname(f) == str(tmp_path / "bench_out") for f in (first, second))
    assert os.listdir(first) == [] and os.path.basename(first).startswith("bench_x-")
    assert harness.output_folder(_parse(["--out", "mine"]), "bench_x") == "mine" and os.path.isdir("mine")
    assert harness.output_folder(_parse(["--record"]), "bench_x") == harness.RESULTS
    with pytest.raises(SystemExit):
        _parse(["--record", "--out", "mine"])


def test_every_script_that_writes_results_takes_out_and_record():
    folder = os.path.join(ROOT, "benchmarks")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py") and name != "harness.py":
            text = open(os.path.join(folder, name)).read()
            if re.search(r"append_rows|atomic_write|RESULTS|results/", text):
                # harness.sweep_parser adds the options for the panel sweeps
                assert re.search(r"add_output_options\(|sweep_parser\(", text) and "output_folder(" in text, name


def _clean_clone(tmp_path) -> str:
    """A git repository holding this working tree's files (committed), plus the compiled extension."""
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files + [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "dchml", "ops", "*.so"))]:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(clone / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), clone / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run(git + args, cwd=clone, check=True, capture_output=True)
    return str(clone)


def test_a_benchmark_run_from_a_clean_clone_leaves_git_status_clean(tmp_path):
    try:
        clone = _clean_clone(tmp_path)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "benchmarks/bench_hamming.py", "--nq", "20", "--ndb", "3000", "--no-scaling",
                          "--repeat", "1", "--ref-queries", "2"], cwd=clone, env={**env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == ""
    written = glob.glob(os.path.join(clone, "bench_out", "bench_hamming-*", "hamming_cpu.csv"))
    assert len(written) == 1 and f"wrote {os.path.dirname(written[0])}" in out.stdout
