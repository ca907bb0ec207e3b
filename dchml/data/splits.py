"""The paper's split protocol (docs/spec.md §8) from a seed: a random query set, the rest is the
retrieval database, and the training set is drawn from the database: all of it up to 10,000
items, else a seeded sample of 10,000 (the common convention of the field's public code). Query
set sizes follow the paper for full-size data sets and shrink by a fixed rule for small ones."""
from __future__ import annotations

import numpy as np
import torch

from .dataset import DataError

PAPER_TRAIN = 10_000


def default_split_sizes(n: int) -> tuple[int, int]:
    """(n_query, n_train) for n items.

    Rule (it reproduces every row of docs/spec.md §8 and scales smoothly below them):
      n_query = 5000 if n >= 100,000 (NUS-WIDE, MS COCO), else min(2000, n // 6)
                (IAPR TC-12, MIRFlickr-25K: 2000; the 12,000-item synthetic set: 2000);
      n_train = the whole database up to 10,000 items, else 10,000 (default_train_size).
    """
    if n < 2:
        raise DataError(f"cannot split {n} items: need at least 2")
    n_query = 5000 if n >= 100_000 else max(1, min(2000, n // 6))
    return n_query, default_train_size(n - n_query)


def default_train_size(n_db: int) -> int:
    """The whole database up to 10,000 items, else 10,000 (the paper's training set size)."""
    return max(1, min(PAPER_TRAIN, n_db))


def paper_split(n: int, *, seed: int = 0, n_query: int | None = None, n_train: int | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (query_idx, retrieval_idx, train_idx), 0-based int64, sorted, from `seed`.

    Deterministic: numpy default_rng(seed), never global state. Explicit sizes override the rule
    of default_split_sizes.
    """
    n_query = default_split_sizes(n)[0] if n_query is None else int(n_query)
    if not 1 <= n_query <= n - 1:
        raise DataError(f"n_query must be in [1, {n - 1}] for {n} items, got {n_query}")
    n_db = n - n_query
    n_train = default_train_size(n_db) if n_train is None else int(n_train)
    if not 1 <= n_train <= n_db:
        raise DataError(f"n_train must be in [1, {n_db}] (the database size), got {n_train}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    query = np.sort(perm[:n_query])
    db = np.sort(perm[n_query:])
    train = np.sort(rng.choice(db, size=n_train, replace=False))
    return (torch.from_numpy(query).to(torch.int64), torch.from_numpy(db).to(torch.int64),
            torch.from_numpy(train).to(torch.int64))
