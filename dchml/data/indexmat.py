"""The folder layout of the CLIP-based cross-modal hashing code (DCHMT and its successors): one
file per role, items in the same order in each.

  index.mat    the image file of each item: variable `index` (or `imgs`, `FAll`), a char matrix
               or a cell array of paths, relative to this folder or absolute
  caption.mat  one caption or tag string per item: variable `caption` (or `tags`, `YAll`), char
               matrix or cell array; or caption.txt, one caption per line (UTF-8)
  label.mat    multi-hot labels (n, c): variable `category` (or `label`, `labels`, `LAll`)

MATLAB v5 files are read with scipy.io.loadmat (cells are decoded by scipy, never unpickled),
v7.3 files with h5py. Captions become bag-of-words rows through a vocabulary fitted on the
training items (load.py); images are streamed from disk (images.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import DataError
from .textlist import read_captions

INDEX_NAMES = ("index", "imgs", "FAll")
CAPTION_NAMES = ("caption", "tags", "YAll")
LABEL_NAMES = ("category", "label", "labels", "LAll")
_HDF5 = b"\x89HDF\r\n\x1a\n"


def is_indexmat_folder(path: Path) -> bool:
    return path.is_dir() and (path / "index.mat").is_file() and (
        (path / "caption.mat").is_file() or (path / "caption.txt").is_file())


def load_indexmat_arrays(path, *, image_size: int = 224, stream_images: bool = True,
                         image_workers: int = 2) -> dict:
    """{'image': ImageSource (or uint8 array), 'captions': object array of str, 'labels'}."""
    from .images import file_source

    folder = Path(os.fspath(path))
    if folder.is_file():
        folder = folder.parent
    if not is_indexmat_folder(folder):
        raise DataError(f"{folder}: not an index.mat / caption.mat / label.mat folder "
                        "(needs index.mat, caption.mat or caption.txt, and label.mat)")
    label_path = folder / "label.mat"
    if not label_path.is_file():
        raise DataError(f"{folder}: missing file label.mat")
    paths = read_strings(folder / "index.mat", INDEX_NAMES)
    caption_mat = folder / "caption.mat"
    captions = read_strings(caption_mat, CAPTION_NAMES) if caption_mat.is_file() else read_captions(folder / "caption.txt")
    labels = _read_labels(label_path, len(paths))
    if len(captions) != len(paths):
        raise DataError(f"{folder}: row counts disagree: index.mat lists {len(paths)} images, "
                        f"{'caption.mat' if caption_mat.is_file() else 'caption.txt'} has {len(captions)} captions")
    image = file_source([p.strip() for p in paths], folder, image_size, origin=str(folder / "index.mat"),
                        unit="item", workers=image_workers)
    return {"image": image if stream_images else image.load().numpy(), "labels": labels,
            "captions": np.array(captions, dtype=object)}


def read_strings(path: Path, names) -> list[str]:
    """One string per item from the first of `names` found in a MATLAB v5 or v7.3 file."""
    with open(path, "rb") as fh:
        head = fh.read(520)
    if head[:8] == _HDF5 or head[512:520] == _HDF5:
        return _h5_strings(path, names)
    import scipy.io

    try:
        raw = scipy.io.loadmat(str(path), squeeze_me=False)
    except Exception as e:
        raise DataError(f"{path}: corrupt or unreadable MATLAB file ({type(e).__name__}: {e})") from e
    key = _first(raw, names, path)
    value = raw[key]
    if value.dtype.kind == "U":  # a char matrix: one row per item, padded with spaces
        return [s.rstrip(" ") for s in value.reshape(-1).tolist()]
    if value.dtype == object:  # a cell array
        return [_cell_text(v, path, key) for v in value.reshape(-1)]
    raise DataError(f"{path}: {key} must hold strings (a char matrix or a cell array), got {value.dtype} {value.shape}")


def _first(variables, names, path) -> str:
    lower = {k.lower(): k for k in variables if not k.startswith("__")}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    raise DataError(f"{path}: none of the variables {', '.join(names)} found; file has: "
                    f"{', '.join(sorted(lower.values())) or 'nothing'}")


def _cell_text(value, path, key) -> str:
    if isinstance(value, str):
        return value
    arr = np.asarray(value)
    if arr.size == 0:
        return ""
    if arr.dtype.kind != "U":
        raise DataError(f"{path}: {key} holds a cell of {arr.dtype}, expected text")
    return " ".join(s.rstrip(" ") for s in arr.reshape(-1).tolist())


def _h5_strings(path: Path, names) -> list[str]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            key = _first({k: None for k in f.keys()}, names, path)
            ds = f[key]
            cls = _matlab_class(ds)
            if cls == "char":
                codes = np.asarray(ds[()]).T  # MATLAB (n, L) stored transposed
                return ["".join(map(chr, row)).rstrip(" \x00") for row in np.atleast_2d(codes)]
            if cls == "cell":
                return [_h5_char(f[ref]) for ref in np.asarray(ds[()]).T.reshape(-1)]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: corrupt or unreadable HDF5 (MATLAB v7.3) file ({type(e).__name__}: {e})") from e
    raise DataError(f"{path}: {key} must hold strings (MATLAB char or cell), got MATLAB class {cls!r}")


def _matlab_class(ds) -> str:
    cls = ds.attrs.get("MATLAB_class", b"")
    return cls.decode() if isinstance(cls, bytes) else str(cls)


def _h5_char(ds) -> str:
    if "MATLAB_empty" in ds.attrs and int(np.asarray(ds.attrs["MATLAB_empty"]).reshape(-1)[0]):
        return ""
    return "".join(map(chr, np.asarray(ds[()]).T.reshape(-1))).rstrip("\x00")


def _read_labels(path: Path, n: int) -> np.ndarray:
    from .matlab import read_mat_variables

    variables = read_mat_variables(path)
    key = _first(variables, LABEL_NAMES, path)
    labels = np.asarray(variables[key])
    if labels.ndim != 2:
        raise DataError(f"{path}: {key} must be 2-D (n, c), got shape {labels.shape}")
    if labels.shape[0] != n and labels.shape[1] == n:
        labels = labels.T
    if labels.shape[0] != n:
        raise DataError(f"{path}: row counts disagree: {key} has shape {labels.shape}, index.mat lists {n} images")
    return labels
