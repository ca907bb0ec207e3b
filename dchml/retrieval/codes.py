"""Binary codes and label sets as the ranker reads them: packing, unpacking, input normalisation.

Packed layout: bit j of a code goes to byte j // 8 at position j % 8, least significant first,
the layout of ``numpy.packbits(x, axis=1, bitorder="little")`` and of faiss binary codes.

Every ranking function accepts codes either packed (a uint8 array, ALWAYS read as packed) or
unpacked (bool, int8/16/32/64 or float; bit = value > 0, so ±1, {0, 1} and real-valued network
outputs all work), as torch tensors or NumPy arrays. Labels are dense (n, c) 0/1 matrices in any
integer, bool or float dtype; they are packed to one bit per category for the kernels.
"""
from __future__ import annotations

import numpy as np
import torch

_UNPACKED_DTYPES = (
    torch.bool, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
)
_LABEL_DTYPES = _UNPACKED_DTYPES + (torch.uint8,)
_BIT_WEIGHTS = {}


def as_tensor(x, name: str) -> torch.Tensor:
    """A torch view of `x` (torch tensor or NumPy array, memory-maps included), no copy if possible."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint16 or x.dtype == np.uint32 or x.dtype == np.uint64 or x.dtype.kind not in "biuf":
            raise TypeError(f"{name} has unsupported dtype {x.dtype}")
        arr = np.ascontiguousarray(x)
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only memory; we never write
            arr = np.array(arr)
        return torch.from_numpy(arr)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _weights(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _BIT_WEIGHTS:
        _BIT_WEIGHTS[key] = (2 ** torch.arange(8, dtype=torch.int32, device=device)).to(torch.uint8)
    return _BIT_WEIGHTS[key]


_CHUNK = 1 << 16  # rows per packing step: bounds the temporaries to a few MiB


def _pack_rows(x: torch.Tensor, to_bits) -> torch.Tensor:
    """(n, k) values -> (n, ceil(k/8)) uint8, little bit order, bit = to_bits(rows); chunked so
    that no (n x k) temporary exists."""
    n, k = x.shape
    nbytes = (k + 7) // 8
    out = torch.empty((n, nbytes), dtype=torch.uint8, device=x.device)
    weights = _weights(x.device)
    for s in range(0, n, _CHUNK):
        bits = to_bits(x[s:s + _CHUNK])
        padded = torch.zeros((bits.shape[0], nbytes * 8), dtype=torch.uint8, device=x.device)
        padded[:, :k] = bits
        out[s:s + _CHUNK] = (padded.view(-1, nbytes, 8) * weights).sum(dim=2, dtype=torch.int32).to(torch.uint8)
    return out


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(n, k) bool -> (n, ceil(k/8)) uint8, little bit order."""
    return _pack_rows(bits, lambda rows: rows)


def pack_codes(codes) -> torch.Tensor:
    """Pack (n, k) codes into a uint8 tensor (n, ceil(k/8)), on the input's device.

    Bit = value > 0, so ±1, {0, 1}, bool and real values are accepted (here a uint8 input is read
    as 0/1 values, since the caller asks to pack it). NaN raises.
    """
    x = as_tensor(codes, "codes")
    if x.dim() != 2:
        raise ValueError(f"codes must be 2-D (n, k), got shape {tuple(x.shape)}")
    if x.dtype not in _LABEL_DTYPES:
        raise TypeError(f"codes has unsupported dtype {x.dtype}")
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError("codes contain NaN")
    return _pack_rows(x, lambda rows: rows > 0)


def unpack_codes(packed, bits: int) -> torch.Tensor:
    """Inverse of pack_codes: (n, ceil(bits/8)) uint8 -> (n, bits) float32 of ±1 (float32 so the
    result feeds matrix products and losses directly)."""
    p = as_tensor(packed, "packed")
    if p.dtype != torch.uint8 or p.dim() != 2:
        raise ValueError(f"packed must be a 2-D uint8 array, got {p.dim()}-D {p.dtype}")
    bits = int(bits)
    if bits < 1 or (bits + 7) // 8 != p.shape[1]:
        raise ValueError(f"bits={bits} does not fit packed rows of {p.shape[1]} bytes "
                         f"(need ceil(bits/8) == {p.shape[1]})")
    shifts = torch.arange(8, dtype=torch.uint8, device=p.device)
    unpacked = (p.unsqueeze(2) >> shifts) & 1
    unpacked = unpacked.reshape(p.shape[0], -1)[:, :bits]
    return unpacked.to(torch.float32) * 2 - 1


