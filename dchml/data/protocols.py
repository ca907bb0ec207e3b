"""The single-modality retrieval protocols of the field by name (DeepHash-pytorch's definitions):
how many queries and training items each class gives, what the database is, and MAP@K's K.

| name | classes | queries | training | database | topk |
|---|---|---|---|---|---|
| cifar10   | 10  | 100 per class  | 500 per class  | the rest (54,000 of 60,000): training items are not in it | 54000 |
| cifar10-1 | 10  | 100 per class  | 500 per class, from the database | all but the queries (59,000) | 54000 |
| cifar10-2 | 10  | 1000 per class | 5000 per class | the training items (50,000) | 54000 |
| nus-wide  | 21  | 100 per class  | 500 per class, from the database | all but the queries | 5000 |
| coco      | 80  | the list files (test.txt / train.txt / database.txt) | | | 5000 |
| imagenet  | 100 | the list files | | | 1000 |

A protocol that draws its split does so only for a source without one of its own (a CIFAR-10
folder, a features file without indices); for a source with its own split (list files) it gives
K and checks the class count. The draw, from `seed` (numpy default_rng, never global state):
classes in order, each draws its queries without replacement from the items carrying its label
that are not yet chosen; then the same for the training items. For one-hot labels this is a
class-balanced random split; for multi-label data (NUS-WIDE) an item chosen for one class is not
drawn again for a later one **[choice]**. A class with too few items is refused, in one line
saying what is missing. MAP@K is clamped to the database size by the ranker (cifar10: 54,000).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dataset import DataError


@dataclass(frozen=True)
class Protocol:
    name: str
    topk: int
    n_classes: int
    queries_per_class: int | None = None  # None: the split comes from the source (list files)
    train_per_class: int | None = None
    database: str = "all"                 # "all": every non-query item; "rest": neither query nor
                                          # training; "train": the training items

    @property
    def draws_split(self) -> bool:
        return self.queries_per_class is not None

    def record(self) -> dict:
        """What the data object keeps: CrossModalData.protocol."""
        return {"name": self.name, "topk": self.topk}


PROTOCOLS = {p.name: p for p in (
    Protocol("cifar10", 54_000, 10, 100, 500, "rest"),
    Protocol("cifar10-1", 54_000, 10, 100, 500, "all"),
    Protocol("cifar10-2", 54_000, 10, 1000, 5000, "train"),
    Protocol("nus-wide", 5000, 21, 100, 500, "all"),
    Protocol("coco", 5000, 80),
    Protocol("imagenet", 1000, 100),
)}
ALIASES = {"nuswide": "nus-wide", "nus_wide": "nus-wide", "nuswide_21": "nus-wide", "nus-wide-21": "nus-wide",
           "ms-coco": "coco", "mscoco": "coco", "ms_coco": "coco",
           "imagenet-100": "imagenet", "imagenet100": "imagenet", "imagenet_100": "imagenet"}
DEFAULT_FOR_FORMAT = {"cifar": "cifar10-1"}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name` (case-insensitive; aliases such as nuswide, ms-coco, imagenet-100)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in PROTOCOLS:
        raise DataError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)} "
                        f"(also {', '.join(sorted(ALIASES))})")
    return PROTOCOLS[key]


def protocol_topk(name: str) -> int:
    """MAP@K's K under protocol `name`."""
    return get_protocol(name).topk


def default_protocol(path, format: str = "auto") -> str | None:
    """The protocol a source gets when none is named: cifar10-1 for a CIFAR-10 python folder,
    else None (the source's own split, or dchml's split rule). Never raises: a path that cannot be
    read gives None here and its error when it is loaded."""
    import os
    from pathlib import Path

    if format != "auto":
        return DEFAULT_FOR_FORMAT.get(format)
    if path is None or os.fspath(path) == "synthetic" or not os.path.exists(path):
        return None
    from .formats import detect_format

    try:
        return DEFAULT_FOR_FORMAT.get(detect_format(Path(os.fspath(path))))
    except (DataError, OSError):
        return None


def check_classes(protocol: Protocol, n_labels: int, name: str) -> None:
    if n_labels != protocol.n_classes:
        raise DataError(f"{name}: protocol {protocol.name} is for {protocol.n_classes} classes; the data has "
                        f"{n_labels} label columns")


def draw_split(protocol: Protocol, labels, seed: int, name: str, class_names=None):
    """(query_idx, retrieval_idx, train_idx), int64 sorted, drawn by `protocol` from `seed`.
    class_names (optional) name the classes in messages."""
    labels = np.asarray(labels) != 0
    n, c = labels.shape
    check_classes(protocol, c, name)
    q, t = protocol.queries_per_class, protocol.train_per_class
    counts = labels.sum(0)
    short = np.flatnonzero(counts < q + t)
    if len(short):
        k = int(short[0])
        raise DataError(f"{name}: {protocol.name} needs {q + t} items of each of {c} classes ({q} queries + {t} "
                        f"training); class {_class(k, class_names)} has {int(counts[k])}"
                        + ("" if len(short) == 1 else " (every class falls short)" if len(short) == c
                           else f" ({len(short)} classes fall short)"))
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n, dtype=bool)
    parts = {}
    for role, per_class in (("query", q), ("train", t)):
        picked = []
        for k in range(c):
            pool = np.flatnonzero(labels[:, k] & ~chosen)
            if len(pool) < per_class:
                raise DataError(f"{name}: {protocol.name} needs {per_class} {role} items of class "
                                f"{_class(k, class_names)}, but only {len(pool)} of its items are left after the "
                                "classes before it drew theirs")
            pick = rng.choice(pool, size=per_class, replace=False)
            chosen[pick] = True
            picked.append(pick)
        parts[role] = np.sort(np.concatenate(picked))
    query, train = parts["query"], parts["train"]
    if protocol.database == "train":
        database = train
    else:
        in_db = np.ones(n, dtype=bool)
        in_db[query] = False
        if protocol.database == "rest":
            in_db[train] = False
        database = np.flatnonzero(in_db)
    if len(database) == 0:
        raise DataError(f"{name}: {protocol.name} leaves no items for the database: it needs more than "
                        f"{q + t} items of some class ({q} queries + {t} training)")
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in (query, database, train))


def _class(k: int, names) -> str:
    return f"{k} ({names[k]})" if names is not None and k < len(names) else str(k)
