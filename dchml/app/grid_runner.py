"""Running the planned runs of a comparison or a sweep into DIR: the folder's policy and lock,
continuation (dchml/app/run_grid.py), parallel processes (dchml/app/run_pool.py), and the wall
time of each run.

DIR policy: a comparison writes into DIR only when DIR does not exist, is empty, or already
holds a comparison of the same kind (DIR/compare.json or DIR/sweep.json, written when it starts);
--force also allows a folder with other files (they are never touched). DIR is locked for the
whole command (dchml/io/run_dir.py), so a second command into it is refused at once, and so is
each run's folder while its run trains.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass

from .arguments import UsageError
from .comparison_table import TASKS
from .run_grid import PlannedRun, inspect_folder, incomparable_message, run_folder
from .run_pool import RunJob, default_jobs, run_each

MANIFESTS = {"compare": "compare.json", "sweep": "sweep.json"}
RUN_TIMES = "run_times.json"


@dataclass
class RunResult:
    plan: PlannedRun
    status: str               # "kept" (finished earlier), "trained", "resumed", "retrained" or "failed"
    metrics: dict | None
    error: str | None
    wall_seconds: float | None  # of the command that finished it (a resumed run: its last part)


@contextmanager
def claim_experiment_dir(out: str, kind: str, *, force: bool, manifest: dict):
    """Hold DIR for a comparison of `kind` (module docstring) and write its manifest."""
    from ..io.atomic import write_json
    from ..io.run_dir import OutputDirError, claim, is_dchml_debris, refuse_if_in_use

    refuse_if_in_use(out)
    if os.path.isdir(out) and not os.path.isfile(os.path.join(out, MANIFESTS[kind])) and not force:
        names = [n for n in os.listdir(out) if not is_dchml_debris(n)]
        other = [k for k, name in MANIFESTS.items() if k != kind and name in names]
        if other:
            raise OutputDirError(f"output directory {out} holds a dchml {other[0]}, not a {kind}; choose another --out")
        if names:
            raise OutputDirError(f"output directory {out} exists, is not empty and holds no dchml {kind} "
                                 f"({MANIFESTS[kind]}); choose a new --out, or pass --force to write beside its files")
    with claim(out, force=True):
        write_json({"kind": kind, **manifest}, os.path.join(out, MANIFESTS[kind]))
        yield out


def execute(plans: list[PlannedRun], data, out: str, *, jobs: int | None, threads: int, force: bool, quiet: bool,
            command: str, log) -> list[RunResult]:
    """Train what is missing of `plans` into DIR/runs/ and read the rest; one RunResult per plan,
    in plan order. Refuses (UsageError) before training anything when a folder holds an
    incomparable run and force is False."""
    states = {p.key: inspect_folder(run_folder(out, p.key), p.cfg, data) for p in plans}
    if not force and any(s.action == "incomparable" for s in states.values()):
        raise UsageError(incomparable_message(out, states))
    times = _read_times(out)
    work = {p.key: RunJob(p.key, p.cfg, run_folder(out, p.key), force=states[p.key].action == "incomparable",
                          resume=states[p.key].action == "resume", quiet=quiet, command=command)
            for p in plans if states[p.key].action != "kept"}
    n_jobs = jobs or default_jobs(plans[0].cfg["device"], threads, len(work))
    counts = {a: sum(s.action == a for s in states.values()) for a in ("kept", "resume", "train", "incomparable")}
    if log:
        log(f"{len(plans)} runs: {counts['kept']} finished earlier (kept), {counts['resume']} interrupted (resumed), "
            f"{counts['train']} to train" + (f", {counts['incomparable']} to train again (--force)"
                                              if counts["incomparable"] else "")
            + (f"; {min(n_jobs, len(work))} at once, one process each, {threads} torch thread"
               f"{'s' if threads > 1 else ''}" if work else ""))
    done = [0]

    def on_outcome(key, outcome):
        done[0] += 1
        if outcome.error is None:
            times[key] = outcome.wall_seconds
            _write_times(out, times)
        if log:
            what = (f"failed: {outcome.error}" if outcome.error else
                    "finished, " + ", ".join(f"{label} {outcome.metrics[task]:.4f}" for task, label in TASKS
                                              if task in outcome.metrics) + f" ({outcome.wall_seconds:.0f} s)")
            log(f"[{done[0]}/{len(work)}] {key} {what}")

    outcomes = run_each(work, data, n_jobs, threads, on_outcome) if work else {}
    status = {"resume": "resumed", "train": "trained", "incomparable": "retrained"}
    results = []
    for p in plans:
        state = states[p.key]
        if state.action == "kept":
            results.append(RunResult(p, "kept", judged(state.metrics), None, times.get(p.key)))
            continue
        outcome = outcomes[p.key]
        results.append(RunResult(p, "failed" if outcome.error else status[state.action], judged(outcome.metrics),
                                 outcome.error, None if outcome.error else outcome.wall_seconds))
    return results


def judged(metrics: dict | None) -> dict | None:
    """A run's metrics with only the tasks it is judged on (a cross-modal run: I->T and T->I, as
    the papers' tables; a single-modality run: its one task), for it and its baselines."""
    if not metrics:
        return metrics
    from .report import main_tasks

    keep = {f"{task}_map" for task in main_tasks(metrics)}
    drop = lambda scores: {k: v for k, v in scores.items() if not k.endswith("_map") or k in keep}  # noqa: E731
    baselines = {name: drop(scores) if isinstance(scores, dict) else scores
                 for name, scores in (metrics.get("baselines") or {}).items()}
    return {**drop(metrics), "baselines": baselines}



def _read_times(out: str) -> dict:
    try:
        with open(os.path.join(out, RUN_TIMES)) as f:
            times = json.load(f)
        return times if isinstance(times, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_times(out: str, times: dict) -> None:
    from ..io.atomic import write_json

    write_json(dict(sorted(times.items())), os.path.join(out, RUN_TIMES))


def run_grid_command(kind: str, args, plans: list, data, manifest: dict, threads: int, write) -> int:
    """What `dchml compare` and `dchml sweep` share after planning: hold DIR, train what is missing,
    write the tables (`write(results) -> path`), say how many runs finished; exit status 1 when a run
    failed (it is listed in the table), else 0."""
    import sys

    from .arguments import log_for

    log = log_for(args)
    with claim_experiment_dir(args.out, kind, force=args.force, manifest=manifest):
        results = execute(plans, data, args.out, jobs=args.jobs, threads=threads, force=args.force, quiet=args.quiet,
                          command=manifest["command"], log=log and (lambda message: log(f"[{kind}] {message}")))
        path = write(results)
    failed = sum(r.status == "failed" for r in results)
    print(f"{kind}: {len(results) - failed} of {len(results)} runs finished; table: {path}")
    if failed:
        print(f"dchml {kind}: {failed} run{'s' if failed > 1 else ''} failed (listed in {path}); rerun the same "
              "command to try again", file=sys.stderr)
        return 1
    return 0

