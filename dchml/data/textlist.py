"""The text-list format: a folder of plain-text files, one row per item (NUS-WIDE / MIRFlickr
copies distributed as lists). Accepted file names (exactly one of each group):

  labels.txt                      required: n rows of c values in {0, 1} (multi-hot)
  texts.txt | text.txt | bow.txt  n rows of d bag-of-words values, or instead
  captions.txt                    raw text, one caption (or tag list) per line, turned into
                                  bag-of-words rows by a vocabulary fitted on the training items
  features.npy | features.txt     image features (n, d); .npy is read with allow_pickle=False
  images.txt                      image file names, one per line, relative to the folder (or
                                  absolute); RGB pixels resized to image_size x image_size, streamed
                                  from disk (an ImageSource) or read into memory, when no features
                                  file is present, else only checked for count
  test_idx.txt | query_idx.txt          1-based indices of the queries
  database_idx.txt | retrieval_idx.txt  1-based indices of the database
  train_idx.txt                         1-based indices of the training set (within the database)

Values are separated by whitespace or commas; lines starting with '#' are comments.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import DataError

GROUPS = {
    "labels": ("labels.txt",),
    "text": ("texts.txt", "text.txt", "bow.txt"),
    "captions": ("captions.txt",),
    "features": ("features.npy", "features.txt"),
    "images": ("images.txt",),
    "query_idx": ("test_idx.txt", "query_idx.txt"),
    "retrieval_idx": ("database_idx.txt", "retrieval_idx.txt"),
    "train_idx": ("train_idx.txt",),
}
KNOWN_FILES = {name for names in GROUPS.values() for name in names}


def textlist_folder(path: Path) -> Path:
    """The folder of a text-list data set given the folder or one of its files."""
    if path.is_dir():
        return path
    if path.name in KNOWN_FILES:
        return path.parent
    raise DataError(f"{path}: not a text-list data set; give its folder or one of "
                    f"{', '.join(sorted(KNOWN_FILES))}")


def _pick(folder: Path, group: str, required: bool) -> Path | None:
    present = [folder / f for f in GROUPS[group] if (folder / f).is_file()]
    if len(present) > 1:
        raise DataError(f"{folder}: both {present[0].name} and {present[1].name} are present; keep one")
    if not present:
        if required:
            raise DataError(f"{folder}: missing file {' or '.join(GROUPS[group])}")
        return None
    return present[0]


def read_matrix(path: Path, dtype=np.float64) -> np.ndarray:
    """A 2-D numeric table from a text file (whitespace or comma separated), or DataError."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = next((ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")), "")
        delim = "," if "," in first else None
        arr = np.loadtxt(path, dtype=dtype, delimiter=delim, comments="#", ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a numeric table with equal-length rows ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if arr.size == 0:
        raise DataError(f"{path}: file holds no rows")
    return arr


def read_indices(path: Path, n: int) -> np.ndarray:
    """1-based integer indices (any layout of whitespace/comma separated values) -> 0-based."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    tokens = [t for ln in text.splitlines() if not ln.lstrip().startswith("#")
              for t in ln.replace(",", " ").split()]
    try:
        idx = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{path}: indices must be integers ({e})") from e
    if idx.size == 0:
        raise DataError(f"{path}: no indices")
    if idx.min() < 1 or idx.max() > n:
        raise DataError(f"{path}: indices must be 1-based in [1, {n}], got min {idx.min()}, max {idx.max()}")
    return idx - 1


def _read_features(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt or unreadable .npy file ({e})") from e
        if arr.ndim != 2:
            raise DataError(f"{path}: image features must be 2-D (n, d), got shape {arr.shape}")
        return arr
    return read_matrix(path, np.float32)


def image_names(list_path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in list_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{list_path}: cannot read ({e})") from e


def read_captions(path: Path) -> list[str]:
    """One caption per line (UTF-8); only newline characters separate items, so a caption may
    hold any other character, and an empty line is an item without words."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 text ({e})") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _read_images(list_path: Path, size: int, stream: bool, workers: int):
    from .images import file_source

    source = file_source(image_names(list_path), list_path.parent, size, origin=str(list_path), unit="line",
                         workers=workers)
    return source if stream else source.load().numpy()


def load_textlist_arrays(path, *, image_size: int = 224, stream_images: bool = True,
                         image_workers: int = 2) -> dict:
    """Read a text-list folder into {'image', 'text' or 'captions', 'labels'} (+ 0-based index
    arrays). Images from images.txt are an ImageSource (stream_images=True) or a uint8 array."""
    folder = textlist_folder(Path(os.fspath(path)))
    labels_path = _pick(folder, "labels", True)
    text_path = _pick(folder, "text", False)
    captions_path = _pick(folder, "captions", False)
    if (text_path is None) == (captions_path is None):
        raise DataError(f"{folder}: " + ("give either bag-of-words rows or captions.txt, not both"
                                         if text_path else f"missing file {' or '.join(GROUPS['text'])} "
                                                           "(or captions.txt with raw text)"))
    feat_path = _pick(folder, "features", False)
    list_path = _pick(folder, "images", False)
    labels = read_matrix(labels_path)
    if text_path is not None:
        text = read_matrix(text_path, np.float32)
    else:
        text_path, text = captions_path, np.array(read_captions(captions_path), dtype=object)
    n = labels.shape[0]
    if text.shape[0] != n:
        raise DataError(f"{folder}: row counts disagree: {labels_path.name} has {n} rows, "
                        f"{text_path.name} has {text.shape[0]}")
    if list_path is not None:
        n_names = len(image_names(list_path))
        if n_names != n:
            raise DataError(f"{folder}: row counts disagree: {labels_path.name} has {n} rows, "
                            f"{list_path.name} lists {n_names} images")
    if feat_path is not None:
        image = _read_features(feat_path)
        if image.shape[0] != n:
            raise DataError(f"{folder}: row counts disagree: {labels_path.name} has {n} rows, "
                            f"{feat_path.name} has {image.shape[0]}")
    elif list_path is not None:
        image = _read_images(list_path, image_size, stream_images, image_workers)
    else:
        raise DataError(f"{folder}: no image data: add features.npy / features.txt or images.txt")
    out = dict(image=image, labels=labels, **({"captions": text} if text.dtype == object else {"text": text}))
    for role in ("query_idx", "retrieval_idx", "train_idx"):
        p = _pick(folder, role, False)
        if p is not None:
            out[role] = read_indices(p, n)
    return out
