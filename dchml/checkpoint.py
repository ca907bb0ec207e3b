"""Checkpoints: atomic writes, safe loads, and rebuilding a model from one.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes),
so `torch.load(path, weights_only=True)` reads it. Keys:
  format ("dchml-checkpoint"), version, epoch (completed outer iterations), config (TrainConfig as
  a dict), model_spec (CrossModalHashModel kwargs), model (state dict, proxies included),
  optim_image / optim_text (optimizer state dicts), codes_c, stored_image, stored_text (n_train, k),
  rng ({"generator": uint8 tensor, "torch": uint8 tensor[, "cuda": ...]}), history (list of dicts),
  phnet (proxy training diagnostics), data ({"name", "n", "train_idx"}), split ({"fit_idx",
  "val_idx"}: the training items trained on and the held-out validation slice), selection
  ({"epoch", "score", "stale", "stopped_early"}); `model` holds the weights to use (the selected
  epoch's) and `model_last`, present when they differ, the latest weights a resume continues from.
Version 1 files (before input normalisation and selection) still load for evaluation and encoding.
"""
from __future__ import annotations

import os
import tempfile

import torch

from .models import CrossModalHashModel

FORMAT = "dchml-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a dchml checkpoint."""


def atomic_write(path: str, write) -> None:
    """Call write(tmp_path) on a temporary file in path's directory, then os.replace it onto path,
    so a reader (or a crash) never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(state: dict, path: str) -> None:
    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file ({first_line})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dchml checkpoint (no 'format': '{FORMAT}' entry)")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has version {state.get('version')}, this dchml reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    return state


def model_from_checkpoint(state_or_path, *, weights: str = "selected") -> CrossModalHashModel:
    """Rebuild the trained model (eval mode, on the CPU) from a checkpoint dict or path.
    weights="selected": the kept epoch's weights; "last": the latest epoch's (to resume)."""
    state = load_checkpoint(state_or_path) if isinstance(state_or_path, (str, os.PathLike)) else state_or_path
    try:
        model = CrossModalHashModel(**state["model_spec"])
        values = state["model_last"] if weights == "last" and "model_last" in state else state["model"]
        if state.get("version", VERSION) == 1:  # written before the input normalisers existed: identity
            values = {**{k: v for k, v in model.state_dict().items() if ".normalizer." in k}, **values}
        model.load_state_dict(values, strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not hold a valid model ({type(exc).__name__}: {exc})") from None
    return model.eval()
