"""The data formats `load_dataset` reads, and telling them apart from a path (its suffix, the
files a folder holds, or a file's first bytes)."""
from __future__ import annotations

from pathlib import Path

from .dataset import DataError

FORMATS = ("auto", "mat", "txt", "npz", "indexmat", "list", "cifar")
INDEXMAT_FILES = ("index.mat", "caption.mat", "caption.txt", "label.mat")
_HDF5 = b"\x89HDF\r\n\x1a\n"


def detect_format(path: Path) -> str:
    """'mat', 'txt', 'npz', 'indexmat', 'list' or 'cifar' for an existing path, from its suffix or
    the files a folder holds, or, failing that, its bytes."""
    from .cifar import cifar_folder
    from .indexmat import is_indexmat_folder
    from .listfiles import FILE_NAMES, is_list_folder

    path = Path(path)
    if cifar_folder(path) is not None:
        return "cifar"
    if path.is_dir():
        if (path / "labels.txt").is_file():
            return "txt"
        if is_indexmat_folder(path):
            return "indexmat"
        if is_list_folder(path):
            return "list"
        if any(p.suffix.lower() == ".mat" for p in path.iterdir()):
            return "mat"
        raise DataError(f"{path}: folder is none of the known layouts: a text-list data set (labels.txt), list "
                        "files (test.txt, database.txt, train.txt), a CIFAR-10 python folder (data_batch_1 ...), "
                        "an index.mat folder, or a folder of .mat files")
    if path.name in INDEXMAT_FILES and is_indexmat_folder(path.parent):
        return "indexmat"
    if path.name in FILE_NAMES and is_list_folder(path.parent):
        return "list"
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
    raise DataError(f"{path}: cannot tell the format (suffix {suffix!r}); pass format="
                    + ", ".join(repr(f) for f in FORMATS[1:]))
