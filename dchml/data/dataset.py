"""The cross-modal data set (`CrossModalData`), its error type (`DataError`) and the
validation every loader goes through, so a bad file fails once, here, with a message that names
the source and the problem instead of failing later inside training."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


MODALITIES = ("image", "text")


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
    """Items with one or two modalities (image, text), multi-hot labels and the
    query/retrieval/train split. Cross-modal data has both modalities; single-modality data (image
    retrieval: CIFAR-10, ImageNet-100, ...) has one, the other is None.

    image:         (n, d_img) float32 features, or (n, 3, H, W) uint8 pixels, in memory or
                   streamed from disk (an images.ImageSource, decoded batch by batch), or None
    text:          (n, d_txt) float32 bag-of-words (dense), or None
    labels:        (n, c) float32 in {0, 1}; every row has at least one label (single-label
                   sources are one-hot)
    query_idx:     int64, 0-based, disjoint from retrieval_idx
    retrieval_idx: int64, 0-based: the database searched by the queries
    train_idx:     int64, 0-based, disjoint from query_idx (queries are never trained on); often,
                   but not necessarily, a subset of retrieval_idx (docs/spec.md §8)
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

    image: torch.Tensor | None
    text: torch.Tensor | None
    labels: torch.Tensor
    query_idx: torch.Tensor
    retrieval_idx: torch.Tensor
    train_idx: torch.Tensor
    name: str = "data"
    source: dict | None = field(default=None, compare=False, repr=False)
    encoders: dict | None = None
    captions: tuple | None = None
    protocol: dict | None = field(default=None, compare=False)
    class_names: tuple | None = field(default=None, compare=False)

    def __post_init__(self):
        validate(self)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_labels(self) -> int:
        return int(self.labels.shape[1])

    @property
    def modalities(self) -> tuple:
        """The modalities present, in the order ("image", "text")."""
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def has_text(self) -> bool:
        return self.text is not None

    @property
    def image_is_pixels(self) -> bool:
        return self.image is not None and self.image.dim() == 4

    @property
    def image_dim(self) -> int | None:
        return None if self.image is None or self.image_is_pixels else int(self.image.shape[1])

    @property
    def text_dim(self) -> int | None:
        return None if self.text is None else int(self.text.shape[1])

    def __repr__(self) -> str:
        if self.image is None:
            img = "none"
        else:
            img = ("pixels " + "x".join(map(str, self.image.shape[1:])) if self.image_is_pixels
                   else f"{self.image_dim}-d features")
        txt = "none" if self.text is None else f"{self.text_dim}-d"
        proto = "" if self.protocol is None else f", protocol={self.protocol['name']}"
        return (f"CrossModalData(name={self.name!r}, n={self.n}, image={img}, text={txt}, "
                f"labels={self.n_labels}, query={len(self.query_idx)}, retrieval={len(self.retrieval_idx)}, "
                f"train={len(self.train_idx)}{proto})")


def _fail(name: str, msg: str):
    raise DataError(f"{name}: {msg}")


def validate(d: CrossModalData) -> None:
    """Check shapes, dtypes, values and the split of `d`; raise DataError naming `d.name`."""
    src = d.name
    from .images import ImageSource

    img, txt, lab = d.image, d.text, d.labels
    if img is None and txt is None:
        _fail(src, "needs an image or a text modality (or both); both are None")
    streamed = isinstance(img, ImageSource)
    present = [f for f, v in (("image", img), ("text", txt)) if v is not None and not (f == "image" and streamed)]
    for field in present + ["labels", "query_idx", "retrieval_idx", "train_idx"]:
        if not isinstance(getattr(d, field), torch.Tensor):
            _fail(src, f"{field} must be a torch.Tensor, got {type(getattr(d, field)).__name__}")
    if lab.dim() != 2 or lab.shape[1] < 1:
        _fail(src, f"labels must be 2-D (n, c) with c >= 1, got shape {tuple(lab.shape)}")
    if lab.dtype != torch.float32:
        _fail(src, f"labels must be float32, got {lab.dtype}")
    n = lab.shape[0]
    if n < 2:
        _fail(src, f"need at least 2 items (one query, one database item), got {n}")
    if img is None or streamed:
        pass  # a source decodes to uint8 (3, H, W); bad files are reported by name when read
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
    if txt is not None:
        if txt.dim() != 2 or txt.dtype != torch.float32:
            _fail(src, f"text must be 2-D (n, d) float32 bag-of-words, got {txt.dtype} shape {tuple(txt.shape)}")
        if not torch.isfinite(txt).all():
            _fail(src, f"text contains NaN or Inf (first bad row {_first_bad_row(txt)})")
    rows = {f: v.shape[0] for f, v in (("image", img), ("text", txt)) if v is not None}
    if any(r != n for r in rows.values()):
        _fail(src, "row counts disagree: " + ", ".join(f"{f} has {r}" for f, r in rows.items()) + f", labels have {n}")
    if d.captions is not None and (len(d.captions) != n or not all(isinstance(c, str) for c in d.captions)):
        _fail(src, f"captions must be {n} strings, got {len(d.captions)} items")
    if d.class_names is not None and (len(d.class_names) != lab.shape[1]
                                      or not all(isinstance(c, str) for c in d.class_names)):
        _fail(src, f"class_names must be {lab.shape[1]} strings (one per label column), got {len(d.class_names)}")
    if d.protocol is not None and not (isinstance(d.protocol, dict) and isinstance(d.protocol.get("name"), str)
                                       and isinstance(d.protocol.get("topk"), int)):
        _fail(src, f"protocol must be a dict with a name and an integer topk, got {d.protocol!r}")
    if not ((lab == 0) | (lab == 1)).all():
        bad = (~((lab == 0) | (lab == 1))).nonzero()[0].tolist()
        _fail(src, f"labels must be 0/1, found {lab[bad[0], bad[1]].item()} at row {bad[0]}, column {bad[1]}")
    empty = (lab.sum(1) == 0).nonzero().flatten()
    if len(empty):
        raise UnlabeledItemsError(src, len(empty), int(empty[0].item()))
    everywhere = (lab.sum(0) == n).nonzero().flatten()
    if len(everywhere):
        column = int(everywhere[0])
        name = f" ({d.class_names[column]})" if d.class_names is not None else ""
        _fail(src, f"label column {column}{name} is set for every item, so every database item is relevant to every "
                   "query and any ranking scores MAP 1: this is not a retrieval task (it needs items without that "
                   "label" + (")" if lab.shape[1] > 1 else ", i.e. at least two classes)"))
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
    # Training items need not be in the database (the cifar10 protocol trains outside it), but a
    # query is never trained on.
    trained = (seen["train_idx"] & seen["query_idx"]).nonzero().flatten()
    if len(trained):
        _fail(src, f"train_idx and query_idx overlap in {len(trained)} items (first: {trained[0].item()}); "
                   "queries are never trained on")


