"""Retrieval metrics over Hamming ranking (docs/spec.md §7): MAP@K (ties by index, or tie-aware
expected AP), precision@N, precision-recall by Hamming radius, NDCG@K.

Codes: packed uint8 or unpacked (see dchml/retrieval/codes.py); labels: dense (n, c) 0/1. Labels given as
NumPy arrays (or CPU tensors) are moved to the device of the codes. Ranking is ascending by
(Hamming distance, database index) everywhere.
"""
from __future__ import annotations

import math

import torch

from .. import ops
from .codes import as_tensor, label_pair, packed_pair

TIES = ("index", "expected")


def check_map_options(topk, ties) -> int | None:
    """The option checks every MAP function shares (this module's, dchml.Index's and
    dchml.distributed's): topk a positive int or None (the whole database), ties one of TIES.
    Returns topk."""
    if ties not in TIES:
        raise ValueError(f"ties must be 'index' or 'expected', got {ties!r}")
    if topk is None:
        return None
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise TypeError(f"topk must be a positive int or None, got {topk!r}")
    if topk < 1:
        raise ValueError(f"topk must be a positive int or None, got {topk!r}")
    return topk


def _prepare(query_codes, db_codes, query_labels, db_labels):
    q, d, bits = packed_pair(query_codes, db_codes)
    ops.require_same_device(query_codes=q, db_codes=d)
    if q.shape[0] == 0:
        raise ValueError("query_codes has no rows")
    if d.shape[0] == 0:
        raise ValueError("db_codes has no rows (an empty database has no ranking to score)")
    ql, dl = label_pair(query_labels, db_labels, q.shape[0], d.shape[0])
    return q, d, bits, ql.to(q.device), dl.to(q.device)


def _dense_labels(labels, name, device):
    x = as_tensor(labels, name)
    return x.to(device=device, dtype=torch.float32)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, *, topk=5000, ties="index",
                           return_per_query=False):
    """MAP@topk, exactly docs/spec.md §7 (paper eq. 19).

    AP@K = (1/N_K) sum_{i<=K} rel_i * precision@i, N_K = relevant items in the top K; a query with
    N_K = 0 has AP 0 and still counts in the mean. topk=None ranks the whole database; a topk
    larger than the database is clamped to it. Relevant = sharing at least one label.
    ties="index": ties broken by database index (deterministic, stable).
    ties="expected": the exact expectation of AP@K over uniformly random orders inside each group
    of tied distances (McSherry & Najork, ECIR 2008), which removes tie luck from short codes.
    Returns a float, or (float, per-query AP float64 tensor) with return_per_query=True.
    """
    topk = check_map_options(topk, ties)
    q, d, bits, ql, dl = _prepare(query_codes, db_codes, query_labels, db_labels)
    k = d.shape[0] if topk is None else min(topk, max(1, d.shape[0]))
    ap = ops.hamming_average_precision(q, d, bits, k, ql, dl, ties == "expected")
    mean = float(ap.mean())
    return (mean, ap) if return_per_query else mean


def _ranked_relevance(q, d, bits, ql, dl, k):
    dist, index = ops.hamming_topk(q, d, bits, k)
    return ops.relevance(ql, dl, index)


def precision_at_n(query_codes, db_codes, query_labels, db_labels, ns):
    """Mean over queries of the fraction of relevant items among the first N, for each N in ns.

    Returns float64 (len(ns),). Each N must be in [1, database size].
    """
    q, d, bits, ql, dl = _prepare(query_codes, db_codes, query_labels, db_labels)
    ns = [int(n) for n in (ns if hasattr(ns, "__iter__") else [ns])]
    if not ns:
        raise ValueError("ns is empty")
    for n in ns:
        if not 1 <= n <= d.shape[0]:
            raise ValueError(f"every N in ns must be in [1, {d.shape[0]}] (the database size), got {n}")
    rel = _ranked_relevance(q, d, bits, ql, dl, max(ns)).to(torch.float64)
    hits = rel.cumsum(dim=1)
    out = torch.stack([(hits[:, n - 1] / n).mean() for n in ns])
    return out.cpu()


def pr_curve(query_codes, db_codes, query_labels, db_labels, average="macro"):
    """Precision and recall of hash lookup at Hamming radius r = 0..bits (items with d <= r).

    average="macro": per-query precision and recall, averaged over all queries (a query that
    retrieves nothing at radius r has precision 0; one with no relevant item has recall 0).
    average="micro": pools (query, item) pairs over all queries before dividing.
    Returns (precision, recall), float64 tensors of shape (bits + 1,).
    """
    if average not in ("macro", "micro"):
        raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
    q, d, bits, ql, dl = _prepare(query_codes, db_codes, query_labels, db_labels)
    hist_all, hist_rel = ops.hamming_histogram_relevant(q, d, bits, ql, dl)
    retrieved = hist_all.cumsum(dim=1).to(torch.float64)
    hits = hist_rel.cumsum(dim=1).to(torch.float64)
    relevant = hist_rel.sum(dim=1, keepdim=True).to(torch.float64)
    if average == "micro":
        r_all, h_all, rel_all = retrieved.sum(0), hits.sum(0), relevant.sum()
        precision = torch.where(r_all > 0, h_all / r_all.clamp_min(1), 0.0)
        recall = h_all / rel_all if rel_all > 0 else torch.zeros_like(h_all)
    else:
        precision = torch.where(retrieved > 0, hits / retrieved.clamp_min(1), 0.0).mean(0)
        recall = torch.where(relevant > 0, hits / relevant.clamp_min(1), 0.0).mean(0)
    return precision.cpu(), recall.cpu()


def ndcg_at_k(query_codes, db_codes, query_labels, db_labels, k):
    """Mean NDCG@k: relevance = number of shared labels, gain 2^rel - 1, discount log2(i + 1).

    The ideal DCG ranks the WHOLE database by relevance (the usual definition), so a ranking that
    misses highly relevant items anywhere in the database scores below 1. Queries whose ideal
    DCG is 0 (no item shares a label) score 0.
    """
    q, d, bits, ql, dl = _prepare(query_codes, db_codes, query_labels, db_labels)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d.shape[0]:
        raise ValueError(f"k must be an int in [1, {d.shape[0]}] (the database size), got {k!r}")
    qlab = _dense_labels(query_labels, "query_labels", q.device)
    dlab = _dense_labels(db_labels, "db_labels", q.device)
    _, index = ops.hamming_topk(q, d, bits, k)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=q.device, dtype=torch.float64))
    scores = torch.empty(q.shape[0], dtype=torch.float64, device=q.device)
    step = max(1, (1 << 24) // max(d.shape[0], k * dlab.shape[1]))
    for s in range(0, q.shape[0], step):
        qs = qlab[s:s + step]
        got = (qs[:, None, :] * dlab[index[s:s + step]]).sum(dim=2).to(torch.float64)
        dcg = ((torch.pow(2.0, got) - 1) * discount).sum(dim=1)
        every = qs @ dlab.T  # (chunk, ndb) shared-label counts, bounded by the chunk size
        best = torch.topk(every, k, dim=1).values.to(torch.float64)
        idcg = ((torch.pow(2.0, best) - 1) * discount).sum(dim=1)
        scores[s:s + step] = torch.where(idcg > 0, dcg / idcg.clamp_min(math.ulp(1.0)), 0.0)
    return float(scores.mean())
