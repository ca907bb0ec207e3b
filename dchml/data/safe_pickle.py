"""Reading pickled NumPy data without running any code from the file.

`pickle.load` calls whatever callable a file names (os.system, builtins.exec, ...), so a
downloaded pickle is a program. `load_arrays_pickle` reads one with an unpickler whose
`find_class` hands out only NumPy's array and dtype reconstruction, the only callables that
CIFAR-10's python batches (and arrays pickled by NumPy itself) name; any other name stops the
load with a DataError before anything is called. Dtypes that hold Python objects are refused too,
so the result is plain data: dicts, lists, numbers, bytes, strings and numeric arrays.
"""
from __future__ import annotations

import io
import os
import pickle

import numpy as np

from .dataset import DataError


def _numpy_module(*names):
    """The first of `names` that imports (numpy 2 renamed numpy.core to numpy._core)."""
    import importlib

    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"none of {names} can be imported")


class RefusedPickle(DataError):
    """A pickle names a callable outside the allowed NumPy reconstruction (nothing was called)."""


def _plain_dtype(*args):
    """numpy.dtype(*args), refusing dtypes that hold Python objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedPickle(f"asks for a dtype of Python objects ({dtype})")
    return dtype


def _allowed() -> dict:
    multiarray = _numpy_module("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = _numpy_module("numpy._core.numeric", "numpy.core.numeric")
    reconstruct = getattr(multiarray, "_reconstruct")
    frombuffer = getattr(numeric, "_frombuffer")  # how NumPy pickles arrays under protocol 5
    out = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(module, "_reconstruct")] = reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(module, "_frombuffer")] = frombuffer
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = _plain_dtype
    return out


class ArraysUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain data and NumPy arrays (see the module doc)."""

    def __init__(self, file, *, encoding: str = "bytes"):
        super().__init__(file, encoding=encoding)
        self._table = _allowed()

    def find_class(self, module, name):
        found = self._table.get((module, name))
        if found is None:
            raise RefusedPickle(f"calls {module}.{name}")
        return found

    def persistent_load(self, pid):
        raise RefusedPickle(f"asks for a persistent id ({pid!r})")


def load_arrays_pickle(path, *, what: str = "pickle") -> object:
    """The object pickled in `path`, read by ArraysUnpickler; DataError naming `path` (one line)
    when the file names anything else, is truncated or is not a pickle. `what` names the kind of
    file in messages ("CIFAR-10 batch file")."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        value = ArraysUnpickler(io.BytesIO(raw)).load()
    except RefusedPickle as e:
        raise DataError(f"{path}: refused: the pickle {e}, which a {what} never holds; nothing from it "
                        "was run") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, OverflowError, UnicodeDecodeError) as e:
        kind = "truncated" if isinstance(e, EOFError) or "truncated" in str(e) else "corrupt"
        raise DataError(f"{path}: {kind} {what} ({type(e).__name__}: {e})") from None
    _check_plain(value, path)
    return value


_PLAIN = (dict, list, tuple, bytes, bytearray, str, int, float, bool, complex, type(None), np.generic)


def _check_plain(value, path, depth: int = 0) -> None:
    """Belt and braces: the loaded value holds nothing but plain data and numeric arrays."""
    if depth > 50:
        raise DataError(f"{path}: corrupt pickle (nested more than 50 levels)")
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise DataError(f"{path}: refused: an array of Python objects")
        return
    if not isinstance(value, _PLAIN):
        raise DataError(f"{path}: refused: the pickle builds a {type(value).__name__}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, path, depth + 1)
            _check_plain(v, path, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, path, depth + 1)