def _first_bad_row(x: torch.Tensor) -> int:
    return int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero()[0].item())


def from_arrays(image=None, text=None, labels=None, *, query_idx, retrieval_idx, train_idx, name: str,
                drop_unlabeled: bool = False, source: dict | None = None, encoders: dict | None = None,
                captions=None, protocol: dict | None = None, class_names=None) -> CrossModalData:
    """Build a validated CrossModalData from array-likes (numpy or torch, any numeric dtype).

    image or text may be None (single-modality data), not both. Conversions: features and BoW to
    float32, pixels stay uint8, labels to float32, indices to int64. With drop_unlabeled=True,
    rows without any label are removed first and the indices are remapped (indices pointing at
    dropped rows are dropped too). An images.ImageSource stays lazy. captions: the raw text of
    each item, or None. class_names: one name per label column, or None.
    """
    from .images import ImageSource

    if labels is None:
        _fail(name, "labels are required")
    if image is None and text is None:
        _fail(name, "needs an image or a text modality (or both); both are None")
    streamed = isinstance(image, ImageSource)
    if image is not None and not streamed:
        image = _as_tensor(image, "image", name)
        if image.dim() == 4 and image.dtype != torch.uint8:
            _fail(name, f"image pixels must be uint8 (n, 3, H, W), got {image.dtype}")
        if image.dim() != 4:
            image = image.to(torch.float32)
    if text is not None:
        text = _as_tensor(text, "text", name).to(torch.float32)
    labels = _as_tensor(labels, "labels", name).to(torch.float32)
    idx = {k: _as_tensor(v, k, name) for k, v in
           (("query_idx", query_idx), ("retrieval_idx", retrieval_idx), ("train_idx", train_idx))}
    for k, v in idx.items():
        if v.is_floating_point() and not torch.equal(v, v.round()):
            _fail(name, f"{k} must hold integers, got non-integer values")
        idx[k] = v.to(torch.int64).reshape(-1)
    rows = [a.shape[0] for a in (image, text) if a is not None]
    if drop_unlabeled and labels.dim() == 2 and all(r == labels.shape[0] for r in rows):
        n = labels.shape[0]
        keep = labels.sum(1) != 0
        in_range = all(len(v) == 0 or (v.min() >= 0 and v.max() < n) for v in idx.values())
        # With an out-of-range index nothing is dropped, so validate() reports the index as given.
        if not keep.all() and in_range:
            new_pos = torch.cumsum(keep.to(torch.int64), 0) - 1
            idx = {k: new_pos[v[keep[v]]] for k, v in idx.items()}
            image = None if image is None else image[keep]
            text = None if text is None else text[keep]
            labels = labels[keep]
            if captions is not None:
                captions = [c for c, k in zip(captions, keep.tolist()) if k]
    if image is not None and not streamed:
        image = image.contiguous()
    return CrossModalData(image=image, text=None if text is None else text.contiguous(),
                          labels=labels.contiguous(), name=name, source=source, encoders=encoders,
                          captions=None if captions is None else tuple(captions), protocol=protocol,
                          class_names=None if class_names is None else tuple(class_names),
                          **{k: v.contiguous() for k, v in idx.items()})


def _as_tensor(x, field: str, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            _fail(name, f"{field} is complex-valued ({x.dtype}); dchml needs real numbers")
        return x.detach().cpu()
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        _fail(name, f"{field} is not a numeric array ({e})")
    if np.iscomplexobj(arr):
        _fail(name, f"{field} is complex-valued ({arr.dtype}); dchml needs real numbers")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        _fail(name, f"{field} must be a numeric array, got dtype {arr.dtype}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr))


def constant_modalities(data, rows) -> list[str]:
    """The modalities whose features are the same for every item of `rows` (in-memory features
    only): such data can only give trivial codes, every item hashing alike."""
    out = []
    for modality in ("image", "text"):
        x = getattr(data, modality, None)
        if isinstance(x, torch.Tensor) and x.dim() == 2 and len(rows) > 1:
            sample = x[rows]
            if bool((sample == sample[:1]).all()):
                out.append(modality)
    return out
