"""Hamming search: the functional ranking API (distances, histograms, exact top-k) and
`HammingIndex`, a database of packed codes that can be searched, evaluated, moved and saved.

Saved format (`HammingIndex.save`): an uncompressed NumPy ``.npz`` archive holding
  codes    uint8 (n, ceil(bits/8))  packed codes, numpy.packbits(bitorder="little") layout
  bits     int64 0-d                code length
  version  int64 0-d                format version (1)
readable with ``numpy.load(path, allow_pickle=False)`` alone; written to a temporary file in the
same folder and moved into place with os.replace, so a crash never leaves a half-written index.
`load` checks every member's CRC-32 first and refuses a damaged file (dchml.io.integrity).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from .. import ops
from ..io.atomic import write_atomic
from ..io.integrity import is_zip_file, verify_zip
from ..ops.library import cuda_built
from .codes import as_packed, label_pair, packed_pair
from .metrics import check_map_options

_FORMAT_VERSION = 1
_CHUNK_ROWS = 1 << 22  # rows of a memory-mapped database brought into memory at a time


def hamming_distance(query, db) -> torch.Tensor:
    """All pairwise Hamming distances, int32 (nq, ndb). For small problems: the output is the
    full matrix (use hamming_topk or the metrics for large ones)."""
    q, d, bits = packed_pair(query, db)
    return ops.hamming_distance(q, d, bits)


def hamming_histogram(query, db, bits: int | None = None) -> torch.Tensor:
    """int64 (nq, bits + 1): per query, how many database codes lie at each distance. Fused: no
    (nq x ndb) matrix is formed. `bits` gives the length of packed codes (default 8 per byte)."""
    q, d, bits = packed_pair(query, db, bits)
    return ops.hamming_histogram(q, d, bits)


def hamming_topk(query_packed, db_packed, k: int):
    """Exact k nearest database codes per query: (int32 (nq, k) distances, int64 (nq, k) indices),
    ascending by (distance, index), identical on CPU and GPU; 1 <= k <= database size."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    q, d, bits = packed_pair(query_packed, db_packed)
    return ops.hamming_topk(q, d, bits, int(k))


def _merge_topk(dist_a, index_a, dist_b, index_b, k):
    """Merge two (distance, index)-sorted lists whose indices in a all precede those in b."""
    dist = torch.cat([dist_a, dist_b], dim=1)
    index = torch.cat([index_a, index_b], dim=1)
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return dist.gather(1, order), index.gather(1, order)


