"""The one way dchml writes a file: atomically, with the umask's mode, and with a clear error.

`write_atomic(path, write)` calls `write(f)` on a binary file object for a temporary file in the
destination's folder, then flushes, fsyncs and `os.replace`s it onto `path` and fsyncs the folder,
so a reader, a crash or a full disk never leaves a half-written `path`: the previous file stays
until the new one is complete. On any failure the temporary file is removed.

Modes: the file gets `0o666 & ~umask`, as `open()` or `cp` would give it (mkstemp alone makes 0600).

Errors: an OS error while writing (no space, read-only file system, no permission, the folder
removed) raises `OutputError`, whose message names the file and the OS error, even where the
serialiser (torch.save) would replace the OS error with its own text.

Temporary files are named `.NAME.XXXXXXXX.dchml-tmp`; `is_temp_file` recognises them (and those
of earlier dchml versions) so that a killed run's leftovers can be removed (dchml/io/run_dir.py).
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile

TEMP_SUFFIX = ".dchml-tmp"
# mkstemp's random part: 8 characters of [a-z0-9_]. Earlier dchml versions ended temporaries in
# ".tmp"; those are recognised only for the names of dchml's own outputs.
_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")
_OLD_TEMP = re.compile(r"^\.(checkpoint\.pt|metrics\.json|report\.md|[a-z_]+\.png)\.[a-z0-9_]{8}\.tmp$")


class OutputError(OSError):
    """Writing an output file failed; the message names the file and the OS error."""

    def __init__(self, path: str, cause: OSError):
        code = errno.errorcode.get(cause.errno, "") if cause.errno else ""
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, f"cannot write {path}: {reason}" + (f" ({code})" if code else ""))
        self.path = path

    def __str__(self) -> str:
        return self.strerror


# The exceptions that report the user's mistake or their machine's state (bad input or arguments,
# a missing or unwritable file, a full disk, a diverging run): the command line and the workers it
# spawns report them in one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, FloatingPointError, OutputError)


def is_temp_file(name: str) -> bool:
    """True for the name of a temporary file of write_atomic (or of an earlier dchml)."""
    return bool(_TEMP.match(name) or _OLD_TEMP.match(name))


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is racy)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _RecordingFile:
    """A file object that remembers the OS error of a failed write: torch.save turns it into
    "enforce fail at inline_container.cc ... unexpected pos", which says nothing to a user."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def write_atomic(path, write) -> None:
    """Write `path` atomically through `write(f)` (f: a binary file object, seekable); see the
    module docstring. Raises OutputError for an OS error, anything else `write` raises as is."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TEMP_SUFFIX, dir=folder)
        with os.fdopen(fd, "wb") as raw:
            os.fchmod(raw.fileno(), 0o666 & ~current_umask())
            f = _RecordingFile(raw)
            try:
                write(f)
            except Exception as exc:
                if f.error is not None and not isinstance(exc, OSError):
                    raise f.error from None
                raise
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(folder)
    except OSError as exc:
        raise (exc if isinstance(exc, OutputError) else OutputError(path, exc)) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # the folder itself is gone, or was never there


def _fsync_folder(folder: str) -> None:
    """Make the rename durable. Some file systems cannot fsync a folder (EINVAL): nothing to do."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def write_bytes(path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(obj, path) -> None:
    """obj as indented JSON plus a newline (serialised first, so a bad value writes nothing)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")
