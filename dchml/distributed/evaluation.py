"""Exact sharded retrieval evaluation over torch.distributed (Gloo on CPUs, NCCL on GPUs).

Every rank of a process group holds ONE shard of the database; the shards concatenated in rank
order define the global database and its index order. `hamming_topk` and
`mean_average_precision` return, on every rank, exactly what the single-process
`dchml.hamming_topk` / `dchml.mean_average_precision` return on the concatenated database: same
indices, same distances, same per-query AP (bit for bit), ties included.

How (per block of queries; see docs/distributed.md for the volumes):
1. each rank ranks its shard locally: top-K by (distance, index) with the fused `hamming_topk`;
2. each rank all-gathers the per-query histogram of ITS top-K distances ((bits + 1) counts per
   query and rank, independent of the database size). From these every rank knows, for each of
   its candidates, how many candidates of the union precede it in the global (distance, global
   index) order: that number is the candidate's exact global rank whenever it is < K, and >= K
   otherwise (proof in docs/distributed.md), so each rank knows which of its candidates are in
   the global top K, and where;
3. each rank writes what the answer needs (global index, or one relevance bit) at those global
   ranks of a (queries x K) buffer, zeros elsewhere; one all_reduce(SUM) assembles it on every
   rank. Positions are owned by exactly one rank, so SUM is exact, even for bit-packed bytes
   (disjoint bits never carry).
4. every rank computes AP from the assembled list with the ranker's own `ap_from_ranking`, the
   function the single-process fused path calls, hence the same double. ties="expected" also
   needs the size and relevant count of the WHOLE tie group at the cut: two numbers per query
   from each shard's fused `hamming_histogram_relevant`, summed by one more all_reduce.
Communication per query: (W-1)(bits+1) int32 + ~K/4 bytes, independent of the database size.

Errors: inputs are validated on each rank, then the ranks agree (one tiny all_gather) before any
heavy work, so a bad input on one rank raises a clear exception on EVERY rank instead of leaving
the others blocked in a collective.
"""
from __future__ import annotations

import hashlib

import torch

from .. import ops
from ..retrieval.codes import as_label_bits, as_packed, as_tensor
from ..retrieval.metrics import TIES, check_map_options
from .group import Group, run_on_every_rank

__all__ = ["hamming_topk", "mean_average_precision"]

# Largest number of (query, candidate) entries one block of queries may hold in memory at once
# (indices + distances + relevance: ~16 bytes each, so ~128 MiB). All ranks derive the same query
# blocks from it, which the collectives require.
BLOCK_ELEMENTS = 1 << 23


# --- local input preparation --------------------------------------------------------------------


def _fingerprint(*tensors: torch.Tensor) -> int:
    """A 63-bit digest of tensors' bytes: cheap proof that every rank holds the same queries."""
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return int.from_bytes(h.digest(), "little") >> 1


def _packed(codes, name: str):
    """(packed uint8 codes, code length in bits or -1 when only the bytes say it). The ranker's
    rule: uint8 is read as packed, anything else as unpacked codes of length shape[1]."""
    is_packed = as_tensor(codes, name).dtype == torch.uint8
    packed, bits = as_packed(codes, name)
    return packed, (-1 if is_packed else bits)


class _Local:
    """One rank's validated inputs, packed (codes and, for MAP, labels)."""

    def __init__(self, query_codes, db_codes, k_requested, query_labels=None, db_labels=None,
                 with_labels=False):
        self.query, q_bits = _packed(query_codes, "query_codes")
        self.db, d_bits = _packed(db_codes, "db_shard_codes")
        if self.query.shape[1] != self.db.shape[1] or -1 not in (q_bits, d_bits) and q_bits != d_bits:
            raise ValueError(
                "query_codes and db_shard_codes have different code lengths: "
                f"{_describe(self.query, q_bits)} and {_describe(self.db, d_bits)}")
        ops.require_same_device(query_codes=self.query, db_shard_codes=self.db)
        if self.query.shape[0] == 0:
            raise ValueError("query_codes has no rows")
        self.known_bits = max(q_bits, d_bits)  # -1 when both sides came packed
        self.device = self.query.device
        self.nq, self.nbytes = self.query.shape
        self.n = self.db.shape[0]
        self.k_requested = k_requested
        self.query_labels = self.db_labels = None
        self.label_columns = -1
        if with_labels:
            ql, qc = as_label_bits(query_labels, "query_labels", self.nq)
            dl, dc = as_label_bits(db_labels, "db_shard_labels", self.n)
            if qc != dc:
                raise ValueError(f"query_labels has {qc} label columns but db_shard_labels has {dc}")
            self.query_labels, self.db_labels = ql.to(self.device), dl.to(self.device)
            self.query_words = _label_words(self.query_labels)
            self.db_words = _label_words(self.db_labels)
            self.label_columns = qc

    def metadata(self, ties_code: int) -> torch.Tensor:
        return torch.tensor(
            [self.nbytes, self.label_columns, self.nq, self.k_requested, ties_code, self.n, self.known_bits],
            dtype=torch.int64,
        )

    def query_fingerprint(self, bits: int) -> int:
        """Digest of the queries (and their labels) as the kernels read them: `bits`-bit codes."""
        parts = [_clear_padding(self.query, bits)]
        if self.query_labels is not None:
            parts.append(self.query_labels)
        return _fingerprint(*parts)


