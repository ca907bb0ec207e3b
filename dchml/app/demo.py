"""`dchml demo`: DCHML and its ablation DCHML_P trained on the built-in synthetic set with exactly
`dchml train`'s defaults, evaluated, and compared in one report.

The two methods are independent runs, so on a machine with a spare core they train at once, one
process each with the demo's thread count [choice: two single-thread processes finish in about
half the time of one after the other, while one process with two threads gains ~30 % and
collapses as soon as anything else runs]. Each process draws everything from the seed, so the
results are the ones a sequential run gives, bit for bit.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
from dataclasses import dataclass

from .arguments import UsageError, command_line, config_from_args, log_for
from .train_commands import check_before_training

METHODS = ("dchml", "dchml_p")


def cmd_demo(args, argv):
    from ..io.run_dir import claim
    from ..method.config import RECIPES

    cfg = config_from_args(args, RECIPES[args.recipe])  # exactly `dchml train`'s defaults
    check_before_training(cfg, args.out)
    with claim(args.out, force=args.force):
        _demo_into(args, argv, cfg)


def default_jobs(device: str, threads: int) -> int:
    """Methods trained at once: one per spare group of `threads` cores, on the CPU only (a GPU
    runs one training at a time well)."""
    if device != "cpu":
        return 1
    return max(1, min(len(METHODS), (os.cpu_count() or 1) // max(threads, 1)))


def _demo_into(args, argv, cfg):
    import torch

    from ..data import load_dataset
    from .report import write_report

    data = load_dataset("synthetic", seed=cfg.seed)
    threads = torch.get_num_threads()
    jobs = args.jobs or default_jobs(cfg.device, threads)
    log = log_for(args)
    configs = {m: config_from_args(args, {**cfg.to_dict(), "method": m}).to_dict() for m in METHODS}
    work = {m: DemoRun(m, data, configs[m], os.path.join(args.out, m), args.force, args.quiet, command_line(argv),
                       threads) for m in METHODS}
    if log:
        log(f"[demo] training {' and '.join(METHODS)} at {cfg.bits} bits for at most {cfg.epochs} epochs"
            + (f", {jobs} at once (one process each, {threads} torch thread{'s' if threads > 1 else ''})"
               if jobs > 1 else ""))
    runs = _run_all(work, jobs)
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


def _run_all(work: dict, jobs: int) -> dict:
    if jobs <= 1:
        return {m: train_method(work[m], in_process=True) for m in work}
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    try:
        futures = {m: pool.submit(train_method, work[m]) for m in work}
        return {m: futures[m].result() for m in work}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after Ctrl-C or a failure: let the workers end


@dataclass
class DemoRun:
    """One method's run, as handed to a worker process."""

    method: str
    data: object
    cfg: dict
    out_dir: str
    force: bool
    quiet: bool
    command: str
    threads: int


def train_method(run: DemoRun, in_process: bool = False) -> dict:
    """One demo run; in a worker process, a user's mistake comes back as a UsageError (one line)."""
    import torch

    from ..method.config import TrainConfig
    from .cli import is_user_error
    from .experiment import run_experiment

    if not in_process:
        torch.set_num_threads(run.threads)
    config = TrainConfig.from_dict(run.cfg)
    prefix = "" if in_process else f"[{run.method}] "
    log = None if run.quiet else (lambda message: print(prefix + message, file=sys.stderr, flush=True))
    try:
        metrics, _ = run_experiment(run.data, config, run.out_dir, force=run.force,
                                    progress=None if (in_process and not run.quiet) else False, log=log,
                                    command=run.command)
    except Exception as exc:
        if in_process or not is_user_error(exc):
            raise
        raise UsageError(f"{run.method}: " + (" ".join(str(exc).split()) or type(exc).__name__)) from None
    return metrics
