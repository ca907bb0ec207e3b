"""MATLAB loaders: v5 files (scipy.io.loadmat) and v7.3 files (HDF5, h5py), with the array names
that public cross-modal hashing data sets use. Two layouts are recognised (names are matched
case-insensitively; the first name found wins):

  "all" layout, one array per modality over all items, optional split indices (1-based):
      image : IAll, XAll, images, image, imgs, img, I_all, X_all, img_feats, image_feats, features,
              X, feat, feats, fea, data
      text  : YAll, TAll, tags, texts, text, txt, Y_all, T_all, bow, BoW
      labels: LAll, labels, label, L_all, lab, gnd, L, Y
      At least one modality: a file with image (or text) features only is single-modality data.
      Labels are a 0/1 matrix or a vector of class numbers (one-hot, labels.py).
      split : indexQuery/indexTest/query_idx, indexDatabase/indexRetrieval/retrieval_idx,
              indexTrain/train_idx, at the top level or inside a struct named `param`
  "split" layout, one array per modality and subset (DADH / DJSRH style files):
      I_te / T_te / L_te (queries), I_db / T_db / L_db (database), I_tr / T_tr / L_tr (training)
  single-modality train/test layout (SDH / KSH style: traindata, traingnd, testdata, testgnd,
      and the like): mat_subsets.py

A directory of .mat files (DCMH's MIRFlickr-25K copy keeps IAll, YAll and LAll in separate files)
is read as one file holding all their variables.

Orientation: MATLAB is column-major and v7.3 files store every array transposed, so h5py
returns (d, n) for a MATLAB (n, d) matrix; dims are reversed on read. Files written by Python
h5py are not transposed; after reading, every array is oriented so that its item axis (the one
size that image, text and labels share) comes first, which covers both writers. Pixel arrays
(4-D, one axis of size 3) go to (n, 3, H, W) uint8. With stream_images=True, a 4-D pixel array in
a v7.3 file is not read at all: it becomes an ImageSource that reads items on demand (images.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import DataError
from .labels import as_multi_hot

IMAGE_NAMES = ("IAll", "XAll", "images", "image", "imgs", "img", "I_all", "X_all", "img_feats",
               "image_feats", "features", "X", "feat", "feats", "fea", "data")
TEXT_NAMES = ("YAll", "TAll", "tags", "texts", "text", "txt", "Y_all", "T_all", "bow")
LABEL_NAMES = ("LAll", "labels", "label", "L_all", "lab", "gnd", "L", "Y")
QUERY_NAMES = ("indexQuery", "indexTest", "query_idx", "test_idx")
DB_NAMES = ("indexDatabase", "indexRetrieval", "retrieval_idx", "database_idx", "db_idx")
TRAIN_NAMES = ("indexTrain", "train_idx")
SPLIT_SUBSETS = (("te", "query"), ("db", "retrieval"), ("tr", "train"))


class LazyPixels:
    """A 4-D array of a v7.3 file, not read: its name, stored (h5py) shape and dtype. `shape` and
    `ndim` are MATLAB's (the stored shape reversed), like the arrays next to it."""

    def __init__(self, path, key: str, stored_shape: tuple, dtype):
        self.path, self.key, self.stored_shape, self.dtype = path, key, tuple(stored_shape), dtype
        self.shape, self.ndim = self.stored_shape[::-1], len(self.stored_shape)

    def read(self) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            return np.asarray(f[self.key][()]).T