class HammingIndex:
    """A database of `bits`-bit codes for exact Hamming search.

    add(codes) appends codes (packed uint8 or unpacked, torch or NumPy). A packed uint8
    ``numpy.memmap`` (e.g. ``np.load(path, mmap_mode="r")``) is kept memory-mapped, not copied,
    and searched chunk by chunk, so databases larger than memory work.
    """

    def __init__(self, bits: int):
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= ops.MAX_BITS:
            raise ValueError(f"bits must be an int in [1, {ops.MAX_BITS}], got {bits!r}")
        self.bits = int(bits)
        self.nbytes = (self.bits + 7) // 8
        self.device = torch.device("cpu")
        self._parts: list = []  # torch uint8 tensors on self.device, or numpy memmaps

    # ----------------------------------------------------------------------------- contents
    @property
    def ntotal(self) -> int:
        return sum(int(p.shape[0]) for p in self._parts)

    def __len__(self) -> int:
        return self.ntotal

    def add(self, codes) -> "HammingIndex":
        if isinstance(codes, np.memmap):
            if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.nbytes:
                raise ValueError(f"a memory-mapped database must be packed uint8 (n, {self.nbytes}), "
                                 f"got {codes.dtype} of shape {codes.shape}")
            self._parts.append(codes)
            return self
        packed, _ = as_packed(codes, "codes", self.bits)
        self._parts.append(packed.to(self.device).contiguous())
        return self

    def _chunks(self, device):
        """(offset, packed tensor on `device`) pieces of the database, in index order."""
        offset = 0
        for part in self._parts:
            if isinstance(part, np.memmap):
                for s in range(0, part.shape[0], _CHUNK_ROWS):
                    piece = torch.from_numpy(np.array(part[s:s + _CHUNK_ROWS]))
                    yield offset + s, piece.to(device)
            else:
                yield offset, part.to(device)
            offset += int(part.shape[0])

    def _single(self):
        """The database as one tensor when it is held in memory as one piece, else None."""
        if len(self._parts) == 1 and not isinstance(self._parts[0], np.memmap):
            return self._parts[0]
        return None

    def to(self, device) -> "HammingIndex":
        device = torch.device(device)
        if device.type == "cuda" and not cuda_built():
            raise RuntimeError("HammingIndex.to(cuda): dchml was built without CUDA support")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"HammingIndex supports cpu and cuda devices, got {device}")
        self._parts = [p if isinstance(p, np.memmap) else p.to(device) for p in self._parts]
        self.device = device
        return self

    # ------------------------------------------------------------------------------- search
    def _queries(self, queries):
        q, _ = as_packed(queries, "queries", self.bits)
        return q.to(self.device)

    def search(self, queries, k: int):
        """Exact top-k: (int32 (nq, k) distances, int64 (nq, k) indices), ascending by
        (distance, index); 1 <= k <= ntotal."""
        n = self.ntotal
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ValueError(f"k must be an int in [1, {n}] (the index size), got {k!r}")
        q = self._queries(queries)
        best = None
        for offset, chunk in self._chunks(self.device):
            if chunk.shape[0] == 0:
                continue
            dist, index = ops.hamming_topk(q, chunk, self.bits, min(int(k), chunk.shape[0]))
            index = index + offset
            best = (dist, index) if best is None else _merge_topk(*best, dist, index, int(k))
        return best

    def mean_average_precision(self, queries, query_labels, db_labels, *, topk=5000, ties="index",
                               return_per_query=False):
        """MAP@topk of `queries` against this index (see dchml.mean_average_precision: the same
        keyword arguments and checks, the database being the index)."""
        topk = check_map_options(topk, ties)
        n = self.ntotal
        if n == 0:
            raise ValueError("the index is empty")
        k = n if topk is None else min(topk, n)
        q = self._queries(queries)
        ql, dl = label_pair(query_labels, db_labels, q.shape[0], n)
        ql, dl = ql.to(self.device), dl.to(self.device)
        single = self._single()
        if single is not None:
            ap = ops.hamming_average_precision(q, single, self.bits, k, ql, dl, ties == "expected")
        else:
            dist, index = self.search(q, k)
            rel = ops.relevance(ql, dl, index)
            cut = dist[:, -1:].long()
            cut_total = torch.zeros(q.shape[0], dtype=torch.int64, device=self.device)
            cut_relevant = torch.zeros_like(cut_total)
            if ties == "expected":  # sizes of the tie group at the cut, summed over chunks
                for offset, chunk in self._chunks(self.device):
                    h_all, h_rel = ops.hamming_histogram_relevant(
                        q, chunk, self.bits, ql, dl[offset:offset + chunk.shape[0]])
                    cut_total += h_all.gather(1, cut)[:, 0]
                    cut_relevant += h_rel.gather(1, cut)[:, 0]
            ap = ops.hamming_ap_from_ranking(dist, rel, cut_total, cut_relevant, ties == "expected")
        mean = float(ap.mean())
        return (mean, ap) if return_per_query else mean

    # -------------------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write the index as an .npz archive (format in this module's docstring), atomically."""
        def write(out):
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, value in (("bits", self.bits), ("version", _FORMAT_VERSION)):
                    with zf.open(name + ".npy", "w") as f:
                        np.lib.format.write_array(f, np.asarray(value, dtype=np.int64), allow_pickle=False)
                with zf.open("codes.npy", "w", force_zip64=True) as f:
                    header = {"descr": "|u1", "fortran_order": False, "shape": (self.ntotal, self.nbytes)}
                    np.lib.format.write_array_header_1_0(f, header)
                    for _, chunk in self._chunks("cpu"):  # streamed: memory-mapped parts stay on disk
                        f.write(chunk.contiguous().numpy().tobytes())

        write_atomic(os.fspath(path), write)

    @classmethod
    def load(cls, path, device="cpu") -> "HammingIndex":
        """Read an index written by save(); raises a clear error for a missing or corrupt file."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no index file at {path}")
        if not is_zip_file(path):  # np.load would otherwise try other formats
            raise ValueError(f"{path} is not a readable dchml index (.npz): not a zip archive")
        verify_zip(path, "index", "save it again from its codes, or restore it from a copy")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"codes", "bits", "version"} - set(data.files)
                if missing:
                    raise ValueError(f"{path} is not a dchml index: missing {sorted(missing)}")
                version = int(data["version"])
                bits = int(data["bits"])
                codes = data["codes"]
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ValueError(f"{path} is not a readable dchml index (.npz): {exc}") from exc
        if version != _FORMAT_VERSION:
            raise ValueError(f"{path} has index format version {version}, this dchml reads {_FORMAT_VERSION}")
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != (bits + 7) // 8:
            raise ValueError(f"{path} is corrupt: codes {codes.dtype} {codes.shape} do not fit {bits} bits")
        index = cls(bits)
        index.add(torch.from_numpy(codes))
        return index.to(device)


__all__ = ["hamming_distance", "hamming_histogram", "hamming_topk", "HammingIndex"]
