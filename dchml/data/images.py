"""Images read lazily from disk: `ImageSource`, a tensor-like view of n images that are decoded
only when a batch is asked for, through a torch DataLoader whose worker processes decode, resize
and augment. Memory stays bounded by the batch size and the workers, whatever the number of images.

Two readers sit behind a source:
- `FileReader`: image files (JPEG, PNG, ...; a text-list folder's images.txt, or the paths of an
  index.mat), decoded with Pillow to RGB and resized to size x size (bilinear, aspect not kept,
  as the paper's 224 x 224 AlexNet input);
- `HDF5Reader`: a pixel array inside an HDF5 / MATLAB v7.3 file (DCMH's MIRFlickr `IAll`), read
  item by item or in runs of consecutive items, never as a whole.

A source quacks like the (n, 3, H, W) uint8 tensor it stands for where the library needs it:
`shape`, `dtype`, `dim()`, `len()`, `source[i]` (one decoded image), `source[index]` (a lazy
view) and `.to(device)` (decodes the view; for small views only). Training and encoding stream
it with `iter_batches` / `training_batches`.

Unreadable files: a missing file is found up front (`check_files`), a corrupt one when it is
decoded, and both stop with a DataError that names the file; `scan()` finds them all at once so
that a loader can drop them (`skip_bad_images=True`, counted in `source.skipped`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError

SKIP_HINT = "; pass --skip-bad-images (skip_bad_images=True) to drop unreadable images"
DEFAULT_WORKERS = 2
_SCAN_SIZE = 32  # scan() decodes JPEGs at reduced scale: all the data is read, little is computed
_CROP = 7 / 8    # training augmentation: a random crop of 7/8 of each side, resized back


class ImageReadError(DataError):
    """An image file is missing, truncated or not an image (the message names it)."""


def decode_image(path, size: int) -> np.ndarray:
    """One image file -> (3, size, size) uint8 RGB (bilinear resize, aspect not kept).

    JPEGs are decoded directly at the smallest DCT scale that still covers size x size
    (Pillow's draft mode): a 640 x 480 photo to 224 decodes about 1.6x faster."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        rgb = im.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        return np.asarray(rgb).transpose(2, 0, 1)


def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation of one (3, H, W) uint8 image: a random crop of 7/8 of each side,
    resized back to H x W, then a horizontal flip with probability 1/2."""
    from PIL import Image

    _, h, w = pixels.shape
    ch, cw = max(1, round(h * _CROP)), max(1, round(w * _CROP))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = np.ascontiguousarray(pixels[:, y:y + ch, x:x + cw].transpose(1, 2, 0))
    out = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR)).transpose(2, 0, 1)
    if rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


# --- readers: picklable, one decoded item at a time ---------------------------------------------


class FileReader:
    """Image files, one per item. `origin` and `unit` name where the list came from in messages:
    "images.txt: line 7: image file a/7.jpg not found"."""

    def __init__(self, paths, size: int, *, origin: str = "images", unit: str = "item"):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise DataError(f"image size must be a positive integer, got {size!r}")
        self.paths = [os.fspath(p) for p in paths]
        self.size, self.origin, self.unit = size, origin, unit

    @property
    def n(self) -> int:
        return len(self.paths)

    @property
    def item_shape(self) -> tuple:
        return (3, self.size, self.size)

    def describe(self, row: int) -> str:
        return f"{self.origin}: {self.unit} {row + 1}: image file {self.paths[row]}"

    def item_key(self, row: int) -> bytes:
        """What identifies item `row` without decoding it: its file name and size."""
        path = self.paths[row]
        size = os.path.getsize(path) if os.path.isfile(path) else -1
        return f"{os.path.basename(path)}:{size}".encode()

    def missing(self) -> list[int]:
        return [i for i, p in enumerate(self.paths) if not os.path.isfile(p)]

    def read_batch(self, rows, *, size: int | None = None) -> list:
        """Decoded images (or an ImageReadError in place of each unreadable one)."""
        return [self._read(r, size or self.size) for r in rows]

    def _read(self, row: int, size: int):
        from PIL import Image, UnidentifiedImageError

        try:
            return decode_image(self.paths[row], size)
        except FileNotFoundError:
            return ImageReadError(f"{self.describe(row)} not found")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
            return ImageReadError(f"{self.describe(row)}: cannot decode ({type(e).__name__}: {e})")


class HDF5Reader:
    """A 4-D pixel array in an HDF5 file (MATLAB v7.3 included), read by item without loading the
    rest. `item_axis` is the stored (h5py) axis that indexes items, `order` the stored axes that
    become channel, height and width of each item."""

    def __init__(self, path, key: str, item_axis: int, order: tuple, shape: tuple, dtype):
        self.path, self.key, self.item_axis, self.order = os.fspath(path), key, item_axis, tuple(order)
        self.stored_shape, self.dtype = tuple(shape), np.dtype(dtype)
        rest = [ax for ax in range(4) if ax != item_axis]
        # Axes of one item as read (the item axis removed), in channel, height, width order.
        self._perm = tuple(rest.index(ax) for ax in self.order)
        self._file, self._pid = None, None

    def __getstate__(self):  # an open h5py file cannot cross into a worker process
        return {**self.__dict__, "_file": None, "_pid": None}

    @property
    def n(self) -> int:
        return self.stored_shape[self.item_axis]

    @property
    def item_shape(self) -> tuple:
        return tuple(self.stored_shape[ax] for ax in self.order)

    def describe(self, row: int) -> str:
        return f"{self.path}: {self.key} item {row + 1}"

    def item_key(self, row: int) -> bytes:
        """What identifies item `row` without reading it: the array and the item's position."""
        return f"{os.path.basename(self.path)}:{self.key}:{row}".encode()

    def missing(self) -> list[int]:
        return []  # the file was opened when the data set was loaded

    def _dataset(self):
        import h5py

        if self._file is None or self._pid != os.getpid():  # workers reopen: handles are per process
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file[self.key]

    def read_batch(self, rows, *, size: int | None = None) -> list:
        """Items `rows`, read as runs of consecutive items (one HDF5 read per run)."""
        rows = [int(r) for r in rows]
        order = sorted(set(rows))
        got: dict[int, object] = {}
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order) and order[stop] == order[stop - 1] + 1:
                stop += 1
            lo, hi = order[start], order[stop - 1] + 1
            try:
                block = self._read_run(lo, hi)
                for r in range(lo, hi):
                    got[r] = block[r - lo]
            except Exception as e:  # noqa: BLE001  (h5py raises OSError, KeyError, ...)
                for r in range(lo, hi):
                    got[r] = ImageReadError(f"{self.describe(r)}: cannot read ({type(e).__name__}: {e})")
            start = stop
        return [got[r] for r in rows]

    def _read_run(self, lo: int, hi: int) -> list:
        index = [slice(None)] * 4
        index[self.item_axis] = slice(lo, hi)
        block = np.moveaxis(np.asarray(self._dataset()[tuple(index)]), self.item_axis, 0)
        out = []
        for i, item in enumerate(block):
            item = item.transpose(self._perm)
            if item.dtype != np.uint8:
                if item.min() < 0 or item.max() > 255 or not np.array_equal(item, np.round(item)):
                    out.append(ImageReadError(f"{self.describe(lo + i)}: pixels must be integers in [0, 255], "
                                              f"got {item.dtype} in [{item.min()}, {item.max()}]"))
                    continue
                item = item.astype(np.uint8)
            out.append(np.ascontiguousarray(item))
        return out


