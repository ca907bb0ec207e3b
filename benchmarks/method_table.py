"""The method comparison table of README: DCHML vs DCHML_P vs DCHML_Q at 32 and 64 bits on the
built-in synthetic set, MAP@5000 I->T and T->I, seconds per epoch (median; one epoch = the image
pass + the text pass + the C update, evaluation excluded).

Writes <out>/methods.md and appends to <out>/methods.csv (benchmarks/harness.py schema); <out>
is a new folder under ./bench_out/ unless --out DIR, and benchmarks/results/ only with --record.
Run it alone (it times epochs):
    flock /work/bench.lock python benchmarks/method_table.py [--epochs 50] [--bits 32 64] [--record]
Settings are dchml's defaults (`dchml train` and the demo; every loss weight at the paper's default).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import harness  # noqa: E402
import torch  # noqa: E402

from dchml.app.arguments import DEMO_THREADS  # noqa: E402
from dchml.data import make_synthetic  # noqa: E402
from dchml.app.experiment import describe_device, run_experiment  # noqa: E402
from dchml.train import TrainConfig  # noqa: E402

METHODS = ("dchml", "dchml_p", "dchml_q")
NAMES = {"dchml": "DCHML", "dchml_p": "DCHML_P", "dchml_q": "DCHML_Q"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="at most this many epochs")
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=DEMO_THREADS, help="torch CPU threads (default: the demo's)")
    harness.add_output_options(parser)
    args = parser.parse_args(argv)
    args.out = harness.output_folder(args, "method_table")
    torch.set_num_threads(args.threads)
    command = "python benchmarks/method_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = make_synthetic(seed=args.seed)
    rows = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for bits in args.bits:
            for method in METHODS:
                cfg = TrainConfig(method=method, bits=bits, epochs=args.epochs, seed=args.seed)
                metrics, _ = run_experiment(data, cfg, os.path.join(tmp, f"{method}_{bits}"), progress=False,
                                            log=None)
                rows.append({"method": NAMES[method], "bits": bits, "i2t_map": metrics["i2t_map"],
                             "t2i_map": metrics["t2i_map"], "epochs": metrics["epochs"],
                             "seconds_per_epoch": metrics["seconds_per_epoch"]})
                print(f"{NAMES[method]:8s} {bits:3d} bits: I->T {metrics['i2t_map']:.4f}  T->I {metrics['t2i_map']:.4f}  "
                      f"{metrics['seconds_per_epoch']:.2f} s/epoch", flush=True)
    total = time.perf_counter() - began
    prov = harness.Provenance(describe_device("cpu"))
    device, date, commit = prov.device, prov.date, prov.commit
    csv_rows = []
    for row in rows:
        case = f"synthetic bits={row['bits']} epochs={row['epochs']} threads={args.threads}"
        for metric in ("i2t_map", "t2i_map", "seconds_per_epoch"):
            csv_rows.append(prov.row("methods", case, row["method"], metric, row[metric]))
    harness.append_rows(os.path.join(args.out, "methods.csv"), csv_rows)
    d = data
    lines = [
        "# DCHML vs DCHML_P vs DCHML_Q on the synthetic set", "",
        f"MAP@5000 on dchml's built-in synthetic set (seed {args.seed}: {d.n} pairs, {d.n_labels} labels, "
        f"{d.image_dim}-d image features, {d.text_dim}-d BoW; {d.query_idx.numel()} queries, "
        f"{d.retrieval_idx.numel()} database, {d.train_idx.numel()} training pairs). dchml's default recipe "
        f"(at most {args.epochs} epochs, the epoch kept by validation MAP), eta = mu = 0.3, lambda = 0.001, gamma = 0.01 "
        "(0 for DCHML_Q). Seconds per epoch: median wall time of one outer iteration (image pass + text pass + "
        f"C update), evaluation excluded; {args.threads} torch thread(s), as in `dchml demo`.", "",
        "| method | bits | MAP I->T | MAP T->I | s/epoch |", "|---|---|---|---|---|",
    ]
    lines += [f"| {r['method']} | {r['bits']} | {r['i2t_map']:.4f} | {r['t2i_map']:.4f} | {r['seconds_per_epoch']:.2f} |"
              for r in rows]
    lines += ["", f"Device: {device}. Date: {date}. Commit: {commit}. Total wall time {total:.0f} s.",
              f"Command: `{command.strip()}`", ""]
    harness.atomic_write(os.path.join(args.out, "methods.md"), "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
