"""The identity of a data set, so that a checkpoint knows what it was trained on.

- `data_fingerprint(data)`: {"content": sha256 of the image, text and label arrays (dtype, shape
  and bytes of each), "split": sha256 of query_idx, retrieval_idx and train_idx}, as hex. It is
  taken of the loaded `CrossModalData` (after dtype conversion and dropping unlabeled rows), so
  the same items from a .mat or an .npz copy hash alike. Hashed in chunks, without copies: about
  as fast as sha256 itself (~1-2 GB/s per core).
- `row_hashes(data, rows)`: a 64-bit hash (blake2b) of each item's image and text bytes, int64.
  A checkpoint keeps them for its training items, so that overlap with the queries of ANOTHER
  file (a re-export, a shuffled copy) can still be counted. Image and text are hashed together:
  identical tag vectors are common in real data (many items share the same few tags), so a
  text-only match would flag items that were never trained on.
- `trained_items(saved, data, rows)`: how many of `data`'s `rows` are items a checkpoint trained
  on: by index when the content fingerprint matches, otherwise by row hash.

Images streamed from disk (an ImageSource) are identified by each item's file name and size (or
HDF5 array and position) instead of their pixels, which are never all in memory. A missing
modality (single-modality data) is hashed as absent; row hashes then cover the present one.

Fingerprints are cached on the data object, keyed by each tensor's storage and version counter,
so an in-place change of the arrays is noticed.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

_CHUNK = 64 << 20
_CONTENT = ("image", "text", "labels")
_SPLIT = ("query_idx", "retrieval_idx", "train_idx")


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def _hash_tensors(data, names) -> str:
    h = hashlib.sha256()
    for name in names:
        value = getattr(data, name)
        if value is None:  # a modality single-modality data does not have
            h.update(f"{name}:absent\n".encode())
            continue
        if not _is_tensor(value):  # images streamed from disk
            h.update(f"{name}:streamed:{len(value)}\n".encode())
            for key in value.item_keys():
                h.update(key + b"\n")
            continue
        array = value.detach().cpu().contiguous().numpy()
        h.update(f"{name}:{array.dtype.str}:{array.shape}\n".encode())
        flat = array.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, _CHUNK):
            h.update(flat[start:start + _CHUNK])
    return h.hexdigest()


def _cached(data, key, compute):
    """compute() once per (data object, key, tensors' storage and version)."""
    stamp = tuple((t.data_ptr(), t._version, tuple(t.shape)) if _is_tensor(t) else
                  None if t is None else (id(t), len(t)) for t in (getattr(data, n) for n in _CONTENT + _SPLIT))
    cache = data.__dict__.setdefault("_identity_cache", {})  # frozen dataclass: plain dict access
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = compute()
    cache[key] = (stamp, value)
    return value


def data_fingerprint(data) -> dict:
    """{"content": hex sha256 of the arrays, "split": hex sha256 of the split}."""
    return _cached(data, "fingerprint", lambda: {"content": _hash_tensors(data, _CONTENT),
                                                  "split": _hash_tensors(data, _SPLIT)})


def row_hashes(data, rows) -> torch.Tensor:
    """int64 (len(rows),): a 64-bit hash of each listed item's image and text bytes (of the
    modalities the data has)."""
    rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
    if data.image is None:
        image_bytes = lambda r: b""  # noqa: E731
    elif _is_tensor(data.image):
        image = data.image.detach().cpu().contiguous().numpy()
        image_bytes = lambda r: image[r].tobytes()  # noqa: E731
    else:
        keys = dict(zip(rows.tolist(), data.image.item_keys(rows.numpy())))
        image_bytes = keys.__getitem__
    text = None if data.text is None else data.text.detach().cpu().contiguous().numpy()
    out = np.empty(rows.numel(), dtype=np.int64)
    for i, r in enumerate(rows.tolist()):
        h = hashlib.blake2b(image_bytes(r), digest_size=8)
        if text is not None:
            h.update(text[r].tobytes())
        out[i] = int.from_bytes(h.digest(), "little", signed=True)
    return torch.from_numpy(out)


def identity(data, train_idx) -> dict:
    """The entries a checkpoint keeps about its data, besides name, n and train_idx."""
    train_idx = torch.as_tensor(train_idx, dtype=torch.int64)
    key = ("train_rows", hashlib.sha256(train_idx.numpy().tobytes()).hexdigest())
    return {"fingerprint": dict(data_fingerprint(data)),
            "train_row_hashes": _cached(data, key, lambda: row_hashes(data, train_idx)).clone(),
            "source": None if getattr(data, "source", None) is None else dict(data.source)}


def difference(saved: dict, data) -> str | None:
    """Why `data` is not the data of a checkpoint's "data" entry `saved`, or None if it is."""
    fp, theirs = data_fingerprint(data), saved.get("fingerprint") or {}
    if theirs.get("content") != fp["content"]:
        return (f"it was trained on different data ({saved.get('name')!r}, n={saved.get('n')}, content sha256 "
                f"{str(theirs.get('content'))[:12]}; this is {data.name!r}, n={data.n}, content sha256 "
                f"{fp['content'][:12]})")
    if theirs.get("split") != fp["split"]:
        return (f"it was trained on the same arrays with another split (split sha256 "
                f"{str(theirs.get('split'))[:12]}; this split {fp['split'][:12]})")
    return None


def trained_items(saved: dict, data, rows) -> int:
    """How many of `data`'s items at `rows` are among the training items of checkpoint entry `saved`."""
    rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
    if (saved.get("fingerprint") or {}).get("content") == data_fingerprint(data)["content"]:
        return int(torch.isin(rows, torch.as_tensor(saved["train_idx"], dtype=torch.int64)).sum())
    trained = torch.as_tensor(saved["train_row_hashes"], dtype=torch.int64)
    return int(torch.isin(row_hashes(data, rows), trained).sum())
