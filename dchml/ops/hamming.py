"""The Hamming ranker operators: thin wrappers that check devices and ranges, then call
`torch.ops.dchml.*`, and their fake kernels for torch.compile."""
from __future__ import annotations

import torch

from .checks import require_same_device


# --- Hamming ranker ops -----------------------------------------------------------------------
# Inputs here are already normalised by dchml/retrieval/codes.py: packed uint8 codes (n, ceil(bits/8)) and
# packed uint8 labels (n, ceil(c/8)). These wrappers check devices and ranges, then call the op.


def _check_packed(name: str, t: torch.Tensor, bits: int) -> None:
    if t.dtype != torch.uint8 or t.dim() != 2 or t.shape[1] != (bits + 7) // 8:
        raise ValueError(f"{name} must be packed uint8 (n, {(bits + 7) // 8}) for {bits}-bit codes, "
                         f"got {t.dim()}-D {t.dtype} of shape {tuple(t.shape)}")


MAX_BITS = 65535  # the longest code the ranker takes (kMaxBits in csrc/core/hamming.h)
MAX_CUDA_BITS = 1024  # ... on a GPU (kMaxCudaBits in csrc/ops/cuda/hamming_kernel.cu)


def _check_pair(query: torch.Tensor, db: torch.Tensor, bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    _check_packed("query", query, bits)
    _check_packed("db", db, bits)
    require_same_device(query=query, db=db)


def hamming_distance(query: torch.Tensor, db: torch.Tensor, bits: int) -> torch.Tensor:
    _check_pair(query, db, bits)
    return torch.ops.dchml.hamming_distance(query, db, bits)


def hamming_histogram(query: torch.Tensor, db: torch.Tensor, bits: int) -> torch.Tensor:
    _check_pair(query, db, bits)
    return torch.ops.dchml.hamming_histogram(query, db, bits)


def hamming_histogram_relevant(query, db, bits, query_labels, db_labels):
    _check_pair(query, db, bits)
    require_same_device(query=query, query_labels=query_labels, db_labels=db_labels)
    return torch.ops.dchml.hamming_histogram_relevant(query, db, bits, query_labels, db_labels)


def hamming_topk(query: torch.Tensor, db: torch.Tensor, bits: int, k: int):
    _check_pair(query, db, bits)
    if not 1 <= k <= db.shape[0]:
        raise ValueError(f"k must be in [1, {db.shape[0]}] (the database size), got {k}")
    return torch.ops.dchml.hamming_topk(query, db, bits, k)


def relevance(query_labels: torch.Tensor, db_labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(nq, K) uint8: does query i share a label with its r-th neighbour; chunked over queries."""
    out = torch.empty(index.shape, dtype=torch.uint8, device=index.device)
    step = max(1, (1 << 26) // max(1, index.shape[1] * db_labels.shape[1]))
    for s in range(0, index.shape[0], step):
        idx = index[s:s + step]
        both = query_labels[s:s + step, None, :] & db_labels[idx]
        out[s:s + step] = (both != 0).any(dim=2)
    return out


def hamming_average_precision(query, db, bits, k, query_labels, db_labels, expected):
    """Per-query AP@k (float64). CPU: one fused pass. CUDA: top-k kernel, then relevance and AP
    on the GPU (ties by index) or, for the tie-aware expectation, the AP arithmetic on the CPU."""
    _check_pair(query, db, bits)
    require_same_device(query=query, query_labels=query_labels, db_labels=db_labels)
    if k < 1:
        raise ValueError(f"topk must be >= 1, got {k}")
    nq, ndb = query.shape[0], db.shape[0]
    if ndb == 0 or nq == 0:
        return torch.zeros(nq, dtype=torch.float64, device=query.device)
    k = min(k, ndb)
    if query.device.type == "cpu":
        return torch.ops.dchml.hamming_average_precision(query, db, bits, k, query_labels, db_labels, expected)
    dist, index = torch.ops.dchml.hamming_topk(query, db, bits, k)
    rel = relevance(query_labels, db_labels, index)
    if not expected:
        relf = rel.to(torch.float64)
        hits = relf.cumsum(dim=1)
        ranks = torch.arange(1, k + 1, device=query.device, dtype=torch.float64)
        total = relf.sum(dim=1)
        return torch.where(total > 0, (relf * hits / ranks).sum(dim=1) / total.clamp_min(1), 0.0)
    hist_all, hist_rel = torch.ops.dchml.hamming_histogram_relevant(query, db, bits, query_labels, db_labels)
    cut = dist[:, -1:].long()
    cut_total = hist_all.gather(1, cut)[:, 0]
    cut_relevant = hist_rel.gather(1, cut)[:, 0]
    return hamming_ap_from_ranking(dist, rel, cut_total, cut_relevant, True).to(query.device)


def hamming_ap_from_ranking(dist, relevant, cut_total, cut_relevant, expected: bool) -> torch.Tensor:
    """Per-query AP (float64, on the CPU) from a known top-K list: distances (nq, K), relevance
    (nq, K), and the size / relevant count of the whole tie group at the cut (used when
    `expected`). The same arithmetic as the fused CPU path, so callers that assemble a top-K
    themselves (chunked index, sharded evaluation) get its results bit for bit."""
    return torch.ops.dchml.hamming_ap_from_ranking(
        dist.to("cpu", torch.int32).contiguous(), relevant.to("cpu", torch.uint8).contiguous(),
        cut_total.to("cpu", torch.int64).contiguous(), cut_relevant.to("cpu", torch.int64).contiguous(),
        expected)


def hamming_isa(request: str = "") -> str:
    """The CPU engine's SIMD path ('avx512', 'avx2' or 'portable'); a name forces that path
    (clamped to what the CPU supports), 'best' restores the default."""
    if request == "best":
        request = torch.ops.dchml._hamming_best_isa()
    return torch.ops.dchml._hamming_isa(request)


@torch.library.register_fake("dchml::hamming_distance")
def _(query, db, bits):
    return query.new_empty((query.shape[0], db.shape[0]), dtype=torch.int32)


@torch.library.register_fake("dchml::hamming_histogram")
def _(query, db, bits):
    return query.new_empty((query.shape[0], bits + 1), dtype=torch.int64)


@torch.library.register_fake("dchml::hamming_histogram_relevant")
def _(query, db, bits, query_labels, db_labels):
    shape = (query.shape[0], bits + 1)
    return query.new_empty(shape, dtype=torch.int64), query.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("dchml::hamming_topk")
def _(query, db, bits, k):
    shape = (query.shape[0], k)
    return query.new_empty(shape, dtype=torch.int32), query.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("dchml::hamming_average_precision")
def _(query, db, bits, k, query_labels, db_labels, expected):
    return query.new_empty((query.shape[0],), dtype=torch.float64)


@torch.library.register_fake("dchml::hamming_ap_from_ranking")
def _(dist, relevant, cut_total, cut_relevant, expected):
    return dist.new_empty((dist.shape[0],), dtype=torch.float64)


