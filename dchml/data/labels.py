"""Single-label sources: a vector of class values per item (CIFAR-10's `labels`, the `traingnd`
of SDH-style .mat files, a list file with one class index per line) becomes the one-hot (n, c)
label matrix every method reads.

A label array is a class vector when it is 1-D (or one row / one column) and holds a value other
than 0 and 1; a 0/1 column stays a one-label multi-hot matrix, as before. The classes are the
distinct values, in ascending order, over all the arrays of one source (so a training array and
a query array get the same columns even when a class is absent from one of them) **[choice]**:
0-based (0..9) and 1-based (1..10) class numbers both give 10 columns.
"""
from __future__ import annotations

import numpy as np

from .dataset import DataError


def is_class_vector(labels) -> bool:
    """Whether `labels` is a vector of class values rather than a 0/1 (multi-hot) matrix."""
    a = np.asarray(labels)
    if a.ndim not in (1, 2) or (a.ndim == 2 and 1 not in a.shape) or a.size == 0:
        return False
    if a.dtype.kind not in "biuf":
        return False
    return bool(np.any((a != 0) & (a != 1)))


def one_hot(vectors: list, names: list, source) -> tuple[list, np.ndarray]:
    """The one-hot float32 (n_i, c) matrix of each class vector in `vectors` (their columns are the
    distinct values of all of them), and those values. `names` name each array in messages."""
    flat = [np.asarray(v).reshape(-1) for v in vectors]
    for v, name in zip(flat, names):
        if v.dtype.kind == "f":
            wrong = ~np.isfinite(v) | (v != np.round(v))
            if wrong.any():
                bad = int(np.flatnonzero(wrong)[0])
                raise DataError(f"{source}: {name} holds class numbers, but item {bad + 1} has {v[bad].item()}, "
                                "not an integer")
    classes = np.unique(np.concatenate([v.astype(np.int64) for v in flat]))
    out = []
    for v in flat:
        m = np.zeros((len(v), len(classes)), dtype=np.float32)
        m[np.arange(len(v)), np.searchsorted(classes, v.astype(np.int64))] = 1.0
        out.append(m)
    return out, classes


def as_multi_hot(labels, name: str, source) -> np.ndarray:
    """`labels` as given when it is a label matrix, one-hot when it is a class vector."""
    if is_class_vector(labels):
        return one_hot([labels], [name], source)[0][0]
    return labels