def _clear_padding(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed codes with the bits past `bits` in the last byte zeroed (the kernels ignore them,
    so must the check that all ranks hold the same queries)."""
    if bits < 0 or bits % 8 == 0 or packed.shape[1] == 0:
        return packed
    out = packed.clone()
    out[:, -1] &= (1 << (bits % 8)) - 1
    return out


def _describe(packed: torch.Tensor, bits: int) -> str:
    return f"{bits} bits" if bits >= 0 else f"{packed.shape[1]} packed bytes"


class _Agreed:
    """What all ranks agreed on: code length, query set, options, shard sizes and offsets."""

    _SAME = ("code length (packed bytes)", "label columns", "number of queries", "topk/k", "ties")

    def __init__(self, local: _Local, meta: torch.Tensor, rank: int, fn: str):
        meta = meta.cpu()
        for col, name in enumerate(self._SAME):
            values = meta[:, col].tolist()
            if len(set(values)) > 1:
                raise ValueError(
                    f"{fn}: {name} differs across ranks (in rank order: {values}); every rank must "
                    "pass the same queries, code length, label columns and options")
        # Codes given packed carry no length of their own: take it from any rank that gave them
        # unpacked (as the single-process ranker does for a packed/unpacked pair), else 8 per byte.
        known = sorted({b for b in meta[:, 6].tolist() if b >= 0})
        if len(known) > 1:
            raise ValueError(f"{fn}: code length differs across ranks: {known} bits")
        self.bits = known[0] if known else 8 * local.nbytes
        self.sizes = meta[:, 5].tolist()
        self.total = int(sum(self.sizes))
        self.offset = int(sum(self.sizes[:rank]))
        self.nq = local.nq
        self.width = self.bits + 1  # histogram bins: distances 0..bits


def _query_blocks(nq: int, per_query: int):
    step = max(1, BLOCK_ELEMENTS // max(1, per_query))
    for start in range(0, nq, step):
        yield start, min(nq, start + step)


def _wire_dtype(largest: int) -> torch.dtype:
    """The narrowest integer type Gloo and NCCL both reduce that holds 0..largest."""
    return torch.int32 if largest < 2**31 else torch.int64


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cumsum(x, dim) - x


# --- the exact global top-K, assembled from local top-Ks ---------------------------------------


class _Candidates:
    """This rank's candidates for one block of queries and their exact global ranks.

    local top-K: the first min(K, n_r) items of the shard by (distance, index). Every item of the
    global top K is among its shard's local top K (its local rank <= its global rank < K). For a
    candidate x, `rank` counts the candidates of ALL ranks that precede x in the global order:
    those at smaller distances, those at x's distance on lower ranks, and those before x on its own
    rank. If x is in the global top K, every item before x is too, hence is a candidate, and
    `rank` is x's exact global rank; if not, the whole global top K precedes x, so `rank` >= K.
    """

    def __init__(self, group: Group, agreed: _Agreed, local: _Local, lo: int, hi: int, k: int):
        q = local.query[lo:hi]
        nq = hi - lo
        k_local = min(k, local.n)
        dev = local.device

        def rank_locally():
            if k_local > 0:
                d, i = ops.hamming_topk(q, local.db, agreed.bits, k_local)
                d, i = d.to(dev, torch.int64), i.to(dev)
            else:
                d = torch.zeros(nq, 0, dtype=torch.int64, device=dev)
                i = torch.zeros(nq, 0, dtype=torch.int64, device=dev)
            hist = torch.zeros(nq, agreed.width, dtype=torch.int64, device=dev)
            hist.scatter_add_(1, d, torch.ones(1, dtype=torch.int64, device=dev).expand_as(d))
            return d, i, hist

        d, i, hist = run_on_every_rank(group, "local hamming_topk", rank_locally)
        # (world, nq, bits + 1); the counts are <= k, so int32 halves the bytes on the wire
        hists = group.all_gather(hist.to(_wire_dtype(k))).to(dev, torch.int64)
        total = hists.sum(0)
        before = (
            _exclusive_cumsum(total, 1)                     # smaller distances, all ranks
            + hists[: group.rank].sum(0)                    # same distance, lower ranks
            - _exclusive_cumsum(hist, 1)                    # (local position -> rank within group)
        )
        rank = before.gather(1, d)
        rank += torch.arange(d.shape[1], device=dev)
        # Candidates outside the global top K all go to one sink column, past every real one.
        # (Global ranks grow along the local list, so the kept ones are a prefix of each row.)
        self.slots = 8 * ((k + 7) // 8)
        self.rank = rank.masked_fill_(rank >= k, self.slots)
        self.local_index = i
        self.total_hist = total
        self.nq = nq
        self.device = dev

    def global_distances(self, k: int) -> torch.Tensor:
        """(nq, k) int32 distances of the global top K, read off the candidates' histogram (the
        union holds every item up to the cut, so its cumulative counts are exact below K): the
        distance steps up by one at each cumulative count."""
        steps = torch.cumsum(self.total_hist[:, :-1], 1).clamp_(max=k)
        marks = torch.zeros(self.nq, k + 1, dtype=torch.int32, device=self.device)
        marks.scatter_add_(1, steps, torch.ones(1, dtype=torch.int32, device=self.device).expand_as(steps))
        return torch.cumsum(marks[:, :k], 1, dtype=torch.int32)

    def scatter(self, values: torch.Tensor, k: int) -> torch.Tensor:
        """(nq, k) buffer with `values` of the candidates in the global top K at their global
        ranks and zeros elsewhere."""
        out = torch.zeros(self.nq, self.slots + 1, dtype=values.dtype, device=values.device)
        out.scatter_(1, self.rank, values)
        return out[:, :k]

    def scatter_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """Like `scatter` for 0/1 uint8 values, packed 8 per byte, least significant bit first:
        (nq, ceil(k/8)) uint8."""
        out = torch.zeros(self.nq, self.slots + 8, dtype=torch.uint8, device=bits.device)
        out.scatter_(1, self.rank, bits)
        grouped = out.view(self.nq, -1, 8)[:, :-1]
        shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
        return (grouped << shifts).sum(2, dtype=torch.uint8)  # disjoint bits: sum == or


def _unpack_bits(packed: torch.Tensor, k: int) -> torch.Tensor:
    """(nq, ceil(k/8)) uint8 -> (nq, k) uint8 0/1."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :k].contiguous()


