"""The runs of a comparison or a sweep and how each one's folder is continued.

Every run is an ordinary dchml run (dchml/app/experiment.py: its own lock, preflight, atomic
writes, per-epoch checkpoint) in DIR/runs/<key>/. Rerunning the command looks at each folder:

- metrics.json made with the run's configuration on the same data (content and split
  fingerprints): the run is finished; it is read, never trained or evaluated again;
- checkpoint.pt of the same configuration and data, without metrics.json: an interrupted run; it
  resumes from its last epoch (a resumed run equals an uninterrupted one, docs/spec.md §5);
- nothing there (or only a killed run's lock and temporary files): trained from the start;
- anything else (another configuration, other data, foreign files): incomparable. The command
  refuses before training anything, unless --force, which trains that run again from the start.

The configuration compared is every TrainConfig field but `device`: where a run ran does not
change what it measures.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

RUNS_DIR = "runs"
METRICS = "metrics.json"
IGNORED_FIELDS = ("device",)


def available_methods() -> tuple[str, ...]:
    """Every method a comparison can train: the one place the list is read from."""
    from ..method.methods import METHOD_NAMES

    return METHOD_NAMES


@dataclass(frozen=True)
class PlannedRun:
    key: str     # the folder's name under DIR/runs
    cfg: dict    # TrainConfig.to_dict()
    axes: dict   # what places it in the tables, e.g. {"method": ..., "bits": ..., "seed": ...}


@dataclass
class FolderState:
    action: str                  # "kept", "resume", "train", or "incomparable"
    metrics: dict | None = None  # a kept run's metrics.json
    why: str | None = None       # an incomparable run's reason


def run_folder(out: str, key: str) -> str:
    return os.path.join(out, RUNS_DIR, key)


def config_difference(saved: dict, wanted: dict) -> list[str]:
    """'field=saved (now wanted)' for every field that differs, `device` aside."""
    from ..method.config import TrainConfig

    saved = {**TrainConfig().to_dict(), **saved}  # a field the file predates has its default value
    return [f"{k}={saved.get(k)!r} (now {wanted.get(k)!r})" for k in sorted(set(saved) | set(wanted))
            if k not in IGNORED_FIELDS and saved.get(k) != wanted.get(k)]


def inspect_folder(folder: str, wanted: dict, data) -> FolderState:
    """What to do with a run's folder (module docstring). Reads metrics.json and the checkpoint
    only; changes nothing."""
    from ..data.fingerprint import difference
    from ..io.run_dir import CHECKPOINT, is_dchml_debris

    if not os.path.isdir(folder):
        return FolderState("train") if not os.path.exists(folder) else FolderState("incomparable", why="not a folder")
    metrics = _read_metrics(os.path.join(folder, METRICS))
    if metrics is not None:
        why = _mismatch(metrics.get("config") or {}, metrics.get("data") or {}, wanted, data, difference)
        if why is None:
            return FolderState("kept", metrics=metrics)
    checkpoint = os.path.join(folder, CHECKPOINT)
    if os.path.isfile(checkpoint):
        from ..method.checkpoint import CheckpointError, load_checkpoint

        try:
            state = load_checkpoint(checkpoint)
        except (CheckpointError, OSError, ValueError, RuntimeError) as exc:
            return FolderState("incomparable", why=f"its checkpoint cannot be read ({' '.join(str(exc).split())})")
        ck_why = _mismatch(state.get("config") or {}, state.get("data") or {}, wanted, data, difference)
        if ck_why is None:
            return FolderState("resume")
        return FolderState("incomparable", why=ck_why if metrics is None else why)
    if metrics is not None:
        return FolderState("incomparable", why=why)
    if all(is_dchml_debris(name) for name in os.listdir(folder)):
        return FolderState("train")
    return FolderState("incomparable", why="it holds files but no finished or interrupted run")


def _read_metrics(path: str) -> dict | None:
    """A finished run's metrics.json, or None (absent, unreadable, or not a run's metrics).
    Writes are atomic, so a file that exists is complete."""
    try:
        with open(path) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not all(k in metrics for k in ("config", "data", "baselines")):
        return None
    return metrics


def _mismatch(saved_cfg: dict, saved_data: dict, wanted: dict, data, difference) -> str | None:
    changed = config_difference(saved_cfg, wanted)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return "it was trained with " + ", ".join(changed[:3]) + more
    why = difference(saved_data, data)
    return None if why is None else why


def incomparable_message(out: str, states: dict) -> str:
    """One line naming the first incomparable run, how many there are, and the ways out."""
    bad = [key for key, state in states.items() if state.action == "incomparable"]
    first = states[bad[0]]
    others = f" (and {len(bad) - 1} more run{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
    return (f"{run_folder(out, bad[0])}{others} cannot be continued by this command: {first.why}; its results "
            "would not be comparable with the others. Pass --force to train such runs again, or choose another --out")
