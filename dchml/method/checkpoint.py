"""Checkpoints: atomic writes, safe loads, and rebuilding a model from one.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes),
so `torch.load(path, weights_only=True)` reads it. Keys:
  format ("dchml-checkpoint"), version, epoch (completed outer iterations), config (TrainConfig as
  a dict), model_spec (CrossModalHashModel kwargs), model (state dict, proxies included),
  optim_image / optim_text (optimizer state dicts), codes_c, stored_image, stored_text (n_train, k),
  rng ({"generator": uint8 tensor, "torch": uint8 tensor[, "cuda": ...]}), history (list of dicts),
  phnet (proxy training diagnostics), data ({"name", "n", "train_idx", "fingerprint": {"content",
  "split"}, "train_row_hashes", "source"}: see dchml/data/fingerprint.py), split ({"fit_idx",
  "val_idx"}: the training items trained on and the held-out validation slice), selection
  ({"epoch", "score", "stale", "stopped_early", "summary"}); `model` holds the weights to use (the
  selected epoch's) and `model_last`, present when they differ, the latest weights a resume
  continues from.
Loading checks the CRC-32 of every member of the zip torch writes (dchml.io.integrity) before
torch.load, which checks none: a damaged checkpoint is refused by name instead of loading.
Versions 1 and 2 (before input normalisation and selection) still load for evaluation and
encoding, with identity normalisers; only version 3 can be resumed.
"""
from __future__ import annotations

import os
import warnings

import torch

from ..io.atomic import write_atomic
from ..io.integrity import DamagedFileError, verify_zip
from .models import CrossModalHashModel

FORMAT = "dchml-checkpoint"
VERSION = 3  # 2: data fingerprint, training-row hashes, source; 3: input normalisers, split, selection
READABLE_VERSIONS = (1, 2, 3)
_ZIP_MAGIC = b"PK\x03\x04"
_REQUIRED = ("epoch", "config", "model_spec", "model", "history", "data")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a dchml checkpoint."""


def save_checkpoint(state: dict, path: str) -> None:
    state = {"format": FORMAT, "version": VERSION, **state}
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if head != _ZIP_MAGIC:  # dchml writes torch's zip format; anything else is not ours
        raise CheckpointError(f"{path} is not a dchml checkpoint or is corrupt (not a torch zip file)")
    try:  # torch.load checks no checksum: a damaged checkpoint would load and give wrong answers
        verify_zip(path, "checkpoint", "restore it from a copy or train again")
    except DamagedFileError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        with warnings.catch_warnings():  # torch's advice would not fit a user's one-line error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # torch's own message would advise weights_only=False: never do that on a user's file.
        raise CheckpointError(f"{path} is not a dchml checkpoint or is corrupt (a truncated or damaged zip, "
                              "or objects a weights-only load refuses)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dchml checkpoint (no 'format': '{FORMAT}' entry)")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has version {state.get('version')}, this dchml reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: no {', '.join(missing)}")
    return state


def model_from_checkpoint(state_or_path, *, weights: str = "selected") -> CrossModalHashModel:
    """Rebuild the trained model (eval mode, on the CPU) from a checkpoint dict or path.
    weights="selected": the kept epoch's weights; "last": the latest epoch's (to resume)."""
    state = load_checkpoint(state_or_path) if isinstance(state_or_path, (str, os.PathLike)) else state_or_path
    try:
        model = CrossModalHashModel(**state["model_spec"])
        values = state["model_last"] if weights == "last" and "model_last" in state else state["model"]
        if state.get("version", VERSION) < 3:  # written before the input normalisers existed: identity
            values = {**{k: v for k, v in model.state_dict().items() if ".normalizer." in k}, **values}
        model.load_state_dict(values, strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not hold a valid model ({type(exc).__name__}: {exc})") from None
    return model.eval()
