"""A run's output folder: one writer at a time, checked before any work, no debris.

`claim(path, resume=, force=)` is held for the whole of a run (`with claim(...):`). It

- creates the folder if needed (which also proves that it can be written),
- takes an OS lock (fcntl.flock on `path/.dchml.lock`, holding the writer's pid): a second run
  into the same folder is refused at once with one clear line; the kernel releases the lock when
  the process ends, however it ends, so a crashed run never blocks the next one,
- removes the temporary files a killed run left there (dchml/io/atomic.py),
- applies the output policy: the folder must be empty (the lock and such leftovers aside), or
  `resume=True` (it must hold checkpoint.pt) or `force=True` (dchml's own files are replaced,
  other files are never touched),
- and, when the run fails while the folder holds nothing but what `claim` put there, removes
  the folder again if `claim` created it: a refused run leaves nothing behind.

The lock file is removed when the run ends. The lock is advisory: it orders dchml runs, not other
programs, and like any flock it may not hold across machines on some network file systems.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager

from .atomic import OutputError, is_temp_file

LOCK_NAME = ".dchml.lock"
CHECKPOINT = "checkpoint.pt"


class OutputDirError(ValueError):
    """The output folder cannot be used as asked (not empty, nothing to resume, in use...)."""


def is_dchml_debris(name: str) -> bool:
    """The lock file or a killed run's temporary file: not content of the folder."""
    return name == LOCK_NAME or is_temp_file(name)


def check_output_dir(path: str, *, resume: bool = False, force: bool = False, several: bool = False) -> None:
    """The output policy for an existing or future folder `path` (see the module docstring).
    several=True: `path` holds one run per code length in bitsN/ sub-folders, so a resume needs
    at least one of their checkpoints."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"output path {path} exists and is not a directory")
    if resume and several:
        if not (os.path.isdir(path) and any(os.path.isfile(os.path.join(path, d, CHECKPOINT)) for d in os.listdir(path))):
            raise OutputDirError(f"nothing to resume: no {os.path.join(path, 'bits*', CHECKPOINT)}")
        return
    if resume:
        if not os.path.isfile(os.path.join(path, CHECKPOINT)):
            raise OutputDirError(f"nothing to resume: {os.path.join(path, CHECKPOINT)} does not exist")
        return
    if os.path.isdir(path) and not force and any(not is_dchml_debris(n) for n in os.listdir(path)):
        raise OutputDirError(
            f"output directory {path} already exists and is not empty; choose a new --out, "
            "pass --resume to continue its run, or --force to replace dchml's files in it"
        )


def check_writable(path: str) -> None:
    """Before any work: `path` (a folder to be) can be created or written, judged from the
    nearest existing folder on its way. Creates nothing."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OutputDirError(f"cannot create {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(probe) else "permission denied"
        raise OutputDirError(f"cannot write to {path}: {probe} is not writable ({reason})")


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def remove_stale_temp_files(path: str) -> list:
    """Remove the temporary files of killed writers in folder `path`; returns their names.
    Only safe while holding the folder's lock (no live writer can own them then)."""
    removed = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if is_temp_file(name) and os.path.isfile(full) and not os.path.islink(full):
            try:
                os.unlink(full)
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def refuse_if_in_use(path: str) -> None:
    """Raise the "in use by another dchml run" error when a live run holds folder `path`.
    Creates nothing: a folder without a lock file is not in use."""
    lock_path = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputDirError(_in_use_message(path, _read_pid(fd))) from None
    except OSError:
        pass  # a file system without flock: the exclusive lock in claim() decides
    finally:
        os.close(fd)


def _in_use_message(path: str, holder: int | None) -> str:
    return (f"output directory {path} is in use by another dchml run" + (f" (pid {holder})" if holder else "")
            + "; wait for it to end or choose another --out")


class _Lock:
    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise OutputDirError(_in_use_message(os.path.dirname(self.path), holder)) from None
            except BaseException:
                os.close(fd)
                raise
            # The previous holder removes the file when it ends: a lock on a file that is no
            # longer at the path locks nothing, so take the current file instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: see acquire
        except OSError:
            pass  # the folder was removed under us
        os.close(self.fd)
        self.fd = None


def _read_pid(fd) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


@contextmanager
def claim(path: str, *, resume: bool = False, force: bool = False, several: bool = False):
    """Hold output folder `path` for a run; see the module docstring. several=True: `path` holds
    one run per code length in bitsN/ sub-folders (each run claims its own as well)."""
    refuse_if_in_use(path)  # "in use" says more than "not empty" about a folder another run is filling
    check_output_dir(path, resume=resume, force=force, several=several)  # a quick refusal before creating anything
    check_writable(path)
    created = missing_folders(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create output directory {path}: {exc.strerror}") from None
    lock = _Lock(path)
    try:
        try:
            lock.acquire()
        except OSError as exc:
            raise OutputError(lock.path, exc) from None
        remove_stale_temp_files(path)
        check_output_dir(path, resume=resume, force=force, several=several)  # again, now that no one else writes here
        yield path
    except BaseException:
        lock.release()
        for folder in created:  # deepest first: a refused run leaves no folder it made
            _remove_if_empty(folder)
        raise
    else:
        lock.release()


def missing_folders(path: str) -> list[str]:
    """The folders `os.makedirs(path)` would create, deepest first."""
    out = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (the run wrote something worth keeping), or already gone
