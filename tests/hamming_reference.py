"""Plain NumPy references for the ranker tests: ranking by a stable argsort of 0.5 * (k - B Q^T)
(the issue's reference), AP@K per docs/spec.md §7, and tie-aware AP by brute force over orders."""
from __future__ import annotations

import itertools
import math

import numpy as np


def pm1(bits01: np.ndarray) -> np.ndarray:
    return 2.0 * bits01.astype(np.float64) - 1.0


def distances(q01: np.ndarray, b01: np.ndarray) -> np.ndarray:
    """(nq, ndb) Hamming distances of 0/1 codes, via the ±1 inner product."""
    k = q01.shape[1]
    return (0.5 * (k - pm1(b01) @ pm1(q01).T)).T


def ranking(q01, b01):
    """Per query, database indices ascending by (distance, index)."""
    k = q01.shape[1]
    return np.argsort(0.5 * (k - pm1(b01) @ pm1(q01).T), axis=0, kind="stable").T


def ap_at_k(relevant_in_order: np.ndarray) -> float:
    hits = np.cumsum(relevant_in_order)
    n = hits[-1] if len(hits) else 0
    if n == 0:
        return 0.0
    ranks = np.arange(1, len(relevant_in_order) + 1)
    return float(np.sum(relevant_in_order * hits / ranks) / n)


def per_query_ap(q01, b01, qlab, blab, topk):
    order = ranking(q01, b01)
    k = order.shape[1] if topk is None else min(topk, order.shape[1])
    rel = (qlab.astype(np.int64) @ blab.astype(np.int64).T) > 0
    return np.array([ap_at_k(rel[i, order[i, :k]].astype(np.float64)) for i in range(len(q01))])


def expected_ap_brute(dist_row: np.ndarray, rel_row: np.ndarray, topk: int) -> float:
    """Mean AP@topk over every order of the database that is sorted by distance (all orders
    inside each tie group), for tiny databases."""
    groups = [np.flatnonzero(dist_row == d) for d in np.unique(dist_row)]
    total, count = 0.0, 0
    for perms in itertools.product(*[itertools.permutations(g) for g in groups]):
        order = np.concatenate([np.array(p, dtype=np.int64) for p in perms])
        total += ap_at_k(rel_row[order[:topk]].astype(np.float64))
        count += 1
    assert count == math.prod(math.factorial(len(g)) for g in groups)
    return total / count


def correlated_dataset(rng, n_query, n_db, bits, n_labels=5, multi=True, flip=0.2):
    """Codes correlated with labels as trained codes are: each item's code is the OR-ish mix of
    its labels' prototype codes with random bit flips."""
    protos = rng.integers(0, 2, (n_labels, bits))

    def make(n):
        labels = np.zeros((n, n_labels), dtype=np.int64)
        first = rng.integers(0, n_labels, n)
        labels[np.arange(n), first] = 1
        if multi:
            extra = rng.integers(0, n_labels, n)
            use = rng.random(n) < 0.5
            labels[np.arange(n)[use], extra[use]] = 1
        main = protos[first]
        noise = rng.random((n, bits)) < flip
        return np.where(noise, 1 - main, main), labels

    q, ql = make(n_query)
    b, bl = make(n_db)
    return q, b, ql, bl
