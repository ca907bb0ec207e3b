"""The text-list format: a folder of plain-text files, one row per item (NUS-WIDE / MIRFlickr
copies distributed as lists). Accepted file names (exactly one of each group):

  labels.txt                      required: n rows of c values in {0, 1} (multi-hot)
  texts.txt | text.txt | bow.txt  required: n rows of d bag-of-words values
  features.npy | features.txt     image features (n, d); .npy is read with allow_pickle=False
  images.txt                      image file names, one per line, relative to the folder (or
                                  absolute); read as RGB pixels resized to image_size x image_size
                                  when no features file is present, else only checked for count
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


def _read_images(list_path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    names = [ln.strip() for ln in list_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = np.empty((len(names), 3, size, size), dtype=np.uint8)
    for i, name in enumerate(names):
        p = Path(name) if os.path.isabs(name) else list_path.parent / name
        try:
            with Image.open(p) as im:
                rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
        except FileNotFoundError as e:
            raise DataError(f"{list_path}: line {i + 1}: image file {p} not found") from e
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{list_path}: line {i + 1}: cannot read image {p} ({e})") from e
        out[i] = np.asarray(rgb).transpose(2, 0, 1)
    return out


def load_textlist_arrays(path, *, image_size: int = 224) -> dict:
    """Read a text-list folder into {'image', 'text', 'labels'} (+ 0-based index arrays)."""
    folder = textlist_folder(Path(os.fspath(path)))
    labels_path = _pick(folder, "labels", True)
    text_path = _pick(folder, "text", True)
    feat_path = _pick(folder, "features", False)
    list_path = _pick(folder, "images", False)
    labels = read_matrix(labels_path)
    text = read_matrix(text_path, np.float32)
    n = labels.shape[0]
    if text.shape[0] != n:
        raise DataError(f"{folder}: row counts disagree: {labels_path.name} has {n} rows, "
                        f"{text_path.name} has {text.shape[0]}")
    if list_path is not None:
        n_names = sum(1 for ln in list_path.read_text(encoding="utf-8").splitlines() if ln.strip())
        if n_names != n:
            raise DataError(f"{folder}: row counts disagree: {labels_path.name} has {n} rows, "
                            f"{list_path.name} lists {n_names} images")
    if feat_path is not None:
        image = _read_features(feat_path)
        if image.shape[0] != n:
            raise DataError(f"{folder}: row counts disagree: {labels_path.name} has {n} rows, "
                            f"{feat_path.name} has {image.shape[0]}")
    elif list_path is not None:
        image = _read_images(list_path, image_size)
    else:
        raise DataError(f"{folder}: no image data: add features.npy / features.txt or images.txt")
    out = dict(image=image, text=text, labels=labels)
    for role in ("query_idx", "retrieval_idx", "train_idx"):
        p = _pick(folder, role, False)
        if p is not None:
            out[role] = read_indices(p, n)
    return out
