"""Where `dchml features` keeps its work: the partial folder `<out>.partial/` (a manifest of the
settings and one checksummed .npz chunk of `chunk_rows` items per file) and the assembly of the
chunks into the features file.

Memory stays flat in the number of items: a chunk is written from the batches as they are
computed (one batch held, never the chunk), and the assembly copies each chunk's rows into the
output file in blocks. Every chunk is a zip whose CRC-32 guards its content: a saved chunk is
checked when a resumed run finds it and again when it is assembled, and a damaged one is refused
in one line naming it (dchml.io.integrity).
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..data.dataset import DataError
from ..io.atomic import write_atomic
from ..io.integrity import DamagedFileError, verify_zip

FORMAT = "dchml-features-partial-2"  # 2: chunks are .npz (checksummed), no longer .npy
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same features give the same file
_COPY_BLOCK = 1 << 22  # bytes of a chunk copied at a time into the features file
_MEMBER = "features.npy"


class FeaturesError(ValueError):
    """The extraction cannot run as asked (no weights, a partial folder of other settings, ...)."""


def open_partial(out: Path, settings: dict) -> Path:
    """The partial folder of `out`: made with a manifest of `settings`, or an existing one whose
    manifest matches them (else FeaturesError: work of other settings is never mixed in)."""
    partial = out.with_name(out.name + ".partial")
    manifest = partial / "manifest.json"
    if partial.is_dir():
        try:
            saved = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            saved = None
        if saved != settings:
            changed = sorted(k for k in settings if not isinstance(saved, dict) or saved.get(k) != settings[k])
            raise FeaturesError(f"{partial} holds an interrupted extraction with other settings "
                                f"({', '.join(changed) or 'unreadable manifest'} differ); delete that folder to "
                                "start over, or rerun with the same data and options to continue it")
        return partial
    partial.mkdir(parents=True)
    write_atomic(str(manifest), lambda f: f.write(json.dumps(settings, indent=1).encode()))
    return partial


def chunk_path(partial: Path, kind: str, i: int) -> Path:
    return partial / f"{kind}_{i:06d}.npz"


def pending_chunks(partial: Path, kind: str, n: int, chunk_rows: int, bar=None) -> list:
    """(i, rows) of the chunks of `kind` a previous run did not save; the saved ones are checked
    now (a damaged one is refused before any work) and counted on the progress bar."""
    pending = []
    for i in range(-(-n // chunk_rows)):
        rows = np.arange(i * chunk_rows, min(n, (i + 1) * chunk_rows))
        path = chunk_path(partial, kind, i)
        if not path.is_file():
            pending.append((i, rows))
            continue
        _verify(path)
        if bar is not None:
            bar.update(len(rows))
    return pending


def write_chunk(partial: Path, kind: str, i: int, parts, n_rows: int) -> None:
    """Save chunk i of `kind` (atomically) from `parts`, float32 (rows, dim) arrays of n_rows rows
    in all, each written as it comes."""
    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            write_rows(zf, _MEMBER, parts, n_rows)

    write_atomic(str(chunk_path(partial, kind, i)), write)


def write_rows(zf: zipfile.ZipFile, name: str, parts, n_rows: int) -> int:
    """Stream `parts` (float32 (rows, dim) arrays, n_rows rows in all) into the .npy member
    `name` of zf; returns dim."""
    parts = iter(parts)
    first = np.ascontiguousarray(next(parts), dtype=np.float32)
    dim = int(first.shape[1])
    with zf.open(zipfile.ZipInfo(name, _ZIP_TIME), "w", force_zip64=True) as fh:
        _write_header(fh, n_rows, dim)
        rows, part = 0, first
        while part is not None:
            part = np.ascontiguousarray(part, dtype=np.float32)
            fh.write(memoryview(part).cast("B"))  # (tobytes would copy it)
            rows += len(part)
            part = next(parts, None)
    if rows != n_rows:
        raise DataError(f"{zf.filename or name}: {rows} rows written, expected {n_rows}")
    return dim


def assemble(out: Path, partial: Path, n: int, chunk_rows: int, kinds, arrays: dict) -> int:
    """Write the features file `out` (atomically): the chunks of each kind in `kinds` as one
    (n, dim) float32 member, then `arrays` (name -> array). Returns the first kind's dim."""
    dims = []

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for kind in kinds:
                dims.append(_copy_chunks(zf, kind, partial, n, chunk_rows))
            for name, array in arrays.items():
                with zf.open(zipfile.ZipInfo(f"{name}.npy", _ZIP_TIME), "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(array, order="C"), allow_pickle=False)

    write_atomic(str(out), write)
    return dims[0]


def _copy_chunks(zf: zipfile.ZipFile, kind: str, partial: Path, n: int, chunk_rows: int) -> int:
    """The chunks of `kind` as one (n, dim) float32 member of zf, copied in blocks; returns dim."""
    n_chunks = -(-n // chunk_rows)
    dim = None
    with zf.open(zipfile.ZipInfo(f"{kind}.npy", _ZIP_TIME), "w", force_zip64=True) as fh:
        for i in range(n_chunks):
            path = chunk_path(partial, kind, i)
            _verify(path)
            with zipfile.ZipFile(path) as chunk, chunk.open(_MEMBER) as member:
                shape, dtype = _read_header(member, path)
                expected = min(n, (i + 1) * chunk_rows) - i * chunk_rows
                if dtype != np.float32 or len(shape) != 2 or shape[0] != expected or dim not in (None, shape[1]):
                    raise DataError(f"{path}: chunk of {dtype} {shape}, expected float32 ({expected}, "
                                    f"{dim or 'dim'}); delete {partial} and extract again")
                if dim is None:
                    dim = int(shape[1])
                    _write_header(fh, n, dim)
                shutil.copyfileobj(member, fh, _COPY_BLOCK)
    return dim


def _write_header(fh, n_rows: int, dim: int) -> None:
    np.lib.format.write_array_header_1_0(fh, {"descr": np.dtype(np.float32).str, "fortran_order": False,
                                              "shape": (n_rows, dim)})


def _read_header(member, path) -> tuple:
    version = np.lib.format.read_magic(member)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(member)
    if fortran_order:
        raise DataError(f"{path}: chunk stored in Fortran order; delete it and extract again")
    return shape, dtype


def _verify(path: Path) -> None:
    try:
        verify_zip(path, "features chunk", "delete it and run the same command again to compute it anew")
    except DamagedFileError as exc:
        raise FeaturesError(str(exc)) from None
