"""The cross-modal data set (`CrossModalData`), its error type (`DataError`) and the
validation every loader goes through, so a bad file fails once, here, with a message that names
the source and the problem instead of failing later inside training."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


class DataError(ValueError):
    """A data file or array is missing, corrupt or inconsistent (the message says which and why)."""


class UnlabeledItemsError(DataError):
    """Some items have no label. The message names the Python option that drops them;
    `with_option` names another (the command line's --drop-unlabeled)."""

    def __init__(self, source: str, count: int, first: int, option: str = "drop_unlabeled=True"):
        self.source, self.count, self.first = source, count, first
        super().__init__(f"{source}: {count} rows have no label (first: row {first}); every item needs >= 1 "
                         f"label (load with {option} to drop them, as the paper's protocol does)")

    def with_option(self, option: str) -> "UnlabeledItemsError":
        return UnlabeledItemsError(self.source, self.count, self.first, option)


@dataclass(frozen=True)
class CrossModalData:
    """Paired image/text items with multi-hot labels and the query/retrieval/train split.

    image:         (n, d_img) float32 features, or (n, 3, H, W) uint8 pixels, in memory or
                   streamed from disk (an images.ImageSource, decoded batch by batch)
    text:          (n, d_txt) float32 bag-of-words (dense)
    labels:        (n, c) float32 in {0, 1}; every row has at least one label
    query_idx:     int64, 0-based, disjoint from retrieval_idx
    retrieval_idx: int64, 0-based: the database searched by the queries
    train_idx:     int64, 0-based, a subset of retrieval_idx (docs/spec.md §8)
    name:          where the data came from ("synthetic", or the file name)
    source:        load_dataset's arguments (path as given and absolute, format, seed, ...), so
                   the same data can be loaded again; None for data built in memory
    encoders:      how raw inputs became these rows, as plain data, or None: {"text": a saved
                   vocab.Vocabulary, "image": the backbone of extracted features}; saved with a
                   trained model so it can encode raw captions / images later
    captions:      the raw caption of each item (a tuple of n strings) when the source had
                   captions, else None (for text backbones that read raw text)

    Construction validates everything (raises DataError), so any instance is consistent.
    """

    image: torch.Tensor
    text: torch.Tensor
    labels: torch.Tensor
    query_idx: torch.Tensor
    retrieval_idx: torch.Tensor
    train_idx: torch.Tensor
    name: str = "data"
    source: dict | None = field(default=None, compare=False, repr=False)
    encoders: dict | None = None
    captions: tuple | None = None

    def __post_init__(self):
        validate(self)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_labels(self) -> int:
        return int(self.labels.shape[1])

    @property
    def image_is_pixels(self) -> bool:
        return self.image.dim() == 4

    @property
    def image_dim(self) -> int | None:
        return None if self.image_is_pixels else int(self.image.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    def __repr__(self) -> str:
        img = "pixels " + "x".join(map(str, self.image.shape[1:])) if self.image_is_pixels else f"{self.image_dim}-d features"
        return (f"CrossModalData(name={self.name!r}, n={self.n}, image={img}, text={self.text_dim}-d, "
                f"labels={self.n_labels}, query={len(self.query_idx)}, retrieval={len(self.retrieval_idx)}, "
                f"train={len(self.train_idx)})")


def _fail(name: str, msg: str):
    raise DataError(f"{name}: {msg}")


def validate(d: CrossModalData) -> None:
    """Check shapes, dtypes, values and the split of `d`; raise DataError naming `d.name`."""
    src = d.name
    from .images import ImageSource

    streamed = isinstance(d.image, ImageSource)
    for field in ("text", "labels", "query_idx", "retrieval_idx", "train_idx") + (() if streamed else ("image",)):
        if not isinstance(getattr(d, field), torch.Tensor):
            _fail(src, f"{field} must be a torch.Tensor, got {type(getattr(d, field)).__name__}")
    img, txt, lab = d.image, d.text, d.labels
    if lab.dim() != 2 or lab.shape[1] < 1:
        _fail(src, f"labels must be 2-D (n, c) with c >= 1, got shape {tuple(lab.shape)}")
    if lab.dtype != torch.float32:
        _fail(src, f"labels must be float32, got {lab.dtype}")
    n = lab.shape[0]
    if n < 2:
        _fail(src, f"need at least 2 items (one query, one database item), got {n}")
    if streamed:
        pass  # the source decodes to uint8 (3, H, W); bad files are reported by name when read
    elif img.dim() == 4:
        if img.dtype != torch.uint8 or img.shape[1] != 3:
            _fail(src, f"image pixels must be uint8 (n, 3, H, W), got {img.dtype} {tuple(img.shape)}")
    elif img.dim() == 2:
        if img.dtype != torch.float32:
            _fail(src, f"image features must be float32, got {img.dtype}")
        if not torch.isfinite(img).all():
            _fail(src, f"image features contain NaN or Inf (first bad row {_first_bad_row(img)})")
    else:
        _fail(src, f"image must be (n, d) features or (n, 3, H, W) pixels, got shape {tuple(img.shape)}")
    if txt.dim() != 2 or txt.dtype != torch.float32:
        _fail(src, f"text must be 2-D (n, d) float32 bag-of-words, got {txt.dtype} shape {tuple(txt.shape)}")
    if not torch.isfinite(txt).all():
        _fail(src, f"text contains NaN or Inf (first bad row {_first_bad_row(txt)})")
    if img.shape[0] != n or txt.shape[0] != n:
        _fail(src, f"row counts disagree: image has {img.shape[0]}, text has {txt.shape[0]}, labels have {n}")
    if d.captions is not None and (len(d.captions) != n or not all(isinstance(c, str) for c in d.captions)):
        _fail(src, f"captions must be {n} strings, got {len(d.captions)} items")
    if not ((lab == 0) | (lab == 1)).all():
        bad = (~((lab == 0) | (lab == 1))).nonzero()[0].tolist()
        _fail(src, f"labels must be 0/1, found {lab[bad[0], bad[1]].item()} at row {bad[0]}, column {bad[1]}")
    empty = (lab.sum(1) == 0).nonzero().flatten()
    if len(empty):
        raise UnlabeledItemsError(src, len(empty), int(empty[0].item()))
    seen = {}
    for field in ("query_idx", "retrieval_idx", "train_idx"):
        idx = getattr(d, field)
        if idx.dim() != 1 or idx.dtype != torch.int64:
            _fail(src, f"{field} must be 1-D int64, got {idx.dtype} shape {tuple(idx.shape)}")
        if len(idx) == 0:
            _fail(src, f"{field} is empty")
        if idx.min() < 0 or idx.max() >= n:
            _fail(src, f"{field} has indices out of range [0, {n}): min {idx.min().item()}, max {idx.max().item()}")
        mask = torch.zeros(n, dtype=torch.bool)
        mask[idx] = True
        if int(mask.sum()) != len(idx):
            _fail(src, f"{field} contains duplicate indices")
        seen[field] = mask
    both = (seen["query_idx"] & seen["retrieval_idx"]).nonzero().flatten()
    if len(both):
        _fail(src, f"query_idx and retrieval_idx overlap in {len(both)} items (first: {both[0].item()})")
    outside = (seen["train_idx"] & ~seen["retrieval_idx"]).nonzero().flatten()
    if len(outside):
        _fail(src, f"train_idx must be a subset of retrieval_idx; {len(outside)} are not (first: {outside[0].item()})")


def _first_bad_row(x: torch.Tensor) -> int:
    return int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero()[0].item())


def from_arrays(image, text, labels, *, query_idx, retrieval_idx, train_idx, name: str,
                drop_unlabeled: bool = False, source: dict | None = None, encoders: dict | None = None,
                captions=None) -> CrossModalData:
    """Build a validated CrossModalData from array-likes (numpy or torch, any numeric dtype).

    Conversions: features and BoW to float32, pixels stay uint8, labels to float32, indices to
    int64. With drop_unlabeled=True, rows without any label are removed first and the indices are
    remapped (indices pointing at dropped rows are dropped too). An images.ImageSource stays lazy.
    captions: the raw text of each item, or None.
    """
    from .images import ImageSource

    streamed = isinstance(image, ImageSource)
    if not streamed:
        image = _as_tensor(image, "image", name)
    if streamed or image.dim() == 4 and image.dtype == torch.uint8:
        pass
    elif image.dim() == 4:
        _fail(name, f"image pixels must be uint8 (n, 3, H, W), got {image.dtype}")
    else:
        image = image.to(torch.float32)
    text = _as_tensor(text, "text", name).to(torch.float32)
    labels = _as_tensor(labels, "labels", name).to(torch.float32)
    idx = {k: _as_tensor(v, k, name) for k, v in
           (("query_idx", query_idx), ("retrieval_idx", retrieval_idx), ("train_idx", train_idx))}
    for k, v in idx.items():
        if v.is_floating_point() and not torch.equal(v, v.round()):
            _fail(name, f"{k} must hold integers, got non-integer values")
        idx[k] = v.to(torch.int64).reshape(-1)
    if drop_unlabeled and labels.dim() == 2 and image.shape[0] == labels.shape[0] == text.shape[0]:
        n = labels.shape[0]
        keep = labels.sum(1) != 0
        in_range = all(len(v) == 0 or (v.min() >= 0 and v.max() < n) for v in idx.values())
        # With an out-of-range index nothing is dropped, so validate() reports the index as given.
        if not keep.all() and in_range:
            new_pos = torch.cumsum(keep.to(torch.int64), 0) - 1
            idx = {k: new_pos[v[keep[v]]] for k, v in idx.items()}
            image, text, labels = image[keep], text[keep], labels[keep]
            if captions is not None:
                captions = [c for c, k in zip(captions, keep.tolist()) if k]
    return CrossModalData(image=image if streamed else image.contiguous(), text=text.contiguous(),
                          labels=labels.contiguous(), name=name, source=source, encoders=encoders,
                          captions=None if captions is None else tuple(captions),
                          **{k: v.contiguous() for k, v in idx.items()})


def _as_tensor(x, field: str, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        _fail(name, f"{field} is not a numeric array ({e})")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        _fail(name, f"{field} must be a numeric array, got dtype {arr.dtype}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr))