def _label_words(packed_labels: torch.Tensor):
    """Packed label rows as one int32 / int64 word each when they fit (<= 32 / 64 categories:
    a smaller table to gather from), else None."""
    n, nbytes = packed_labels.shape
    if nbytes > 8:
        return None
    width, dtype = (4, torch.int32) if nbytes <= 4 else (8, torch.int64)
    padded = torch.zeros(n, width, dtype=torch.uint8, device=packed_labels.device)
    padded[:, :nbytes] = packed_labels
    return padded.view(dtype).view(n)


def _relevance(local: "_Local", lo: int, hi: int, index: torch.Tensor) -> torch.Tensor:
    """(nq, m) uint8: query shares a label with the shard item at `index` (nq, m). One word AND
    per pair when the labels fit in 64 bits (the common case); the ranker's bytewise test else."""
    if index.shape[1] == 0:
        return torch.zeros(index.shape, dtype=torch.uint8, device=index.device)
    if local.db_words is not None:
        both = local.db_words[index] & local.query_words[lo:hi, None]
        return torch.ne(both, 0).view(torch.uint8)
    return ops.relevance(local.query_labels[lo:hi], local.db_labels, index)


# --- public API ---------------------------------------------------------------------------------


def _check_k(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _setup(fn, group, query_codes, db_shard_codes, requested_k, ties="index", query_labels=None,
           db_shard_labels=None, with_labels=False):
    """Validate locally, then agree across ranks; raises on every rank if any rank is wrong.
    requested_k() checks the caller's options and returns its k (-1: the whole database)."""
    device = query_codes.device if isinstance(query_codes, torch.Tensor) else torch.device("cpu")
    g = Group(group, device)
    local, meta, error = None, None, None
    try:
        k_requested = requested_k()
        local = _Local(query_codes, db_shard_codes, k_requested, query_labels, db_shard_labels, with_labels)
        meta = local.metadata(TIES.index(ties))
    except Exception as exc:  # noqa: BLE001  (re-raised on every rank below)
        error = exc
    where = f"dchml.distributed.{fn}"
    g.raise_if_any_failed(error, where)
    metas = g.all_gather(meta)
    agreed = _Agreed(local, metas, g.rank, where)  # identical on all ranks: raises on all or none
    # With the code length agreed, check that every rank holds the same queries (a digest).
    digests = g.all_gather(torch.tensor([local.query_fingerprint(agreed.bits)], dtype=torch.int64))
    if len(set(digests[:, 0].tolist())) > 1:
        raise ValueError(f"{where}: query codes/labels (fingerprint) differ across ranks; every rank "
                         "must pass the same queries and query labels")
    return g, local, agreed


def hamming_topk(query_codes, db_shard_codes, k: int, group=None):
    """Exact top-k of the global (sharded) database, on every rank.

    Every rank passes the SAME queries and its own shard (possibly empty: shape (0, code length));
    the shards concatenated in rank order are the global database. Codes packed (uint8) or
    unpacked, as for `dchml.hamming_topk`. Returns (distances int32 (nq, k), global indices int64
    (nq, k)) ascending by (distance, global index), on the device of `query_codes`, identical on
    all ranks and identical to `dchml.hamming_topk` on the concatenated database. Raises on every
    rank if k < 1, k > the global database size, or the code lengths or queries differ across
    ranks. Collective: every rank of `group` (default: the default group) must call it.
    """
    g, local, agreed = _setup("hamming_topk", group, query_codes, db_shard_codes, lambda: _check_k(k, "k"))
    if k > agreed.total:
        raise ValueError(f"k must be in [1, {agreed.total}] (the global database size over {g.world} "
                         f"ranks, shard sizes {agreed.sizes}), got {k}")
    dists, idxs = [], []
    for lo, hi in _query_blocks(agreed.nq, max(k, agreed.width)):
        cand = _Candidates(g, agreed, local, lo, hi, k)
        wire = _wire_dtype(agreed.total)
        idx = g.all_reduce_sum(cand.scatter((cand.local_index + agreed.offset).to(wire), k))
        idxs.append(idx.to(local.device, torch.int64))
        dists.append(cand.global_distances(k))
    return torch.cat(dists), torch.cat(idxs)


def mean_average_precision(query_codes, db_shard_codes, query_labels, db_shard_labels, *, topk=5000,
                           ties: str = "index", return_per_query: bool = False, group=None):
    """MAP@topk of docs/spec.md §7 over a database sharded across the ranks of `group`.

    Same arguments and result as `dchml.mean_average_precision` on the concatenated database
    (shards in rank order; a shard may be empty), returned on every rank: MAP as a float, or
    (MAP, per-query AP float64 tensor) with return_per_query=True. Every rank passes the same
    queries and query labels. ties="index" ranks tied items by global index; ties="expected" is
    the exact expectation over random orders inside tie groups. topk=None ranks the whole
    database; a topk larger than the database is clamped to it. Collective: every rank of `group`
    (default: the default group) must call it with the same options.
    """
    def requested_k():
        topk_checked = check_map_options(topk, ties)
        return -1 if topk_checked is None else topk_checked

    g, local, agreed = _setup("mean_average_precision", group, query_codes, db_shard_codes, requested_k, ties,
                              query_labels, db_shard_labels, with_labels=True)
    k = agreed.total if topk is None else min(topk, agreed.total)
    if k == 0:  # an empty global database: nothing is retrieved, every AP is 0
        ap = torch.zeros(agreed.nq, dtype=torch.float64, device=local.device)
    else:
        blocks = [_average_precision(g, agreed, local, lo, hi, k, ties == "expected")
                  for lo, hi in _query_blocks(agreed.nq, max(k, agreed.width))]
        ap = torch.cat(blocks).to(local.device)
    mean = float(ap.mean())
    return (mean, ap) if return_per_query else mean


def _average_precision(g, agreed, local, lo, hi, k, expected):
    """Per-query AP of one block of queries: the global top-K relevance assembled on every rank,
    then the ranker's AP arithmetic on it."""
    cand = _Candidates(g, agreed, local, lo, hi, k)
    ql = local.query_labels[lo:hi]

    rel = run_on_every_rank(g, "relevance", lambda: _relevance(local, lo, hi, cand.local_index))
    relevant = _unpack_bits(g.all_reduce_sum(cand.scatter_bits(rel)), k)
    dist = cand.global_distances(k)
    nq = hi - lo
    cut_total = cut_relevant = torch.zeros(nq, dtype=torch.int64)
    if expected:
        # The tie group at the cut may extend past K: its full size and relevant count over the
        # WHOLE database (2 numbers per query and rank, summed).
        cut = dist[:, -1:].to(local.device, torch.int64)

        def cut_group():
            if local.n == 0:
                return torch.zeros(nq, 2, dtype=torch.int64, device=local.device)
            every, rel_hist = ops.hamming_histogram_relevant(local.query[lo:hi], local.db, agreed.bits,
                                                             ql, local.db_labels)
            return torch.cat([every.gather(1, cut), rel_hist.gather(1, cut)], 1)

        stats = g.all_reduce_sum(run_on_every_rank(g, "hamming_histogram_relevant", cut_group)).cpu()
        cut_total, cut_relevant = stats[:, 0], stats[:, 1]
    return ops.hamming_ap_from_ranking(dist, relevant, cut_total, cut_relevant, expected)
