"""The CIFAR-10 "python version" folder (`cifar-10-batches-py`, from cifar-10-python.tar.gz):

  data_batch_1 .. data_batch_5   10,000 training images each
  test_batch                     10,000 test images
  batches.meta                   b"label_names": the 10 class names (optional here)

Each batch is a pickled dict with bytes keys: b"data", a uint8 (10000, 3072) array (per image
1024 red, 1024 green, 1024 blue values, rows of 32), and b"labels", 10,000 class numbers. The
files are read with safe_pickle (no code from them runs; anything but plain data and NumPy
arrays is refused). Items are the five data batches, then the test batch: 60,000 in all, kept in
memory as (n, 3, 32, 32) uint8 pixels (180 MB). The split comes from a protocol (protocols.py;
cifar10-1 unless another is named).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import DataError
from .labels import one_hot
from .safe_pickle import load_arrays_pickle

FOLDER = "cifar-10-batches-py"
BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
META = "batches.meta"
_WHAT = "CIFAR-10 batch file"


def cifar_folder(path: Path) -> Path | None:
    """The batches folder that `path` is (or holds, as `cifar-10-batches-py/`, or is one file
    of), else None."""
    if path.is_file():
        path = path.parent if path.name in BATCHES + (META,) else None
        if path is None:
            return None
    if not path.is_dir():
        return None
    for folder in (path, path / FOLDER):
        if folder.is_dir() and (folder / BATCHES[0]).is_file() and (folder / "test_batch").is_file():
            return folder
    return None


def _field(batch: dict, key: str, path):
    for k in (key.encode(), key):  # the release's keys are bytes; a re-pickled copy may have str
        if k in batch:
            return batch[k]
    raise DataError(f"{path}: not a {_WHAT}: no {key!r} entry (has {sorted(map(repr, batch))[:6]})")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_arrays_pickle(path, what=_WHAT)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a {_WHAT}: holds a {type(batch).__name__}, not a dict")
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be uint8 (n, 3072) pixels, got {type(data).__name__} "
                        f"{getattr(data, 'dtype', '')} {shape if shape is not None else ''}".rstrip())
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: 'labels' is not a list of class numbers ({e})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataError(f"{path}: 'labels' must be {len(data)} integer class numbers, got {labels.dtype} "
                        f"shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(folder: Path) -> list[str] | None:
    path = folder / META
    if not path.is_file():
        return None
    meta = load_arrays_pickle(path, what="CIFAR-10 meta file")
    names = _field(meta, "label_names", path) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: 'label_names' must be a list of names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def load_cifar_arrays(path) -> dict:
    """{'image': uint8 (n, 3, 32, 32), 'labels': one-hot float32 (n, c), 'class_names'} of a
    CIFAR-10 python folder (or its parent folder, or one of its files); DataError naming the file."""
    given = Path(os.fspath(path))
    folder = cifar_folder(given)
    if folder is None:
        raise DataError(f"{given}: not a CIFAR-10 python folder (needs {BATCHES[0]} and test_batch, here or in "
                        f"{FOLDER}/)")
    missing = [b for b in BATCHES if not (folder / b).is_file()]
    if missing:
        raise DataError(f"{folder}: missing batch file(s) {', '.join(missing)}")
    images, labels = zip(*(_read_batch(folder / b) for b in BATCHES))
    names = _class_names(folder)
    values = np.concatenate(labels)
    if names is not None:
        bad = np.flatnonzero((values < 0) | (values >= len(names)))
        if len(bad):
            batch, row = _locate(labels, int(bad[0]))
            raise DataError(f"{folder / BATCHES[batch]}: image {row + 1} has class {values[bad[0]]}, but "
                            f"{META} names {len(names)} classes")
        onehot = np.zeros((len(values), len(names)), dtype=np.float32)
        onehot[np.arange(len(values)), values] = 1.0
    else:  # no batches.meta: the classes are the class numbers found
        (onehot,), _ = one_hot([values], ["labels"], folder)
    return {"image": np.concatenate(images), "labels": onehot, "class_names": names}


def _locate(parts, position: int) -> tuple[int, int]:
    for i, part in enumerate(parts):
        if position < len(part):
            return i, position
        position -= len(part)
    raise IndexError(position)
