"""The data set's items as a client sees them: an id (the data row), the labels, the caption, an
image URL, and where the item sits in the split.

Images are served only from what the data set itself lists: the image files behind its
streamed images (a text-list folder's images.txt, an index.mat's paths), the images.txt of a
text-list folder whose image features were extracted beforehand, or the pixel arrays it holds.
A request names an item id, never a path; the id picks a file from that list.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from ...data.dataset import DataError
from ...data.images import FileReader, ImageSource
from . import imaging, limits
from .errors import ServeError


def listed_image_files(data) -> list[str] | None:
    """The image file of each item of `data` (absolute paths, in row order), or None when the
    data set lists no image files."""
    image = getattr(data, "image", None)
    if isinstance(image, ImageSource) and isinstance(image.reader, FileReader):
        return [os.path.abspath(image.reader.paths[int(r)]) for r in image.rows]
    source = getattr(data, "source", None) or {}
    if source.get("format") != "txt":
        return None
    from ...data.textlist import GROUPS, image_names, textlist_folder

    try:
        folder = textlist_folder(Path(source.get("abspath") or source["path"]))
        listing = folder / GROUPS["images"][0]
        names = image_names(listing) if listing.is_file() else None
    except (DataError, OSError, KeyError):
        return None
    if names is None or len(names) != data.n:  # rows dropped at load: the list no longer lines up
        return None
    return [os.path.abspath(name if os.path.isabs(name) else folder / name) for name in names]


class Catalog:
    """Items by id, their thumbnails (cached), and the split: which ids are queries, which form
    the database that searches rank."""

    def __init__(self, data):
        self.n = int(data.n)
        self.name = data.name
        self.labels = data.labels > 0                     # (n, c) bool
        self._label_rows = self.labels.numpy()            # numpy: ~10x faster than torch for one row
        captions = getattr(data, "captions", None)
        self.captions = tuple(captions) if captions is not None else None
        self.files = listed_image_files(data)
        image = getattr(data, "image", None)
        holds_pixels = image is not None and image.dim() == 4
        # Pixel arrays without files (a v7.3 IAll, an .npz of pixels) are shown from the pixels,
        # read one item at a time in this process.
        self._pixels = None
        if self.files is None and holds_pixels:
            self._pixels = image.with_options(workers=0) if isinstance(image, ImageSource) else image
        self.query_rows = data.query_idx.clone()
        self.database_rows = data.retrieval_idx.clone()
        self._split = torch.zeros(self.n, dtype=torch.int8)  # 0: neither, 1: query, 2: database
        self._split[self.query_rows] = 1
        self._split[self.database_rows] = 2
        self._trained = torch.zeros(self.n, dtype=torch.bool)
        self._trained[data.train_idx] = True
        self.thumbnail = functools.lru_cache(maxsize=limits.THUMBNAIL_CACHE)(self._thumbnail)

    @property
    def has_images(self) -> bool:
        return self.files is not None or self._pixels is not None

    @property
    def has_captions(self) -> bool:
        return self.captions is not None

    def row(self, item) -> int:
        """The data row of an item id (int, or the text of a URL path segment), or ServeError 404."""
        if isinstance(item, str):
            text = item.strip()
            if not (text.isascii() and text.isdigit()) or len(text) > 12:
                raise ServeError(404, f"no item {item[:60]!r}: item ids are integers 0..{self.n - 1}")
            item = int(text)
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < self.n:
            raise ServeError(404, f"no item {item!r}: item ids are integers 0..{self.n - 1}")
        return item

    def item(self, row: int) -> dict:
        split = int(self._split[row])
        return {"id": row,
                "labels": np.flatnonzero(self._label_rows[row]).tolist(),
                "caption": None if self.captions is None else self.captions[row],
                "image_url": f"/api/items/{row}/image" if self.has_images else None,
                "split": ("other", "query", "database")[split],
                "trained_on": bool(self._trained[row])}

    def shares_label(self, rows: torch.Tensor, query_row: int) -> list[bool]:
        return (self.labels[rows] & self.labels[query_row]).any(dim=1).tolist()

    def _thumbnail(self, row: int) -> bytes:
        what = f"item {row}"
        if self.files is not None:
            return imaging.file_thumbnail(self.files[row], what)
        if self._pixels is None:
            raise ServeError(404, f"{what} has no image: this data set holds image features, not image files")
        try:
            pixels = self._pixels[row]
        except DataError as exc:
            raise ServeError(404, f"{what}: its image cannot be read ({exc})") from None
        return imaging.pixels_thumbnail(pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels)