# --- the torch Dataset the DataLoader workers run ---------------------------------------------------


class _ReaderDataset(torch.utils.data.Dataset):
    """Batches of (row, augmentation seed or None) keys -> (uint8 (b, 3, H, W), [error messages]).
    `__getitems__` lets the reader fetch a whole batch at once (runs of HDF5 items); errors come
    back as messages so that the main process raises one clean DataError naming the file."""

    def __init__(self, reader, scan: bool = False):
        self.reader, self.scan = reader, scan

    def __len__(self):
        return self.reader.n

    def __getitem__(self, key):
        return self.__getitems__([key])

    def __getitems__(self, keys):
        rows = [k[0] for k in keys]
        items = self.reader.read_batch(rows, size=_SCAN_SIZE if self.scan else None)
        errors = [(r, str(x)) for r, x in zip(rows, items) if isinstance(x, ImageReadError)]
        if self.scan or errors:
            return None, errors
        out = np.empty((len(items), *self.reader.item_shape), dtype=np.uint8)
        for i, ((_, seed), item) in enumerate(zip(keys, items)):
            out[i] = item if seed is None else augment(item, np.random.default_rng(seed))
        return torch.from_numpy(out), errors


def _as_is(batch):
    return batch


def _loader(reader, keys, workers: int, scan: bool = False):
    kw = dict(num_workers=workers, collate_fn=_as_is)
    if workers:
        kw["prefetch_factor"] = 2  # at most 2 batches per worker in flight: the memory bound
    return torch.utils.data.DataLoader(_ReaderDataset(reader, scan), batch_sampler=keys, **kw)