def as_packed(codes, name: str, bits: int | None = None) -> tuple[torch.Tensor, int]:
    """Packed uint8 (n, ceil(bits/8)) contiguous view of `codes`, and the code length in bits.

    uint8 input is read as packed (its length is `bits`, or 8 bytes per byte when not given);
    any other supported dtype is read as unpacked codes of length shape[1].
    """
    x = as_tensor(codes, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, k) codes or (n, bytes) packed codes, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        nbytes = x.shape[1]
        if bits is None:
            bits = 8 * nbytes
        if bits < 1 or (bits + 7) // 8 != nbytes:
            raise ValueError(f"{name} is packed with {nbytes} bytes per row, which cannot hold {bits}-bit codes")
        return x.contiguous(), int(bits)
    if x.dtype not in _UNPACKED_DTYPES:
        raise TypeError(f"{name} has unsupported dtype {x.dtype} (use packed uint8, bool, signed "
                        "integers or floats)")
    if bits is not None and x.shape[1] != bits:
        raise ValueError(f"{name} has {x.shape[1]}-bit codes, expected {bits}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has zero-length codes")
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN")
    return _pack_rows(x, lambda rows: rows > 0), int(x.shape[1])


def packed_pair(query, db, bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Normalise a (query, database) pair to packed codes of one common length."""
    q_is_packed = as_tensor(query, "query").dtype == torch.uint8
    d_is_packed = as_tensor(db, "db").dtype == torch.uint8
    if bits is None and q_is_packed != d_is_packed:
        # Take the length from the unpacked side so a packed partner is read with it.
        bits = (as_tensor(db, "db") if q_is_packed else as_tensor(query, "query")).shape[-1]
    q, qbits = as_packed(query, "query", bits)
    d, dbits = as_packed(db, "db", bits)
    if qbits != dbits:
        raise ValueError(f"query and db code lengths differ: {qbits} vs {dbits} bits")
    return q, d, qbits


def as_label_bits(labels, name: str, rows: int) -> tuple[torch.Tensor, int]:
    """Dense (n, c) 0/1 labels -> packed uint8 (n, ceil(c/8)) and c; checks rows and values."""
    x = as_tensor(labels, name)
    if x.dim() == 1:
        raise ValueError(f"{name} must be dense 2-D (n, c) 0/1 labels, got a 1-D array of shape "
                         f"{tuple(x.shape)} (one-hot encode class indices first)")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, c), got shape {tuple(x.shape)}")
    if x.shape[0] != rows:
        raise ValueError(f"{name} has {x.shape[0]} rows, but its codes have {rows}")
    if x.dtype not in _LABEL_DTYPES:
        raise TypeError(f"{name} has unsupported dtype {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has no label columns")

    if x.device.type == "cpu" and x.dtype in (torch.bool, torch.uint8, torch.int8) and x.numel() > 0:
        # Fast path for the usual label dtypes: a min/max scan validates 0/1 without temporaries,
        # then NumPy packs the bytes directly (same little-endian layout, ~10x faster than the
        # chunked torch packing over 1M x 21 labels). Bad values fall through to the checked path
        # below, which names the offending value.
        a = x.contiguous().numpy()
        if a.dtype == np.bool_ or (int(a.min()) >= 0 and int(a.max()) <= 1):
            return torch.from_numpy(np.packbits(a.view(np.bool_), axis=1, bitorder="little")), int(x.shape[1])

    def checked(rows):
        nonzero = rows != 0
        if rows.dtype != torch.bool:
            bad = nonzero & (rows != 1)  # NaN is != 0 and != 1
            if bool(bad.any()):
                raise ValueError(f"{name} must be 0/1, found the value {rows[bad][0].item()}")
        return nonzero

    return _pack_rows(x, checked), int(x.shape[1])


def label_pair(query_labels, db_labels, nq: int, ndb: int) -> tuple[torch.Tensor, torch.Tensor]:
    ql, qc = as_label_bits(query_labels, "query_labels", nq)
    dl, dc = as_label_bits(db_labels, "db_labels", ndb)
    if qc != dc:
        raise ValueError(f"query_labels and db_labels have different numbers of categories: {qc} vs {dc}")
    return ql, dl
