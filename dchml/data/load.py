"""`load_dataset`: one entry point for every source (the synthetic set, MATLAB v5 / v7.3 files,
text-list folders, index.mat / caption.mat / label.mat folders, dchml's .npz, list-file folders,
the CIFAR-10 python folder), the split (a file's own indices when it has them, a named protocol's
draw (protocols.py), otherwise the paper's protocol from a seed, splits.py), and what needs the
split: the vocabulary of raw captions, fitted on the training items, and dropping unreadable
image files. Format detection lives in formats.py."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from .dataset import CrossModalData, DataError, from_arrays
from .formats import FORMATS, detect_format
from .images import DEFAULT_WORKERS, ImageSource
from .protocols import DEFAULT_FOR_FORMAT, check_classes, draw_split, get_protocol
from .splits import default_train_size, paper_split
from .synthetic import make_synthetic
from .vocab import DEFAULT_MAX_TERMS, Vocabulary

__all__ = ["FORMATS", "detect_format", "load_dataset", "load_recorded"]
_ROWS = ("image", "text", "labels", "captions")  # per-item arrays of a loader's result
_SPLIT = ("query_idx", "retrieval_idx", "train_idx")


def load_dataset(source: str, format: str = "auto", *, seed: int = 0, n_query: int | None = None,
                 n_train: int | None = None, drop_unlabeled: bool = False,
                 image_size: int = 224, stream_images: bool = True, image_workers: int = DEFAULT_WORKERS,
                 skip_bad_images: bool = False, vocab_size: int = DEFAULT_MAX_TERMS,
                 text_weighting: str = "binary", protocol: str | None = None,
                 image_root: str | None = None) -> CrossModalData:
    """Load a data set: cross-modal (image and text) or single-modality (image or text only).

    source: "synthetic" (make_synthetic(seed=seed)), or a path: a .mat file (v5 or v7.3), a
        folder of .mat files, a text-list folder (or one of its files), a folder with index.mat,
        caption.mat and label.mat (or one of them), a dchml .npz file, a list-file folder
        (test.txt, database.txt, train.txt; or one of them), or a CIFAR-10 python folder
        (cifar-10-batches-py, or the folder holding it).
    format: "auto" (from the suffix, the folder's files, or the file's first bytes), "mat", "txt",
        "npz", "indexmat", "list" or "cifar".
    seed, n_query, n_train: the paper's split protocol (splits.paper_split) for sources without
        their own query/database indices. A file that has its own split keeps it, and giving
        n_query / n_train for such a file is an error (they would be ignored).
    protocol: a named protocol (protocols.PROTOCOLS: cifar10, cifar10-1, cifar10-2, nus-wide,
        coco, imagenet). For a source without its own split, one that draws (the CIFAR and
        NUS-WIDE ones) draws it from `seed`; for a source with its own split it only sets
        data.protocol (MAP@K's K) after checking the class count. Default: cifar10-1 for a CIFAR
        folder, else none.
    image_root: list files only: the folder the image paths are relative to (default: the folder
        of the list files).
    drop_unlabeled: drop items without any label (the paper's protocol; many public copies of
        NUS-WIDE and IAPR TC-12 contain such rows). Default False: such rows raise DataError.
    image_size: side of the square RGB pixels read from image files (images.txt, index.mat, list
        files).
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
    chosen = None if protocol is None else get_protocol(protocol)
    recorded = {"path": os.fspath(source), "abspath": None, "format": "synthetic", "seed": seed,
                "n_query": n_query, "n_train": n_train, "drop_unlabeled": drop_unlabeled, "image_size": image_size,
                "stream_images": stream_images, "image_workers": image_workers, "skip_bad_images": skip_bad_images,
                "vocab_size": vocab_size, "text_weighting": text_weighting,
                "protocol": None if chosen is None else chosen.name,
                "image_root": None if image_root is None else os.path.abspath(os.fspath(image_root))}
    if source == "synthetic":
        kw = {k: v for k, v in (("n_query", n_query), ("n_train", n_train)) if v is not None}
        data = make_synthetic(seed=seed, **kw)
        if chosen is not None:
            check_classes(chosen, data.n_labels, data.name)
        if image_root is not None:
            raise DataError("synthetic: image_root applies to list-file folders only")
        return dataclasses.replace(data, source={**recorded, "split": "seed"},
                                   protocol=None if chosen is None else chosen.record())
    path = Path(os.fspath(source))
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fmt = detect_format(path) if format == "auto" else format
    if chosen is None and fmt in DEFAULT_FOR_FORMAT:
        chosen = get_protocol(DEFAULT_FOR_FORMAT[fmt])
        recorded["protocol"] = chosen.name
    if image_root is not None and fmt != "list":
        raise DataError(f"{path}: image_root applies to list-file folders only (this is format {fmt!r})")
    recorded.update(abspath=str(path.resolve()), format=fmt)
    images = dict(stream_images=stream_images, image_workers=image_workers)
    arrays = _read(path, fmt, image_size=image_size, image_root=image_root, skip_bad_images=skip_bad_images,
                   drop_unlabeled=drop_unlabeled, **images)
    if skip_bad_images and isinstance(arrays.get("image"), ImageSource):
        arrays = _drop_unreadable_images(arrays)
    return _assemble(arrays, name=path.name, seed=seed, n_query=n_query, n_train=n_train,
                     drop_unlabeled=drop_unlabeled, source=recorded, protocol=chosen,
                     vocab=dict(max_terms=vocab_size, weighting=text_weighting))


def _read(path: Path, fmt: str, *, image_size, image_root, skip_bad_images, drop_unlabeled, **images) -> dict:
    """The arrays of one source: modalities, labels, optional split indices and extras."""
    if fmt == "mat":
        from .matlab import load_mat_arrays
        return load_mat_arrays(path, **images)
    if fmt == "txt":
        from .textlist import load_textlist_arrays
        return load_textlist_arrays(path, image_size=image_size, **images)
    if fmt == "indexmat":
        from .indexmat import load_indexmat_arrays
        return load_indexmat_arrays(path, image_size=image_size, **images)
    if fmt == "list":
        from .listfiles import load_list_arrays
        return load_list_arrays(path, image_root=image_root, image_size=image_size,
                                check_files=not skip_bad_images, drop_unlabeled=drop_unlabeled, **images)
    if fmt == "cifar":
        from .cifar import load_cifar_arrays
        return load_cifar_arrays(path)
    from .npz import load_npz_arrays
    if path.is_dir():
        raise DataError(f"{path}: format 'npz' needs a file, got a folder")
    return load_npz_arrays(path)


def load_recorded(source: dict) -> CrossModalData:
    """Load the data a `CrossModalData.source` record describes (e.g. one kept in a checkpoint).
    Raises DataError, naming the recorded path, when that file is gone."""
    path = source["path"] if source.get("abspath") is None else source["abspath"]
    if source.get("format") != "synthetic" and not os.path.exists(path):
        raise DataError(f"the recorded data {source['path']!r} ({path}) no longer exists")
    optional = {k: source[k] for k in ("stream_images", "image_workers", "skip_bad_images", "vocab_size",
                                       "text_weighting", "protocol", "image_root") if source.get(k) is not None}
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
        if key in _SPLIT:
            idx = np.asarray(value, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                out[key] = value  # validation reports it as given
            else:
                out[key] = new_pos[idx[keep[idx]]]
        elif key in _ROWS:
            out[key] = value[keep]
        else:
            out[key] = value  # per-data-set extras: encoders, class names
    out["image"] = out["image"].with_options(skipped=[message for _, message in bad])
    return out


def _text_rows(arrays: dict, fit_rows, vocab: dict | None):
    """(text rows or None, encoders): numeric bag-of-words as given, or raw captions through a
    vocabulary fitted on the captions of `fit_rows` (the training items)."""
    encoders = arrays.get("encoders")
    if "captions" not in arrays:
        return arrays.get("text"), encoders
    captions = arrays["captions"]
    rows = np.asarray(fit_rows, dtype=np.int64).reshape(-1)
    rows = rows[(rows >= 0) & (rows < len(captions))]
    vocabulary = Vocabulary.fit(captions[rows], **(vocab or {}))
    return vocabulary.transform(captions), {**(encoders or {}), "text": vocabulary.to_state()}


def _assemble(arrays: dict, *, name: str, seed: int, n_query, n_train, drop_unlabeled: bool,
              source: dict, protocol=None, vocab: dict | None = None) -> CrossModalData:
    for role in ("image", "text", "captions", "labels"):
        if role in arrays and np.ndim(arrays[role]) == 0:
            raise DataError(f"{name}: {role} is a 0-dim array (a single value); it needs one row per item")
    labels = arrays["labels"]
    n = labels.shape[0]
    if not any(k in arrays for k in ("image", "text", "captions")):
        raise DataError(f"{name}: no image or text data, only labels")
    for role in ("image", "text", "captions"):
        if role in arrays and arrays[role].shape[0] != n:
            raise DataError(f"{name}: row counts disagree: {role} has {arrays[role].shape[0]} rows, labels have {n}")
    extras = dict(source=source, protocol=None if protocol is None else protocol.record(),
                  class_names=arrays.get("class_names"))
    q, r, t = (arrays.get(k) for k in _SPLIT)
    if q is None and r is None and t is None:
        if protocol is not None and not protocol.draws_split:
            raise DataError(f"{name}: protocol {protocol.name} takes its split from list files (test.txt, "
                            "database.txt, train.txt), and this source has no split of its own")
        if protocol is not None and (n_query is not None or n_train is not None):
            raise DataError(f"{name}: protocol {protocol.name} fixes the split; n_query / n_train cannot be applied")
        if drop_unlabeled:
            keep = np.asarray(labels).reshape(n, -1).sum(1) != 0
            arrays = {**arrays, **{k: arrays[k][keep] for k in _ROWS if k in arrays}}
            labels = arrays["labels"]
            n = int(keep.sum())
        if protocol is not None:
            q, r, t = draw_split(protocol, labels, seed, name, arrays.get("class_names"))
        else:
            q, r, t = paper_split(n, seed=seed, n_query=n_query, n_train=n_train)
        extras["source"] = {**source, "split": "protocol" if protocol is not None else "seed"}
        text, encoders = _text_rows(arrays, t, vocab)
        return from_arrays(arrays.get("image"), text, labels, query_idx=q, retrieval_idx=r, train_idx=t, name=name,
                           encoders=encoders, captions=arrays.get("captions"), **extras)
    if n_query is not None or n_train is not None:
        raise DataError(f"{name}: the file defines its own query/database split; n_query / n_train "
                        "cannot be applied (remove them, or remove the file's indices)")
    if protocol is not None:
        check_classes(protocol, np.asarray(labels).reshape(n, -1).shape[1], name)
    if q is None and r is None:
        raise DataError(f"{name}: a training index is given without query/database indices")
    extras["source"] = {**source, "split": "file" if t is not None else "file, training drawn from the seed"}
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
    return from_arrays(arrays.get("image"), text, labels, query_idx=q, retrieval_idx=r, train_idx=t, name=name,
                       drop_unlabeled=drop_unlabeled, encoders=encoders, captions=arrays.get("captions"), **extras)