# --- the source ------------------------------------------------------------------------------------


class ImageSource:
    """n images behind a reader, as a lazy (n, 3, H, W) uint8 'tensor' (see the module doc).

    rows: which reader items this view shows, in order. workers: DataLoader processes that decode
    (0: decode in this process). augment: iter_batches applies the training augmentation when it
    is given seeds. skipped: messages of the unreadable images dropped when the data set was loaded.
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, reader, rows=None, *, workers: int = DEFAULT_WORKERS, augment: bool = False,
                 skipped=()):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise DataError(f"image workers must be an integer >= 0, got {workers!r}")
        self.reader = reader
        self.rows = np.arange(reader.n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.workers, self.augment, self.skipped = workers, bool(augment), tuple(skipped)

    # tensor-like surface
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.reader.item_shape))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.rows)

    def item_keys(self, rows=None) -> list:
        """Identity bytes of the images at `rows` of this view (all by default), without decoding
        them (dchml.data.fingerprint hashes these instead of pixels)."""
        picked = self.rows if rows is None else self.rows[np.asarray(rows, dtype=np.int64)]
        return [self.reader.item_key(int(r)) for r in picked]

    def __repr__(self) -> str:
        return (f"ImageSource({type(self.reader).__name__}, {len(self)} images of "
                f"{'x'.join(map(str, self.reader.item_shape))}, workers={self.workers})")

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.dim() == 0
                                                    and not index.dtype == torch.bool):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"image {i} out of range for {len(self)} images")
            return self.load_rows([self.rows[i]])[0]
        return self._with(rows=self.rows[self._positions(index)])

    def _positions(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(len(self))[index]
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        index = np.asarray(index)
        if index.dtype == np.bool_:
            if index.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {index.shape} for {len(self)} images")
            return np.flatnonzero(index)
        if index.dtype.kind not in "iu":
            raise IndexError(f"images are indexed by integers, slices or boolean masks, got {index.dtype}")
        index = index.reshape(-1).astype(np.int64)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"image index out of range for {len(self)} images")
        return index

    def _with(self, **changes) -> "ImageSource":
        kw = dict(rows=self.rows, workers=self.workers, augment=self.augment, skipped=self.skipped)
        kw.update(changes)
        rows = kw.pop("rows")
        return ImageSource(self.reader, rows, **kw)

    def with_options(self, *, workers: int | None = None, augment: bool | None = None,
                     skipped=None) -> "ImageSource":
        """The same images with other loading options (or another record of skipped images)."""
        changes = (("workers", workers), ("augment", augment), ("skipped", skipped))
        return self._with(**{k: v for k, v in changes if v is not None})

    def to(self, *args, **kwargs) -> torch.Tensor:
        """Decode every image of this view into one tensor and move it (for small views only)."""
        kwargs.pop("non_blocking", None)
        return self.load().to(*args, **kwargs)

    def load(self) -> torch.Tensor:
        """All images of this view, decoded: uint8 (len, 3, H, W)."""
        chunks = [torch.arange(s, min(s + 256, len(self))) for s in range(0, len(self), 256)]
        parts = list(self.iter_batches(chunks))
        return torch.cat(parts) if parts else torch.empty(self.shape, dtype=torch.uint8)

    def load_rows(self, rows) -> torch.Tensor:
        return next(iter(_checked(_loader(self.reader, [[(int(r), None) for r in rows]], 0))))

    # streaming
    def iter_batches(self, chunks, seeds=None):
        """Yield one uint8 (len(chunk), 3, H, W) tensor per chunk of view positions, decoded by
        `workers` processes. seeds: one int64 tensor per chunk (one seed per image) for the
        training augmentation, or None."""
        keys = []
        for j, chunk in enumerate(chunks):
            rows = self.rows[np.asarray(chunk, dtype=np.int64)]
            item_seeds = [None] * len(rows) if seeds is None else [int(s) for s in seeds[j]]
            keys.append(list(zip(rows.tolist(), item_seeds)))
        if not keys:
            return iter(())
        return _checked(_loader(self.reader, keys, min(self.workers, len(keys))))

    def check_files(self) -> None:
        """Raise DataError naming the first missing file (and how many are missing)."""
        present = set(self.rows.tolist())
        missing = [r for r in self.reader.missing() if r in present]
        if missing:
            more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
            raise ImageReadError(f"{self.reader.describe(missing[0])} not found{more}")

    def scan(self, batch_size: int = 64) -> list[tuple[int, str]]:
        """(view position, message) of every image that cannot be decoded (or is missing)."""
        where = {}
        for pos, row in enumerate(self.rows.tolist()):
            where.setdefault(row, pos)
        keys = [[(int(r), None) for r in self.rows[s:s + batch_size]] for s in range(0, len(self), batch_size)]
        bad = []
        for _, errors in _loader(self.reader, keys, min(self.workers, len(keys)), scan=True):
            bad.extend((where[row], message) for row, message in errors)
        return sorted(bad)


def _checked(loader):
    for pixels, errors in loader:
        if errors:
            raise ImageReadError(errors[0][1] + SKIP_HINT)
        yield pixels


def training_batches(inputs, rows: torch.Tensor, positions: torch.Tensor, batch_size: int):
    """The batches of one training pass: (positions of the batch, its input rows) for each run of
    `batch_size` positions. `inputs` is a tensor (indexed in this process) or an ImageSource
    (decoded by its workers, augmented when its `augment` is on, with seeds drawn from torch's
    global generator, so a seeded or resumed run sees the same crops)."""
    chunks = list(positions.split(batch_size))
    if not isinstance(inputs, ImageSource):
        for pos in chunks:
            yield pos, inputs[rows[pos]]
        return
    seeds = None
    if inputs.augment:
        seeds = torch.randint(0, 2 ** 62, (positions.numel(),), dtype=torch.int64).split(batch_size)
    yield from zip(chunks, inputs.iter_batches([rows[pos] for pos in chunks], seeds))


def file_source(names, folder: Path, size: int, *, origin: str, unit: str, workers: int = DEFAULT_WORKERS,
                check: bool = True) -> ImageSource:
    """An ImageSource over image file names (relative to `folder`, or absolute); with check=True a
    missing file is reported now rather than in the middle of training."""
    paths = [Path(name) if os.path.isabs(name) else folder / name for name in names]
    source = ImageSource(FileReader(paths, size, origin=origin, unit=unit), workers=workers)
    if check:
        source.check_files()
    return source
