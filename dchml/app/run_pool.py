"""Independent runs on one data set, trained at once in spawned processes (or one after another
in this process), shared by `dchml demo`, `dchml compare` and `dchml sweep`.

Each worker process gets the data once (its initializer) and the torch thread count of the
command [choice: on a CPU, single-thread processes side by side finish in about 1/jobs of the
time of one after the other, while one process with several threads gains ~30 % and collapses as
soon as anything else runs]. Every run draws everything from its own seed, so its result is the
one it gives alone, bit for bit, whichever process ran it and whatever ran beside it.

Workers end with the command: on Linux each asks the kernel to kill it when its parent dies
(PR_SET_PDEATHSIG), so a command killed with SIGKILL leaves no run holding its folder's lock.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from .arguments import UsageError

_PR_SET_PDEATHSIG = 1
_worker_data = None  # the data of this worker process, set by _start_worker


@dataclass
class RunJob:
    """One run, as handed to a worker process (the data travels once per worker, not per run)."""

    name: str          # shown before the run's log lines and in its errors
    cfg: dict          # TrainConfig.to_dict()
    out_dir: str
    force: bool = False
    resume: bool = False
    quiet: bool = False
    command: str | None = None


@dataclass
class RunOutcome:
    metrics: dict | None
    error: str | None     # one line; None when the run finished
    wall_seconds: float


def default_jobs(device: str, threads: int, runs: int) -> int:
    """Runs at once: one per group of `threads` cores, on the CPU only (a GPU runs one training at
    a time well), never more than there are runs."""
    if device != "cpu":
        return 1
    return max(1, min(runs, (os.cpu_count() or 1) // max(threads, 1)))


def train_job(job: RunJob, data=None, in_process: bool = False) -> dict:
    """One run's metrics; in a worker process, a user's mistake comes back as a UsageError (one line)."""
    from ..method.config import TrainConfig
    from .cli import is_user_error
    from .experiment import run_experiment

    data = _worker_data if data is None else data
    config = TrainConfig.from_dict(job.cfg)
    prefix = "" if in_process else f"[{job.name}] "
    log = None if job.quiet else (lambda message: print(prefix + message, file=sys.stderr, flush=True))
    try:
        metrics, _ = run_experiment(data, config, job.out_dir, resume=job.resume, force=job.force,
                                    progress=None if (in_process and not job.quiet) else False, log=log,
                                    command=job.command)
    except Exception as exc:
        if in_process or not is_user_error(exc):
            raise
        raise UsageError(f"{job.name}: " + one_line(exc)) from None
    return metrics


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run_all(work: dict, data, jobs: int, threads: int) -> dict:
    """{name: metrics} of every RunJob in `work`; the first failure stops everything."""
    if jobs <= 1:
        return {name: train_job(job, data, in_process=True) for name, job in work.items()}
    with worker_pool(data, jobs, threads) as pool:
        futures = {name: pool.submit(train_job, job) for name, job in work.items()}
        return {name: futures[name].result() for name in work}


def run_each(work: dict, data, jobs: int, threads: int, on_outcome=None) -> dict:
    """{name: RunOutcome} of every RunJob in `work`: a run that fails is reported by its one-line
    reason and the others go on. on_outcome(name, outcome) is called as each one ends (in this
    process, in the order they end). Ctrl-C still stops everything."""
    outcomes = {}

    def record(name, outcome):
        outcomes[name] = outcome
        if on_outcome is not None:
            on_outcome(name, outcome)

    if jobs <= 1:
        for name, job in work.items():
            began = time.perf_counter()
            try:
                record(name, RunOutcome(train_job(job, data, in_process=True), None, time.perf_counter() - began))
            except Exception as exc:
                record(name, _failed(exc, time.perf_counter() - began))
        return outcomes
    with worker_pool(data, jobs, threads) as pool:
        futures = {pool.submit(_timed_job, job): name for name, job in work.items()}
        for future in concurrent.futures.as_completed(futures):
            try:
                metrics, seconds = future.result()
                record(futures[future], RunOutcome(metrics, None, seconds))
            except BrokenProcessPool:
                record(futures[future], RunOutcome(None, "its worker process died (killed, or out of memory?)", 0.0))
            except Exception as exc:
                record(futures[future], _failed(exc, 0.0))
    return {name: outcomes[name] for name in work}


def _timed_job(job: RunJob):
    began = time.perf_counter()
    metrics = train_job(job)
    return metrics, time.perf_counter() - began


def _failed(exc: Exception, seconds: float) -> RunOutcome:
    from .cli import is_user_error

    if os.environ.get("DCHML_DEBUG") == "1":
        raise exc
    reason = one_line(exc)
    if not (is_user_error(exc) or isinstance(exc, UsageError)):
        reason = f"{type(exc).__name__}: {reason}"  # a bug: say what kind
    return RunOutcome(None, reason, seconds)


class worker_pool:
    """A spawn-context process pool whose workers hold `data` and use `threads` torch threads;
    on leaving (normally, after Ctrl-C or a failure) pending runs are cancelled and the workers end."""

    def __init__(self, data, jobs: int, threads: int):
        context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                                           initializer=_start_worker, initargs=(data, threads))

    def __enter__(self):
        return self.pool

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)
        return False


def _start_worker(data, threads: int) -> None:
    import torch

    global _worker_data
    _worker_data = data
    torch.set_num_threads(threads)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this process when its parent ends (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it ended before prctl took effect
        os._exit(1)
