"""`load_dataset`: one entry point for every source (the synthetic set, MATLAB v5 / v7.3 files,
text-list folders, dchml's .npz), the format detection, and the split: a file's own indices
when it has them, otherwise the paper's protocol from a seed (splits.py)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from .dataset import CrossModalData, DataError, from_arrays
from .splits import default_train_size, paper_split
from .synthetic import make_synthetic

FORMATS = ("auto", "mat", "txt", "npz")
_HDF5 = b"\x89HDF\r\n\x1a\n"


def detect_format(path: Path) -> str:
    """'mat', 'txt' or 'npz' for an existing path, from its suffix or, failing that, its bytes."""
    if path.is_dir():
        if (path / "labels.txt").is_file():
            return "txt"
        if any(p.suffix.lower() == ".mat" for p in path.iterdir()):
            return "mat"
        raise DataError(f"{path}: folder is neither a text-list data set (no labels.txt) nor a folder of .mat files")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".mat", ".h5", ".hdf5"):
        return "mat"
    if suffix == ".txt":
        return "txt"
    with open(path, "rb") as fh:
        head = fh.read(520)
    if head[:4] == b"PK\x03\x04":
        return "npz"
    if head[:6] == b"MATLAB" or head[:8] == _HDF5 or head[512:520] == _HDF5:
        return "mat"
    raise DataError(f"{path}: cannot tell the format (suffix {suffix!r}); pass format='mat', 'txt' or 'npz'")


def load_dataset(source: str, format: str = "auto", *, seed: int = 0, n_query: int | None = None,
                 n_train: int | None = None, drop_unlabeled: bool = False,
                 image_size: int = 224) -> CrossModalData:
    """Load a cross-modal data set.

    source: "synthetic" (make_synthetic(seed=seed)), or a path: a .mat file (v5 or v7.3), a
        folder of .mat files, a text-list folder (or one of its files), or a dchml .npz file.
    format: "auto" (from the suffix, or the file's first bytes), "mat", "txt" or "npz".
    seed, n_query, n_train: the paper's split protocol (splits.paper_split) for sources without
        their own query/database indices. A file that has its own split keeps it, and giving
        n_query / n_train for such a file is an error (they would be ignored).
    drop_unlabeled: drop items without any label (the paper's protocol; many public copies of
        NUS-WIDE and IAPR TC-12 contain such rows). Default False: such rows raise DataError.
    image_size: side of the square RGB pixels read from a text-list images.txt.
    Raises DataError for a missing, corrupt or inconsistent source.
    The result's `source` records these arguments (load_recorded loads the same data again).
    """
    if format not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    recorded = {"path": os.fspath(source), "abspath": None, "format": "synthetic", "seed": seed,
                "n_query": n_query, "n_train": n_train, "drop_unlabeled": drop_unlabeled, "image_size": image_size}
    if source == "synthetic":
        kw = {k: v for k, v in (("n_query", n_query), ("n_train", n_train)) if v is not None}
        return dataclasses.replace(make_synthetic(seed=seed, **kw), source=recorded)
    path = Path(os.fspath(source))
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fmt = detect_format(path) if format == "auto" else format
    recorded.update(abspath=str(path.resolve()), format=fmt)
    if fmt == "mat":
        from .matlab import load_mat_arrays
        arrays = load_mat_arrays(path)
    elif fmt == "txt":
        from .textlist import load_textlist_arrays
        arrays = load_textlist_arrays(path, image_size=image_size)
    else:
        from .npz import load_npz_arrays
        if path.is_dir():
            raise DataError(f"{path}: format 'npz' needs a file, got a folder")
        arrays = load_npz_arrays(path)
    return _assemble(arrays, name=path.name, seed=seed, n_query=n_query, n_train=n_train,
                     drop_unlabeled=drop_unlabeled, source=recorded)


def load_recorded(source: dict) -> CrossModalData:
    """Load the data a `CrossModalData.source` record describes (e.g. one kept in a checkpoint).
    Raises DataError, naming the recorded path, when that file is gone."""
    path = source["path"] if source.get("abspath") is None else source["abspath"]
    if source.get("format") != "synthetic" and not os.path.exists(path):
        raise DataError(f"the recorded data {source['path']!r} ({path}) no longer exists")
    return load_dataset(path, "auto" if source.get("format") == "synthetic" else source["format"],
                        seed=source["seed"], n_query=source.get("n_query"), n_train=source.get("n_train"),
                        drop_unlabeled=bool(source.get("drop_unlabeled")), image_size=source.get("image_size", 224))


def _assemble(arrays: dict, *, name: str, seed: int, n_query, n_train, drop_unlabeled: bool,
              source: dict) -> CrossModalData:
    image, text, labels = arrays["image"], arrays["text"], arrays["labels"]
    n = labels.shape[0]
    for role, a in (("image", image), ("text", text)):
        if a.shape[0] != n:
            raise DataError(f"{name}: row counts disagree: {role} has {a.shape[0]} rows, labels have {n}")
    q, r, t = (arrays.get(k) for k in ("query_idx", "retrieval_idx", "train_idx"))
    if q is None and r is None and t is None:
        if drop_unlabeled:
            keep = np.asarray(labels).reshape(n, -1).sum(1) != 0
            image, text, labels = image[keep], text[keep], labels[keep]
            n = int(keep.sum())
        q, r, t = paper_split(n, seed=seed, n_query=n_query, n_train=n_train)
        return from_arrays(image, text, labels, query_idx=q, retrieval_idx=r, train_idx=t, name=name, source=source)
    if n_query is not None or n_train is not None:
        raise DataError(f"{name}: the file defines its own query/database split; n_query / n_train "
                        "cannot be applied (remove them, or remove the file's indices)")
    if q is None and r is None:
        raise DataError(f"{name}: a training index is given without query/database indices")
    rest = lambda idx: np.setdiff1d(np.arange(n), np.asarray(idx))  # noqa: E731
    q = rest(r) if q is None else q
    r = rest(q) if r is None else r
    if t is None:
        # Training items drawn from the database by the paper's rule, from the seed.
        r_arr = np.asarray(r, dtype=np.int64).reshape(-1)
        if len(r_arr):
            size = default_train_size(len(r_arr))
            t = np.sort(np.random.default_rng(seed).choice(r_arr, size=size, replace=False))
        else:
            t = r_arr  # empty: validation reports the empty database
    return from_arrays(image, text, labels, query_idx=q, retrieval_idx=r, train_idx=t, name=name,
                       drop_unlabeled=drop_unlabeled, source=source)