def read_mat_variables(path: Path, *, lazy_pixels: bool = False) -> dict[str, np.ndarray]:
    """All numeric variables of a .mat file (v5 or v7.3) or of every .mat file in a folder, in
    MATLAB's orientation; structs are flattened to 'struct.field'. lazy_pixels: 4-D arrays of v7.3
    files come back as LazyPixels, not read."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".mat")
        if not files:
            raise DataError(f"{path}: folder holds no .mat files")
        out: dict[str, np.ndarray] = {}
        for f in files:
            for k, v in read_mat_variables(f, lazy_pixels=lazy_pixels).items():
                if k in out:
                    raise DataError(f"{path}: variable {k!r} appears in more than one .mat file (again in {f.name})")
                out[k] = v
        return out
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if len(head) >= 8 and head[:8] == b"\x89HDF\r\n\x1a\n" or (len(head) == 512 and _hdf5_at_512(path)):
        return _read_v73(path, lazy_pixels)
    if head[:6] == b"MATLAB":
        return _read_v5(path)
    raise DataError(f"{path}: not a MATLAB file (no MATLAB v5 header and no HDF5 signature)")


def _hdf5_at_512(path: Path) -> bool:
    # MATLAB v7.3 writes a 512-byte text header ("MATLAB 7.3 MAT-file") before the HDF5 superblock.
    with open(path, "rb") as fh:
        fh.seek(512)
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def _read_v5(path: Path) -> dict[str, np.ndarray]:
    import scipy.io
    import scipy.sparse

    try:
        # No squeezing: a (n, 1) label matrix must stay 2-D.
        raw = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except NotImplementedError as e:  # scipy's message for v7.3 files lacking the HDF5 signature
        raise DataError(f"{path}: unsupported MATLAB file ({e})") from e
    except Exception as e:
        raise DataError(f"{path}: corrupt or truncated MATLAB v5 file ({type(e).__name__}: {e})") from e
    out: dict[str, np.ndarray] = {}

    def add(name, value):
        if scipy.sparse.issparse(value):
            out[name] = value.toarray()
        elif isinstance(value, np.ndarray) and value.dtype.names:  # a struct: recurse into 1x1 ones
            if value.size == 1:
                rec = value.reshape(-1)[0]
                for field in value.dtype.names:
                    add(f"{name}.{field}", rec[field])
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            out[name] = value

    for k, v in raw.items():
        if not k.startswith("__"):
            add(k, v)
    return out


def _read_v73(path: Path, lazy_pixels: bool = False) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Group) and "MATLAB_sparse" in obj.attrs:
                    out[name.replace("/", ".")] = _v73_sparse(obj)
                elif isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" and not _inside_sparse(obj):
                    if name.startswith("#refs#") or obj.attrs.get("MATLAB_class") in (b"char", "char"):
                        return  # cell-array storage and strings are not data arrays
                    if lazy_pixels and obj.ndim == 4:
                        out[name.replace("/", ".")] = LazyPixels(path, name, obj.shape, obj.dtype)
                        return
                    arr = obj[()]
                    out[name.replace("/", ".")] = np.asarray(arr).T  # undo MATLAB's column-major layout

            f.visititems(visit)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: corrupt or truncated HDF5 (MATLAB v7.3) file ({type(e).__name__}: {e})") from e
    return out


def _inside_sparse(ds) -> bool:
    return "MATLAB_sparse" in ds.parent.attrs


def _v73_sparse(group) -> np.ndarray:
    # MATLAB sparse in v7.3: CSC arrays data / ir (row indices) / jc (column pointers).
    import scipy.sparse

    n_rows = int(group.attrs["MATLAB_sparse"])
    jc = group["jc"][()].astype(np.int64)
    ir = group["ir"][()].astype(np.int64) if "ir" in group else np.zeros(0, np.int64)
    data = group["data"][()] if "data" in group else np.zeros(0)
    return scipy.sparse.csc_matrix((data, ir, jc), shape=(n_rows, len(jc) - 1)).toarray()


def find_variable(vars_: dict, names, *, prefixes=("", "param.")) -> tuple[str, np.ndarray] | None:
    """(name, array) of the first of `names` (case-insensitive, at the top level or in `param`)."""
    lower = {k.lower(): k for k in vars_}
    for p in prefixes:
        for nm in names:
            k = lower.get((p + nm).lower())
            if k is not None:
                return k, vars_[k]
    return None


def load_mat_arrays(path, *, stream_images: bool = False, image_workers: int = 2) -> dict:
    """Read a MATLAB data set into {'image', 'text', 'labels'} arrays (item axis first) plus
    optional 0-based 'query_idx', 'retrieval_idx', 'train_idx', or raise DataError.
    stream_images: a v7.3 pixel array becomes an ImageSource read on demand by `image_workers`."""
    path = Path(os.fspath(path))
    vars_ = read_mat_variables(path, lazy_pixels=stream_images)
    if all(find_variable(vars_, (f"{m}_{s}",)) for m in "ITL" for s, _ in SPLIT_SUBSETS[:2]):
        # Subsets are concatenated: read them (this layout ships features, rarely pixels).
        return _split_layout(path, {k: v.read() if isinstance(v, LazyPixels) else v for k, v in vars_.items()})
    from .mat_subsets import find_subsets, load_subsets

    if find_subsets(vars_) is not None:
        return load_subsets(path, {k: v.read() if isinstance(v, LazyPixels) else v for k, v in vars_.items()})
    found = {}
    for role, names in (("image", IMAGE_NAMES), ("text", TEXT_NAMES), ("labels", LABEL_NAMES)):
        hit = find_variable(vars_, names)
        if hit is not None:
            found[role] = hit
    if "labels" not in found or not ({"image", "text"} & set(found)):
        role, names = ("labels", LABEL_NAMES) if "labels" not in found else ("image or text", IMAGE_NAMES + TEXT_NAMES)
        raise DataError(f"{path}: no {role} array found; expected one of {', '.join(names)} "
                        f"(or the split layout I_te/T_te/L_te, I_db/T_db/L_db, or traindata/traingnd, "
                        f"testdata/testgnd); file has: {', '.join(sorted(vars_)) or 'no numeric arrays'}")
    key, labels = found["labels"]
    found["labels"] = key, as_multi_hot(labels, key, path)
    arrays = orient_arrays(path, {role: arr for role, (_, arr) in found.items()},
                           {role: key for role, (key, _) in found.items()}, image_workers)
    n = arrays["labels"].shape[0]
    for role, names in (("query_idx", QUERY_NAMES), ("retrieval_idx", DB_NAMES), ("train_idx", TRAIN_NAMES)):
        hit = find_variable(vars_, names)
        if hit is not None:
            arrays[role] = _one_based(path, hit[0], hit[1], n)
    return arrays


def _one_based(path, key, arr, n) -> np.ndarray:
    idx = np.asarray(arr).reshape(-1)
    if idx.size and (not np.all(np.isfinite(idx)) or not np.array_equal(idx, np.round(idx))):
        raise DataError(f"{path}: index array {key} holds non-integer values")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 1 or idx.max() > n):
        raise DataError(f"{path}: index array {key} must be 1-based in [1, {n}], got min {idx.min()}, max {idx.max()}")
    return idx - 1


def _split_layout(path, vars_) -> dict:
    parts = {}
    for s, subset in SPLIT_SUBSETS:
        if subset == "train" and not all(find_variable(vars_, (f"{m}_{s}",)) for m in "ITL"):
            continue
        keys = {role: find_variable(vars_, (f"{m}_{s}",)) for role, m in (("image", "I"), ("text", "T"), ("labels", "L"))}
        parts[subset] = orient_arrays(path, {r: a for r, (_, a) in keys.items()}, {r: k for r, (k, _) in keys.items()})
    q, db = parts["query"], parts["retrieval"]
    for role in ("image", "text", "labels"):
        if q[role].shape[1:] != db[role].shape[1:]:
            raise DataError(f"{path}: {role} of the queries {q[role].shape} and of the database "
                            f"{db[role].shape} differ in shape beyond the item axis")
    image, text, labels = (np.concatenate([q[r], db[r]]) for r in ("image", "text", "labels"))
    nq, ndb = len(q["labels"]), len(db["labels"])
    out = dict(image=image, text=text, labels=labels, query_idx=np.arange(nq),
               retrieval_idx=np.arange(nq, nq + ndb))
    if "train" in parts:
        out.update(_match_train(path, out, parts["train"], nq, ndb))
    return out


def _match_train(path, out, tr, nq, ndb) -> dict:
    """Training items of split-layout files are copies of database items; find them by exact row
    equality. Items not found in the database are appended to it (the paper's protocol trains on
    database items, docs/spec.md §8)."""
    for role in ("image", "text", "labels"):
        if tr[role].shape[1:] != out[role].shape[1:]:
            raise DataError(f"{path}: {role} of the training set {tr[role].shape} and of the database "
                            f"{out[role].shape} differ in shape beyond the item axis")
    def row_keys(sl, arrays):
        # float64 bytes, so that a training copy saved with another dtype still matches
        return [b"".join(np.ascontiguousarray(arrays[r][i], dtype=np.float64).tobytes()
                         for r in ("image", "text", "labels")) for i in sl]
    db_pos: dict[bytes, int] = {}
    for j, key in zip(range(nq, nq + ndb), row_keys(range(nq, nq + ndb), out)):
        db_pos.setdefault(key, j)
    train, extra = [], []
    for i, key in enumerate(row_keys(range(len(tr["labels"])), tr)):
        if key in db_pos:
            train.append(db_pos.pop(key))  # pop: two identical training rows map to two database rows
        else:
            extra.append(i)
    res = {}
    if extra:
        start = nq + ndb
        res = {r: np.concatenate([out[r], tr[r][extra]]) for r in ("image", "text", "labels")}
        res["retrieval_idx"] = np.arange(nq, start + len(extra))
        train += list(range(start, start + len(extra)))
    res["train_idx"] = np.sort(np.asarray(train, dtype=np.int64))
    return res


def orient_arrays(path, arrays: dict, keys: dict, image_workers: int = 2) -> dict:
    """Put the item axis first. n = the size that the arrays (first or last axis) share; `arrays`
    holds labels and one or both modalities, `keys` their variable names (for messages)."""
    def ends(a):
        if a.ndim == 1:
            return {a.shape[0]}
        return {a.shape[0], a.shape[-1]} if a.ndim >= 2 else set()
    arrays = {role: a.reshape(-1, 1) if role == "labels" and a.ndim == 1 else a for role, a in arrays.items()}
    for role, a in arrays.items():
        if a.ndim not in ((2, 4) if role == "image" else (2,)):
            raise DataError(f"{path}: {keys[role]} ({role}) must be "
                            f"{'2-D (n, d) features or 4-D pixels' if role == 'image' else '2-D (n, d)'}, "
                            f"got shape {a.shape}")
    common = set.intersection(*(ends(a) for a in arrays.values()))
    if not common:
        raise DataError(f"{path}: row counts disagree: "
                        + ", ".join(f"{keys[r]} {a.shape}" for r, a in arrays.items()) + " share no item-axis size")
    # Prefer MATLAB's orientation (items first) when several sizes would fit.
    n = arrays["labels"].shape[0] if arrays["labels"].shape[0] in common else max(common)
    out = {}
    for role, a in arrays.items():
        if a.ndim == 2:
            out[role] = a if a.shape[0] == n else a.T
        else:
            out[role] = _pixels(path, keys[role], a, n, image_workers)
    return out


def _pixels(path, key, a, n, image_workers: int = 2) -> np.ndarray:
    axes = list(range(4))
    item = 0 if a.shape[0] == n else 3
    rest = [ax for ax in axes if ax != item]
    chan = [ax for ax in rest if a.shape[ax] == 3]
    if not chan:
        raise DataError(f"{path}: {key} is 4-D {a.shape} but has no colour axis of size 3")
    # Channels next to the item axis (n,3,H,W / H,W,3,n) or at the far end (n,H,W,3 / 3,H,W,n).
    c = chan[0] if len(chan) == 1 else (1 if item == 0 else 2)
    hw = [ax for ax in rest if ax != c]
    if isinstance(a, LazyPixels):
        from .images import HDF5Reader, ImageSource

        # MATLAB axis m is stored (h5py) axis 3 - m.
        reader = HDF5Reader(a.path, a.key, 3 - item, tuple(3 - ax for ax in (c, *hw)), a.stored_shape, a.dtype)
        return ImageSource(reader, workers=image_workers)
    out = np.transpose(a, (item, c, *hw))
    if out.dtype != np.uint8:
        if out.min() < 0 or out.max() > 255 or not np.array_equal(out, np.round(out)):
            raise DataError(f"{path}: {key} pixels must be integers in [0, 255], got {out.dtype} "
                            f"in [{out.min()}, {out.max()}]")
        out = out.astype(np.uint8)
    return np.ascontiguousarray(out)
