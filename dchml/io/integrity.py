"""Integrity of the files dchml writes and reads back (checkpoints, features files and their
partial chunks, saved indexes, .npz data files): every one is a zip archive (torch's checkpoint
format, NumPy's .npz), and zip writers store a CRC-32 of each member's content. Readers do not
all check them (torch.load checks none; np.load only the members it reads to the end), so a
damaged file could load and give wrong answers without a word. `verify_zip` reads every member
and compares its checksum before the file is loaded; CRC-32 runs at several GB/s, a small cost
next to the load itself.

A damaged file raises `DamagedFileError` (a ValueError, so the command line reports it in one
line) naming the file and what is damaged:
  checkpoint runs/x/checkpoint.pt is damaged (checksum mismatch in archive/data/12); ...
"""
from __future__ import annotations

import os
import zipfile
import zlib

_READ = 1 << 22  # bytes checked at a time: memory stays flat whatever the member's size
ZIP_MAGIC = b"PK\x03\x04"


class DamagedFileError(ValueError):
    """A file fails its integrity check; the message names it and the damaged part."""


def is_zip_file(path) -> bool:
    """Whether the file at `path` starts as a zip archive (an OSError while reading propagates)."""
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


def verify_zip(path, what: str, remedy: str) -> None:
    """Check the structure and every member's CRC-32 of the zip archive at `path`; raise
    DamagedFileError "{what} {path} is damaged (...); {remedy}" if anything does not match.
    The caller has checked that the file exists and starts as a zip archive."""
    path = os.fspath(path)
    member = None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                member = info.filename
                with archive.open(info) as f:
                    while f.read(_READ):  # zipfile compares the member's CRC-32 on reaching its end
                        pass
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, zlib.error) as exc:
        raise DamagedFileError(f"{what} {path} is damaged ({_describe(exc, member)}); {remedy}") from None


def _describe(exc: Exception, member: str | None) -> str:
    text = str(exc) or type(exc).__name__
    if text.startswith("Bad CRC-32"):
        return f"checksum mismatch in {member}"
    if member is None:  # the central directory at the end of the file
        return "no readable zip directory: truncated or overwritten"
    return f"{member} unreadable: {text}"
