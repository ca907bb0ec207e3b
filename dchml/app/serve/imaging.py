"""Untrusted image bytes in, checked pixels or re-encoded JPEG thumbnails out.

Every image is opened lazily first (Pillow reads only the header), so its format and its pixel
count are checked before a single pixel is decoded: a 50,000 x 50,000 PNG of a few kilobytes is
refused without allocating its 7.5 GB. What leaves the server is always a fresh JPEG encoded
here, never the bytes of a file, so a data set's file that is not really an image is not served.
"""
from __future__ import annotations

import io
import os
import stat

import numpy as np

from . import limits
from .errors import ServeError


def open_checked(fp, what: str):
    """A lazily opened PIL image of an allowed format and size, or ServeError (413 too large,
    415 not an image of a supported format)."""
    from PIL import Image

    try:
        image = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ServeError(413, f"{what} is too large to decode ({exc})") from None
    except Exception:  # noqa: BLE001  (crafted bytes can make a decoder raise anything: all mean "not an image")
        raise ServeError(415, f"{what} is not an image of a supported format "
                              f"({', '.join(limits.IMAGE_FORMATS)})") from None
    if image.format not in limits.IMAGE_FORMATS:
        fmt = image.format
        image.close()
        raise ServeError(415, f"{what} is a {fmt} image; supported formats: {', '.join(limits.IMAGE_FORMATS)}")
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ServeError(422, f"{what} has no pixels ({width} x {height})")
    if width * height > limits.MAX_IMAGE_PIXELS:
        image.close()
        raise ServeError(413, f"{what} is {width} x {height} pixels; at most {limits.MAX_IMAGE_PIXELS:,} pixels "
                              "(width x height) are accepted")
    return image


def decode_upload(data: bytes, size: int) -> np.ndarray:
    """An uploaded image file -> (3, size, size) uint8 RGB, the way the data set's files are read
    (dchml.data.images.decode_image: bilinear, aspect not kept)."""
    from ...data.images import decode_image

    if not data:
        raise ServeError(422, "the uploaded file is empty")
    if len(data) > limits.MAX_UPLOAD_BYTES:
        raise ServeError(413, f"the uploaded file has {len(data):,} bytes; at most {limits.MAX_UPLOAD_BYTES:,} "
                              "are accepted")
    open_checked(io.BytesIO(data), "the uploaded file").close()
    try:
        return np.array(decode_image(io.BytesIO(data), size))  # a writable copy, for torch
    except Exception as exc:  # noqa: BLE001  (as above: a decoder's failure on untrusted bytes)
        raise ServeError(422, f"the uploaded image is truncated or corrupt ({type(exc).__name__})") from None


def _jpeg(image, side: int) -> bytes:
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def file_thumbnail(path: str, what: str, side: int = limits.THUMBNAIL_SIDE) -> bytes:
    """A JPEG of at most side x side (aspect kept) of a data set's image file, or ServeError 404
    naming why it cannot be served (missing, not a regular file, too large, not an image)."""
    try:
        info = os.stat(path)
    except OSError:
        raise ServeError(404, f"{what}: the image file is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise ServeError(404, f"{what}: the image path is not a regular file")
    if info.st_size > limits.MAX_SERVED_FILE_BYTES:
        raise ServeError(404, f"{what}: the image file has {info.st_size:,} bytes, more than the "
                              f"{limits.MAX_SERVED_FILE_BYTES:,} served")
    try:
        with open(path, "rb") as fh:
            image = open_checked(fh, what)
            with image:
                if image.format == "JPEG":
                    image.draft("RGB", (side, side))  # decode at a reduced DCT scale: much faster for photos
                return _jpeg(image.convert("RGB"), side)
    except ServeError as exc:
        raise ServeError(404, f"{exc.message}; it is not served") from None
    except Exception as exc:  # noqa: BLE001  (as above)
        raise ServeError(404, f"{what}: the image file is truncated or corrupt ({type(exc).__name__})") from None


def pixels_thumbnail(pixels, side: int = limits.THUMBNAIL_SIDE) -> bytes:
    """A JPEG of a (3, H, W) uint8 image held by the data set (pixel arrays, not files)."""
    from PIL import Image

    array = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8).transpose(1, 2, 0))
    return _jpeg(Image.fromarray(array, "RGB"), side)
