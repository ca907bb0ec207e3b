"""The benchmarks' shared harness (benchmarks/harness.py): one results schema, appends that keep
earlier rows and refuse a file of another schema, and every committed results file in it."""
import csv
import os
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
