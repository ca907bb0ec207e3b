"""`dchml demo`: DCHML and its ablation DCHML_P trained on the built-in synthetic set with exactly
`dchml train`'s defaults, evaluated, and compared in one report.

The two methods are independent runs, so on a machine with a spare core they train at once, one
process each with the demo's thread count (dchml/app/run_pool.py); each process draws everything
from the seed, so the results are the ones a sequential run gives, bit for bit.
"""
from __future__ import annotations

import os

from .arguments import command_line, config_from_args, log_for
from .run_pool import RunJob, default_jobs, run_all
from .train_commands import check_before_training

METHODS = ("dchml", "dchml_p")


def cmd_demo(args, argv):
    from ..io.run_dir import claim
    from ..method.config import RECIPES

    cfg = config_from_args(args, RECIPES[args.recipe])  # exactly `dchml train`'s defaults
    check_before_training(cfg, args.out)
    with claim(args.out, force=args.force):
        _demo_into(args, argv, cfg)


def _demo_into(args, argv, cfg):
    import torch

    from ..data import load_dataset
    from .report import write_report

    data = load_dataset("synthetic", seed=cfg.seed)
    threads = torch.get_num_threads()
    jobs = args.jobs or default_jobs(cfg.device, threads, len(METHODS))
    log = log_for(args)
    configs = {m: config_from_args(args, {**cfg.to_dict(), "method": m}).to_dict() for m in METHODS}
    work = {m: RunJob(m, configs[m], os.path.join(args.out, m), force=args.force, quiet=args.quiet,
                      command=command_line(argv)) for m in METHODS}
    if log:
        log(f"[demo] training {' and '.join(METHODS)} at {cfg.bits} bits for at most {cfg.epochs} epochs"
            + (f", {jobs} at once (one process each, {threads} torch thread{'s' if threads > 1 else ''})"
               if jobs > 1 else ""))
    runs = run_all(work, data, jobs, threads)
    notes = [f"Recipe: {args.recipe} ({cfg.optimizer}, lr {cfg.lr}, {cfg.schedule} schedule, at most {cfg.epochs} "
             "epochs, the epoch kept by validation MAP), the same defaults as `dchml train`.",
             f"torch threads per run: {threads}; {jobs} run{'s' if jobs > 1 else ''} at once (the demo defaults to "
             "one thread per run: on a shared 2-core machine two threads are 5-20x slower as soon as another "
             "process is busy).",
             "Per-run outputs (checkpoint.pt, metrics.json) are in the dchml/ and dchml_p/ subdirectories."]
    path = write_report(args.out, runs, title="dchml demo: DCHML vs DCHML_P on the synthetic set", notes=notes)
    for method, m in runs.items():
        print(f"{method:8s} {m['bits']} bits: MAP@{m['topk']} I->T {m['i2t_map']:.4f}  T->I {m['t2i_map']:.4f}")
    print(f"report: {path}")
