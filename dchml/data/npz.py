"""dchml's own data file: a NumPy .npz archive (read with allow_pickle=False) holding

  image          (n, d) float features, or (n, 3, H, W) uint8 pixels  } at least one of
  text           (n, d_t) bag-of-words                                } the two modalities
  labels         (n, c) in {0, 1}, or (n,) class numbers (made one-hot, labels.py)
  query_idx      optional, 0-based \
  retrieval_idx  optional, 0-based  } none of them, query_idx + retrieval_idx, or all three
  train_idx      optional, 0-based /
  encoders       optional, a 0-d unicode array holding JSON: how raw inputs became these rows
                 (CrossModalData.encoders: the caption vocabulary, the image backbone)

Any other array name is an error (it is most likely a typo). save_npz writes atomically; a file
whose zip checksums do not match its content is refused as damaged (dchml.io.integrity).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..io.atomic import write_atomic
from ..io.integrity import DamagedFileError, is_zip_file, verify_zip
from .dataset import CrossModalData, DataError
from .labels import as_multi_hot

MODALITIES = ("image", "text")
REQUIRED = ("labels",)
OPTIONAL = ("query_idx", "retrieval_idx", "train_idx")
METADATA = ("encoders",)


def load_npz_arrays(path) -> dict:
    path = Path(os.fspath(path))
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:  # every member's checksum first: np.load checks only the members it reads to the end
        if is_zip_file(path):
            verify_zip(path, "data file", "restore it from a copy or write it again (dchml features, save_npz)")
    except DamagedFileError as exc:
        raise DataError(str(exc)) from None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: a single .npy array, not an .npz archive")
            keys = set(z.files)
            unknown = keys - set(MODALITIES) - set(REQUIRED) - set(OPTIONAL) - set(METADATA)
            if unknown:
                raise DataError(f"{path}: unknown arrays {sorted(unknown)}; allowed: "
                                f"{', '.join(MODALITIES + REQUIRED + OPTIONAL + METADATA)}")
            missing = [k for k in REQUIRED if k not in keys]
            if not keys & set(MODALITIES):
                missing.append(" or ".join(MODALITIES))
            if missing:
                raise DataError(f"{path}: missing array(s) {missing}; has {sorted(keys)}")
            out = {k: z[k] for k in MODALITIES + REQUIRED + OPTIONAL if k in keys}
            if "encoders" in keys:
                out["encoders"] = decode_encoders(z["encoders"], path)
    except DataError:
        raise
    except ValueError as e:  # object arrays need pickle, which is refused
        raise DataError(f"{path}: unreadable .npz ({e})") from e
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise DataError(f"{path}: corrupt or truncated .npz file ({type(e).__name__}: {e})") from e
    out["labels"] = as_multi_hot(out["labels"], "labels", path)
    has = [k for k in OPTIONAL if k in out]
    if has and has not in (["query_idx", "retrieval_idx"], list(OPTIONAL)):
        raise DataError(f"{path}: give no index arrays, query_idx + retrieval_idx, or all three; got {has}")
    for k in has:
        a = out[k]
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise DataError(f"{path}: {k} must be a 1-D integer array, got {a.dtype} shape {a.shape}")
    return out


def encoders_array(encoders: dict) -> np.ndarray:
    """CrossModalData.encoders as the 0-d unicode array stored in the .npz."""
    return np.array(json.dumps(encoders, ensure_ascii=False))


def decode_encoders(array, path) -> dict:
    if not (isinstance(array, np.ndarray) and array.shape == () and array.dtype.kind == "U"):
        raise DataError(f"{path}: 'encoders' must be a 0-d unicode array of JSON text")
    try:
        value = json.loads(str(array))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: 'encoders' is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise DataError(f"{path}: 'encoders' must hold a JSON object, got {type(value).__name__}")
    return value


def save_npz(data: CrossModalData, path) -> None:
    """Write `data` (its modalities, labels and split) to `path` in dchml's .npz format, atomically: a temporary
    file in the same folder, then os.replace, so a crash never leaves a half-written file."""
    if not isinstance(data, CrossModalData):
        raise TypeError(f"data must be a CrossModalData, got {type(data).__name__}")
    if data.image is not None and not isinstance(data.image, torch.Tensor):
        raise DataError(f"{data.name}: images streamed from disk are not written into an .npz; "
                        "extract features first (`dchml features`)")
    arrays = {k: getattr(data, k).numpy() for k in MODALITIES + REQUIRED + OPTIONAL if getattr(data, k) is not None}
    if data.encoders:
        arrays["encoders"] = encoders_array(data.encoders)
    # a file object: numpy does not append ".npz"
    write_atomic(os.fspath(path), lambda fh: np.savez_compressed(fh, **arrays))
