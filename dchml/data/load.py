"""`load_dataset`: one entry point for every source (the synthetic set, MATLAB v5 / v7.3 files,
text-list folders, index.mat / caption.mat / label.mat folders, dchml's .npz), the format
detection, the split (a file's own indices when it has them, otherwise the paper's protocol from
a seed, splits.py), and what needs the split: the vocabulary of raw captions, fitted on the
training items, and dropping unreadable image files."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from .dataset import CrossModalData, DataError, from_arrays
from .images import DEFAULT_WORKERS, ImageSource
from .splits import default_train_size, paper_split
from .synthetic import make_synthetic
from .vocab import DEFAULT_MAX_TERMS, Vocabulary

FORMATS = ("auto", "mat", "txt", "npz", "indexmat")
INDEXMAT_FILES = ("index.mat", "caption.mat", "caption.txt", "label.mat")
_HDF5 = b"\x89HDF\r\n\x1a\n"


def detect_format(path: Path) -> str:
    """'mat', 'txt', 'npz' or 'indexmat' for an existing path, from its suffix or, failing that,
    its bytes."""
    from .indexmat import is_indexmat_folder

    if path.is_dir():
        if (path / "labels.txt").is_file():
            return "txt"
        if is_indexmat_folder(path):
            return "indexmat"
        if any(p.suffix.lower() == ".mat" for p in path.iterdir()):
            return "mat"
        raise DataError(f"{path}: folder is neither a text-list data set (no labels.txt) nor a folder of .mat files")
    if path.name in INDEXMAT_FILES and is_indexmat_folder(path.parent):
        return "indexmat"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".mat", ".h5", ".hdf5"):
        return "mat"
    if suffix == ".txt":
        return "txt"
    with open(path, "rb") as fh:
        head = fh.read(520)
    if head[:4] == b"PK\x03\x04":
        return "npz"
    if head[:6] == b"MATLAB" or head[:8] == _HDF5 or head[512:520] == _HDF5:
        return "mat"
    raise DataError(f"{path}: cannot tell the format (suffix {suffix!r}); pass format='mat', 'txt', 'npz' or 'indexmat'")


def load_dataset(source: str, format: str = "auto", *, seed: int = 0, n_query: int | None = None,
                 n_train: int | None = None, drop_unlabeled: bool = False,
                 image_size: int = 224, stream_images: bool = True, image_workers: int = DEFAULT_WORKERS,
                 skip_bad_images: bool = False, vocab_size: int = DEFAULT_MAX_TERMS,
                 text_weighting: str = "binary") -> CrossModalData:
    """Load a cross-modal data set.

    source: "synthetic" (make_synthetic(seed=seed)), or a path: a .mat file (v5 or v7.3), a
        folder of .mat files, a text-list folder (or one of its files), a folder with index.mat,
        caption.mat and label.mat (or one of them), or a dchml .npz file.
    format: "auto" (from the suffix, or the file's first bytes), "mat", "txt", "npz" or "indexmat".
    seed, n_query, n_train: the paper's split protocol (splits.paper_split) for sources without
        their own query/database indices. A file that has its own split keeps it, and giving
        n_query / n_train for such a file is an error (they would be ignored).
    drop_unlabeled: drop items without any label (the paper's protocol; many public copies of
        NUS-WIDE and IAPR TC-12 contain such rows). Default False: such rows raise DataError.
    image_size: side of the square RGB pixels read from image files (images.txt, index.mat).
    stream_images: image files and v7.3 pixel arrays become an ImageSource, decoded batch by batch
        by `image_workers` processes (memory independent of the number of images); False reads
        them all into one uint8 tensor.
    skip_bad_images: decode every image file once now and drop the items whose image is missing
        or unreadable (listed in data.image.skipped); default False: a missing file is an error
        now, a corrupt one when it is first decoded.
    vocab_size, text_weighting: for raw captions (captions.txt, caption.mat): the vocabulary
        keeps the vocab_size most frequent words of the training items' captions; rows are
        "binary", "count" or "tfidf" (vocab.Vocabulary). It is kept in data.encoders["text"].
    Raises DataError for a missing, corrupt or inconsistent source.
    The result's `source` records these arguments (load_recorded loads the same data again).
    """
    if format not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    recorded = {"path": os.fspath(source), "abspath": None, "format": "synthetic", "seed": seed,
                "n_query": n_query, "n_train": n_train, "drop_unlabeled": drop_unlabeled, "image_size": image_size,
                "stream_images": stream_images, "image_workers": image_workers, "skip_bad_images": skip_bad_images,
                "vocab_size": vocab_size, "text_weighting": text_weighting}
    if source == "synthetic":
        kw = {k: v for k, v in (("n_query", n_query), ("n_train", n_train)) if v is not None}
        return dataclasses.replace(make_synthetic(seed=seed, **kw), source=recorded)
    path = Path(os.fspath(source))
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fmt = detect_format(path) if format == "auto" else format
    recorded.update(abspath=str(path.resolve()), format=fmt)
    images = dict(stream_images=stream_images, image_workers=image_workers)
    if fmt == "mat":
        from .matlab import load_mat_arrays
        arrays = load_mat_arrays(path, **images)
    elif fmt == "txt":
        from .textlist import load_textlist_arrays
        arrays = load_textlist_arrays(path, image_size=image_size, **images)
    elif fmt == "indexmat":
        from .indexmat import load_indexmat_arrays
        arrays = load_indexmat_arrays(path, image_size=image_size, **images)
    else:
        from .npz import load_npz_arrays
        if path.is_dir():
            raise DataError(f"{path}: format 'npz' needs a file, got a folder")
        arrays = load_npz_arrays(path)
    if skip_bad_images and isinstance(arrays["image"], ImageSource):
        arrays = _drop_unreadable_images(arrays)
    return _assemble(arrays, name=path.name, seed=seed, n_query=n_query, n_train=n_train,
                     drop_unlabeled=drop_unlabeled, source=recorded,
                     vocab=dict(max_terms=vocab_size, weighting=text_weighting))


def load_recorded(source: dict) -> CrossModalData:
    """Load the data a `CrossModalData.source` record describes (e.g. one kept in a checkpoint).
    Raises DataError, naming the recorded path, when that file is gone."""
    path = source["path"] if source.get("abspath") is None else source["abspath"]
    if source.get("format") != "synthetic" and not os.path.exists(path):
        raise DataError(f"the recorded data {source['path']!r} ({path}) no longer exists")
    optional = {k: source[k] for k in ("stream_images", "image_workers", "skip_bad_images", "vocab_size",
                                       "text_weighting") if source.get(k) is not None}
    return load_dataset(path, "auto" if source.get("format") == "synthetic" else source["format"],
                        seed=source["seed"], n_query=source.get("n_query"), n_train=source.get("n_train"),
                        drop_unlabeled=bool(source.get("drop_unlabeled")), image_size=source.get("image_size", 224),
                        **optional)


def _drop_unreadable_images(arrays: dict) -> dict:
    """Decode every image once; drop the items whose image fails, remapping a file's indices."""
    image = arrays["image"]
    bad = image.scan()
    if not bad:
        return arrays
    n = len(image)
    keep = np.ones(n, dtype=bool)
    keep[[pos for pos, _ in bad]] = False
    new_pos = np.cumsum(keep) - 1
    out = {}
    for key, value in arrays.items():
        if key in ("query_idx", "retrieval_idx", "train_idx"):
            idx = np.asarray(value, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                out[key] = value  # validation reports it as given
            else:
                out[key] = new_pos[idx[keep[idx]]]
        elif key == "encoders":
            out[key] = value
        else:
            out[key] = value[keep]
    out["image"] = out["image"].with_options(skipped=[message for _, message in bad])
    return out


def _text_rows(arrays: dict, fit_rows, vocab: dict | None):
    """(text rows, encoders): numeric bag-of-words as given, or raw captions through a vocabulary
    fitted on the captions of `fit_rows` (the training items)."""
    encoders = arrays.get("encoders")
    if "captions" not in arrays:
        return arrays["text"], encoders
    captions = arrays["captions"]
    rows = np.asarray(fit_rows, dtype=np.int64).reshape(-1)
    rows = rows[(rows >= 0) & (rows < len(captions))]
    vocabulary = Vocabulary.fit(captions[rows], **(vocab or {}))
    return vocabulary.transform(captions), {**(encoders or {}), "text": vocabulary.to_state()}


def _assemble(arrays: dict, *, name: str, seed: int, n_query, n_train, drop_unlabeled: bool,
              source: dict, vocab: dict | None = None) -> CrossModalData:
    image, labels = arrays["image"], arrays["labels"]
    text = arrays["text"] if "text" in arrays else arrays["captions"]
    n = labels.shape[0]
    for role, a in (("image", image), ("text", text)):
        if a.shape[0] != n:
            raise DataError(f"{name}: row counts disagree: {role} has {a.shape[0]} rows, labels have {n}")
    q, r, t = (arrays.get(k) for k in ("query_idx", "retrieval_idx", "train_idx"))
    if q is None and r is None and t is None:
        if drop_unlabeled:
            keep = np.asarray(labels).reshape(n, -1).sum(1) != 0
            arrays = {**arrays, **{k: arrays[k][keep] for k in ("image", "labels", "text", "captions") if k in arrays}}
            image, labels = arrays["image"], arrays["labels"]
            n = int(keep.sum())
        q, r, t = paper_split(n, seed=seed, n_query=n_query, n_train=n_train)
        text, encoders = _text_rows(arrays, t, vocab)
        return from_arrays(image, text, labels, query_idx=q, retrieval_idx=r, train_idx=t, name=name,
                           source=source, encoders=encoders, captions=arrays.get("captions"))
    if n_query is not None or n_train is not None:
        raise DataError(f"{name}: the file defines its own query/database split; n_query / n_train "
                        "cannot be applied (remove them, or remove the file's indices)")
    if q is None and r is None:
        raise DataError(f"{name}: a training index is given without query/database indices")
    rest = lambda idx: np.setdiff1d(np.arange(n), np.asarray(idx))  # noqa: E731
    q = rest(r) if q is None else q
    r = rest(q) if r is None else r
    if t is None:
        # Training items drawn from the database by the paper's rule, from the seed.
        r_arr = np.asarray(r, dtype=np.int64).reshape(-1)
        if len(r_arr):
            size = default_train_size(len(r_arr))
            t = np.sort(np.random.default_rng(seed).choice(r_arr, size=size, replace=False))
        else:
            t = r_arr  # empty: validation reports the empty database
    fit = np.asarray(t, dtype=np.int64).reshape(-1)
    if drop_unlabeled:  # the vocabulary sees only the training items that stay
        fit = fit[(fit >= 0) & (fit < n)]
        fit = fit[np.asarray(labels).reshape(n, -1)[fit].sum(1) != 0]
    text, encoders = _text_rows(arrays, fit, vocab)
    return from_arrays(image, text, labels, query_idx=q, retrieval_idx=r, train_idx=t, name=name,
                       drop_unlabeled=drop_unlabeled, source=source, encoders=encoders,
                       captions=arrays.get("captions"))
