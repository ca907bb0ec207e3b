"""What every benchmark in this folder shares: where a number came from (commit, date, device,
command), one CSV schema for every results file, atomic writes, and interleaved timing.

Results schema (benchmarks/results/*.csv), one measured number per row:

    benchmark, case, provider, metric, value, device, date, commit, command, note

- benchmark: the script's subject ("loss", "hamming", "distributed", "methods", ...)
- case: the inputs measured (shapes, options), provider: who computed it (dchml, a baseline)
- metric: what the value is, its unit in the name (median_s, min_s, peak_extra_bytes, map, ...)
- device / date / commit / command: the provenance every number carries; note: free text.

Files are appended to under a lock and replaced atomically, so two benchmark runs never lose each
other's rows and an interrupted run never leaves a half-written file.

Where results go (`add_output_options`, `output_folder`): by default a NEW folder
./bench_out/<script>-<UTC time>/ under the current directory, so a run never changes the tracked
results; `--out DIR` picks the folder; `--record` updates benchmarks/results/ (the recorded
numbers the docs cite) and is the only way to write there.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import io
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
FIELDS = ["benchmark", "case", "provider", "metric", "value", "device", "date", "commit", "command", "note"]


def add_output_options(parser) -> None:
    """--out DIR and --record: see the module docstring."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", metavar="DIR",
                       help="folder for the results (default: a new folder ./bench_out/<script>-<UTC time>/)")
    group.add_argument("--record", action="store_true",
                       help=f"update the tracked results in {os.path.relpath(RESULTS)} instead")


def output_folder(args, script: str) -> str:
    """The folder this run writes its results to (created): RESULTS with --record, --out, or a new
    folder under ./bench_out/ named after `script` and the time."""
    if args.record:
        return RESULTS
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        return args.out
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):  # two runs started in the same second get two folders
        folder = os.path.join(os.getcwd(), "bench_out", f"{script}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            os.makedirs(folder)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot make a new folder under {os.path.join(os.getcwd(), 'bench_out')}")


def append_jsonl(path: str, row: dict) -> None:
    """Add one result row (a JSON line) to `path`: the sweeps' record, one line per run."""
    import json

    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def sweep_parser(doc: str, sets, bits: str):
    """The arguments every panel sweep takes: --sets, --bits, --threads, --out / --record and
    --summarize (print the tables of recorded rows instead of training)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="all", help=f"comma-separated from {', '.join(sets)}, or all")
    ap.add_argument("--bits", default=bits, help=f"comma-separated code lengths (default {bits})")
    ap.add_argument("--threads", type=int, default=1)
    add_output_options(ap)
    ap.add_argument("--summarize", nargs="+", default=None, metavar="JSONL",
                    help="print the Markdown tables of these result files instead of training")
    return ap


def read_jsonl(paths) -> list[dict]:
    import json

    return [json.loads(line) for path in paths for line in open(path) if line.strip()]


def config_value(key: str, raw: str):
    """A TrainConfig field's value from the text of a sweep's setting, typed like the field (a
    method hyper-parameter, None by default, is a float)."""
    from dchml.method.config import TrainConfig
    from dchml.method.methods import METHOD_PARAMS

    default = "" if key == "method" else getattr(TrainConfig(), key)
    if key in METHOD_PARAMS or isinstance(default, float):
        return float(raw)
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(raw)
    return raw


def git_commit() -> str:
    """Short hash of HEAD, with "+dirty" when the code differs from it (tracked files under csrc/,
    dchml/, benchmarks/ but not its results, setup.py): the numbers then come from code no commit
    holds. Docs and results do not count."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        code = ["csrc", "dchml", "benchmarks", "setup.py", ":(exclude)benchmarks/results"]
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", *code],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    """The command that ran this benchmark, as typed from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return " ".join(["python", shlex.quote(script)] + [shlex.quote(a) for a in sys.argv[1:]])


def cpu_name() -> str:
    """CPU model, core count and AVX-512 support, read from /proc/cpuinfo where it exists."""
    model, avx512 = platform.processor() or "unknown CPU", False
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                     model)
        avx512 = " avx512f" in text
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores{' with AVX-512' if avx512 else ''}"


class Provenance:
    """Device, date, commit and command of one benchmark run, stamped on every row it writes."""

    def __init__(self, device: str, note: str = ""):
        self.device, self.note = device, note
        self.date, self.commit, self.command = utc_now(), git_commit(), command_line()

    def row(self, benchmark: str, case: str, provider: str, metric: str, value, note: str = "") -> dict:
        return dict(benchmark=benchmark, case=case, provider=provider, metric=metric, value=format_value(value),
                    device=self.device, date=self.date, commit=self.commit, command=self.command,
                    note="; ".join(x for x in (self.note, note) if x))

    def markdown_header(self) -> str:
        return (f"Device: {self.device}; {self.date}; commit {self.commit}; Python {platform.python_version()}.\n"
                f"Command: `{self.command}`" + (f"\n\nNote: {self.note}" if self.note else ""))


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def atomic_write(path: str, text: str) -> None:
    """Write text to path through a temporary file in the same folder and os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: str):
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_rows(path: str, rows: list[dict]) -> None:
    """Append rows (FIELDS) to the CSV at path: under a lock, atomically. A file with another
    header is an error, not something to extend."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _locked(path):
        old = ""
        if os.path.exists(path):
            with open(path, newline="") as f:
                old = f.read()
            header = next(csv.reader(io.StringIO(old)), None)
            if header is not None and header != FIELDS:
                raise ValueError(f"{path} has the columns {header}, not the results schema {FIELDS}")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, FIELDS, lineterminator="\n")
        if not old:
            writer.writeheader()
        elif not old.endswith("\n"):
            buf.write("\n")
        for row in rows:
            writer.writerow({field: row.get(field, "") for field in FIELDS})
        atomic_write(path, old + buf.getvalue())


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def interleaved_medians(steps: dict, rounds: int, reps: int, warmup: int = 20, sync=None) -> dict:
    """Median seconds per step of each provider, timed in `rounds` interleaved rounds of `reps`
    steps each (A, B, C, A, B, C, ...), so that a busy spell of a shared machine hits every
    provider alike. Returns {name: {"median_s", "min_s", "max_s", "round_medians"}} where
    median_s is the median of the round medians."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    per_round = {name: [] for name in steps}
    every = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times = []
            for _ in range(reps):
                if sync:
                    sync()
                t0 = time.perf_counter()
                step()
                if sync:
                    sync()
                times.append(time.perf_counter() - t0)
            per_round[name].append(statistics.median(times))
            every[name] += times
    return {name: dict(median_s=statistics.median(per_round[name]), min_s=min(every[name]), max_s=max(every[name]),
                       round_medians=per_round[name]) for name in steps}
