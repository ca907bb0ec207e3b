"""One experiment = train (Algorithm 1) + final evaluation + DIR/metrics.json + DIR/checkpoint.pt.
Shared by `dchml train`, `dchml demo` and benchmarks/method_table.py.

Output directory policy [choice]: a run writes into DIR only when DIR does not exist, is empty,
or the caller passes resume=True (continue DIR/checkpoint.pt) or force=True (replace dchml's own
files there: checkpoint.pt, metrics.json, report.md, *.png; other files are never touched).
A run holds DIR's lock for its whole length (dchml/io/run_dir.py), checks that it fits in memory
and on disk before training (dchml/method/preflight.py), and writes every file atomically
(dchml/io/atomic.py).
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics

import torch

from .. import __version__
from ..data.fingerprint import data_fingerprint
from ..io import run_dir
from ..io.atomic import write_json  # noqa: F401  (re-exported: experiment.write_json)
from ..method.preflight import check_room
from ..io.run_dir import CHECKPOINT, OutputDirError  # noqa: F401  (re-exported)
from ..method.config import TrainConfig
from ..method.evaluate import evaluate
from ..method.train import log_to_stderr, train

METRICS = "metrics.json"


def prepare_out_dir(path: str, *, resume: bool = False, force: bool = False, several: bool = False) -> None:
    """The output policy (run_dir.check_output_dir), then create the folder. several=True: the
    folder holds one sub-folder per code length (bitsN/)."""
    run_dir.check_output_dir(path, resume=resume, force=force, several=several)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create output directory {path}: {exc.strerror}") from None


def describe_device(device: str) -> str:
    """A human description of where a run happened, for reports and benchmark tables."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(dev)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        if names:
            model = names[0]
        if " avx512f" in info:
            model += " with AVX-512"
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{os.cpu_count()}-core {model}, CPU ({threads} torch thread{'s' if threads != 1 else ''}), no GPU used"


def data_summary(data) -> dict:
    if data.image is None:
        image = None
    elif data.image_is_pixels:
        image = "pixels %s" % "x".join(map(str, data.image.shape[1:]))
    else:
        image = f"{data.image_dim}-d features"
    skipped = list(getattr(data.image, "skipped", ()))  # images streamed from files: the unreadable ones dropped
    if hasattr(data.image, "skipped"):
        image += " streamed from files" + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
    return {"name": data.name, "n": int(data.n), "n_labels": int(data.n_labels), "image": image,
            "text_dim": None if data.text is None else int(data.text_dim), "n_query": int(data.query_idx.numel()),
            "n_retrieval": int(data.retrieval_idx.numel()), "n_train": int(data.train_idx.numel()),
            "fingerprint": data_fingerprint(data), "source": getattr(data, "source", None),
            **({"skipped_images": skipped} if skipped else {})}


def baselines(result, data, cfg: TrainConfig) -> dict:
    """The linear and kernel hashers (trained on the run's fitted training items, with its category
    codes and input normalisers; the kernel hasher's anchors drawn from the run's seed) and chance,
    scored on the same queries, database and tasks as the run."""
    from ..method.baselines import chance_map, kernel_hasher, linear_hasher
    from ..method.methods import tasks_of

    split = result.state.get("split") or {"fit_idx": data.train_idx, "val_idx": data.train_idx[:0]}
    fit, val = split["fit_idx"], split["val_idx"]
    return {"linear": linear_hasher(result.model, data, fit, val, topk=cfg.topk, method=cfg.method),
            "kernel": kernel_hasher(result.model, data, fit, val, topk=cfg.topk, seed=cfg.seed, method=cfg.method),
            "chance": chance_map(data, topk=cfg.topk, tasks=tasks_of(result.model.modalities))}


def normalization_summary(model) -> dict:
    out = {}
    if "text" in model.modalities:
        out["text"] = model.text_net.normalizer.describe()
    if "image" in model.modalities:
        out["image"] = ({"kind": "pixels", "detail": "the backbone's ImageNet mean/std"}
                        if model.image_net.uses_pixels else model.image_net.normalizer.describe())
    return out


def build_metrics(cfg: TrainConfig, result, scores: dict, data, *, command: str | None = None,
                  reference: dict | None = None) -> dict:
    seconds = [r["seconds"] for r in result.history]
    return {
        "method": cfg.method,
        "bits": cfg.bits,
        "topk": cfg.topk,
        "modalities": list(result.model.modalities),
        **{key: value for key, value in scores.items() if key.endswith("_map")},
        "baselines": reference or {},
        "selection": result.selection,
        "normalization": normalization_summary(result.model),
        "backbone": dict(result.state.get("backbone") or {}),
        "epochs": len(result.history),
        "seconds_per_epoch": statistics.median(seconds) if seconds else None,
        "train_seconds": sum(seconds),
        "history": result.history,
        "curves": scores.get("curves", {}),
        "proxies": result.proxy_diagnostics,
        "config": cfg.to_dict(),
        "data": data_summary(data),
        "device": describe_device(cfg.device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dchml_version": __version__,
        "torch_version": torch.__version__,
        "command": command,
    }


def run_experiment(data, cfg: TrainConfig, out_dir: str, *, resume: bool = False, force: bool = False,
                   progress=None, log=log_to_stderr, command: str | None = None, nproc: int | None = None,
                   lock: bool = True):
    """Train into out_dir (checkpoint every epoch), evaluate with curves, write metrics.json.
    log: callable for one-line progress messages (default: stderr), None for silence.
    Returns (metrics dict, TrainResult).
    nproc > 1 (or a torchrun launch) trains on several processes (dchml/distributed/training.py); only
    rank 0 of a torchrun job evaluates and writes, the other ranks get (None, TrainResult).
    lock: hold out_dir's run lock (run_dir.claim) meanwhile; False when the caller holds it."""
    from ..distributed import training as distributed_train

    if lock and distributed_train.is_main_process():
        with run_dir.claim(out_dir, resume=resume, force=force):
            return _run_experiment(data, cfg, out_dir, resume, force, progress, log, command, nproc)
    return _run_experiment(data, cfg, out_dir, resume, force, progress, log, command, nproc)


def _run_experiment(data, cfg, out_dir, resume, force, progress, log, command, nproc):
    from ..distributed import training as distributed_train

    main = distributed_train.is_main_process()
    if main:
        prepare_out_dir(out_dir, resume=resume, force=force)
        check_room(data, [cfg], out_dir)
    if nproc is not None or distributed_train.launched_by_torchrun():
        result = distributed_train.train(data, cfg, nproc=nproc, checkpoint_path=os.path.join(out_dir, CHECKPOINT),
                                         resume=resume, progress=progress, log=log)
        if not main:
            return None, result
    else:
        result = train(data, cfg, checkpoint_path=os.path.join(out_dir, CHECKPOINT), resume=resume,
                       progress=progress, log=log)
    final_cfg = TrainConfig.from_dict(result.state["config"]) if result.state else cfg
    scores = evaluate(result.model, data, topk=final_cfg.topk, curves=True, device=final_cfg.device)
    metrics = build_metrics(final_cfg, result, scores, data, command=command,
                            reference=baselines(result, data, final_cfg))
    write_json(metrics, os.path.join(out_dir, METRICS))
    return metrics, result
