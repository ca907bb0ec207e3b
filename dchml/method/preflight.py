"""Checks before a run does any work: will training fit in memory, will its outputs fit on disk.

Both are estimates from the sizes of what Algorithm 1 keeps: the networks' parameters (counted
on a model built on torch's "meta" device: no memory, no time), their gradients and optimiser
state, the stored outputs B̂^v, B̂^t and the codes C (n_train x k each), one batch of
activations, evaluation's codes, and the checkpoint's copy of it all. They are meant to refuse
what cannot work (a 100,000-bit code, a disk with no room for one checkpoint) in seconds, not to
predict the peak to the byte: a run that passes can still run short when other processes grow.
"""
from __future__ import annotations

import os
import shutil

import torch

from .models import HashModel
from .train import model_kwargs

_FLOAT = 4  # bytes: every tensor of a run is float32
_ALEXNET_BYTES_PER_ITEM = 8 << 20  # activations, saved for backward, of one 224 x 224 item (rough)
_OUTPUTS_BYTES = 2 << 20  # metrics.json, report.md and three PNGs


class ResourceError(ValueError):
    """A run would not fit in memory or on disk."""


def _parameter_counts(data, cfg) -> dict:
    with torch.device("meta"):
        model = HashModel(**model_kwargs(data, cfg))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"nets": sum(count(model.net(m)) for m in model.modalities),
            "phnet": count(model.phnet) if hasattr(model, "phnet") else 0,
            "state": sum(t.numel() for t in model.state_dict().values())}


def _optimizer_slots(cfg) -> int:
    """Per-parameter state tensors of the networks' optimiser (train.make_optimizer: Adam keeps
    two moments, SGD a momentum buffer when momentum > 0)."""
    if cfg.optimizer in ("adam", "adamw"):
        return 2
    return 1 if cfg.momentum > 0 else 0


def _n_train(data) -> int:
    return int(data.train_idx.numel())


def checkpoint_bytes(data, cfg) -> int:
    """Estimated size of one checkpoint.pt of this run."""
    params = _parameter_counts(data, cfg)
    n, k = _n_train(data), cfg.bits
    # the kept epoch's weights and, when a later epoch is not the kept one, the latest weights too
    tensors = (2 * params["state"] + params["nets"] * _optimizer_slots(cfg) + 3 * n * k) * _FLOAT
    extras = 16 * n + cfg.epochs * 1024 + (64 << 10)  # indices and row hashes, history, rng states
    return int(tensors * 1.01) + extras


def training_parts(data, cfg) -> dict:
    """Estimated bytes of each part of a run's working memory (data already loaded excluded)."""
    params = _parameter_counts(data, cfg)
    n, k, c = _n_train(data), cfg.bits, data.n_labels
    batch = min(cfg.batch_size, n)
    image_batch = text_batch = 0
    if data.image is not None and data.image_is_pixels:
        image_batch = batch * _ALEXNET_BYTES_PER_ITEM * (cfg.image_size / 224) ** 2
    elif data.image is not None:
        image_batch = batch * (data.image_dim + 2 * cfg.image_hidden + 2 * k) * _FLOAT * 2
    if data.text is not None:
        text_batch = batch * (data.text_dim + 2 * cfg.text_hidden + 2 * k) * _FLOAT * 2
    n_eval = int(data.query_idx.numel() + data.retrieval_idx.numel())
    return {
        "network weights, gradients and optimiser state":
            params["nets"] * _FLOAT * (2 + _optimizer_slots(cfg)) + params["phnet"] * _FLOAT * 4,
        "stored outputs and codes (3 x n_train x bits)": 3 * n * k * _FLOAT + n * c * _FLOAT,
        "one batch of activations": int(max(image_batch, text_batch)),
        "evaluation's codes": 2 * n_eval * k * _FLOAT,
        "the checkpoint's copy": checkpoint_bytes(data, cfg),
    }


def _available_memory(device: str) -> int | None:
    """Bytes that can be allocated without swapping (MemAvailable), or free GPU memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None  # not Linux: no check


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_memory(data, cfg) -> None:
    """Refuse (ResourceError) a configuration whose estimated memory exceeds what is available."""
    parts = training_parts(data, cfg)
    total = sum(parts.values())
    available = _available_memory(cfg.device)
    if available is not None and total > available:
        biggest = max(parts, key=parts.get)
        raise ResourceError(
            f"{cfg.method} at {cfg.bits} bits on {data.name} ({_n_train(data)} training items) needs about "
            f"{human_bytes(total)} of memory ({biggest}: {human_bytes(parts[biggest])}), {human_bytes(available)} "
            f"available on {cfg.device}; use fewer bits, a smaller batch or smaller networks")


def check_disk(data, configs, out_dir: str) -> None:
    """Refuse (ResourceError) runs whose checkpoints and reports would not fit in out_dir's file system.
    A checkpoint is written beside the previous one and then replaces it (atomic writes), so a run
    needs room for two; a checkpoint.pt already in out_dir (a resume) holds one of them."""
    checkpoints = sum(checkpoint_bytes(data, cfg) for cfg in configs)
    existing = os.path.join(out_dir, "checkpoint.pt")
    on_disk = os.path.getsize(existing) if os.path.isfile(existing) else 0
    need = max(2 * checkpoints - on_disk, checkpoints) + _OUTPUTS_BYTES * len(configs)
    free = shutil.disk_usage(out_dir).free
    if need > free:
        raise ResourceError(f"{out_dir} has {human_bytes(free)} free, the run needs about {human_bytes(need)} "
                            f"(checkpoint.pt about {human_bytes(checkpoints)}, plus metrics and report)")


def check_room(data, configs, out_dir: str) -> None:
    """Both checks for runs of `configs` (one after the other) on `data` into out_dir."""
    for cfg in configs:
        check_memory(data, cfg)
    check_disk(data, configs, out_dir)
