"""The list-file layout of DeepHash-pytorch and HashNet: a folder with

  test.txt       the queries
  database.txt   the retrieval database
  train.txt      the training items

one image per line, `relative/path.jpg 0 1 0 ...`: the path (relative to the image root, by
default the folder of the list files; absolute paths are kept), then its labels, a 0/1 row
(multi-hot, c values) or a single class number (one-hot, labels.py). The three files are the
split. An image listed more than once (in train.txt and database.txt, typically) is one item;
listing it with different labels is an error naming both lines. Queries must not be in the
database or the training set. Images are decoded from disk batch by batch (images.ImageSource);
every error names the list file and the line.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .dataset import DataError, UnlabeledItemsError
from .images import DEFAULT_WORKERS, FileReader, ImageSource
from .labels import one_hot

LIST_FILES = (("query_idx", "test.txt"), ("retrieval_idx", "database.txt"), ("train_idx", "train.txt"))
FILE_NAMES = tuple(name for _, name in LIST_FILES)


def is_list_folder(path: Path) -> bool:
    """A folder holding any of test.txt / database.txt / train.txt (and no labels.txt, which marks
    the text-list layout)."""
    return path.is_dir() and not (path / "labels.txt").is_file() and any((path / f).is_file() for f in FILE_NAMES)


def list_folder(path: Path) -> Path:
    if path.is_file() and path.name in FILE_NAMES:
        path = path.parent
    if not is_list_folder(path):
        raise DataError(f"{path}: not a list-file folder (needs {', '.join(FILE_NAMES)})")
    return path


class ListFileReader(FileReader):
    """Image files whose messages name the list file and line each item came from."""

    def __init__(self, paths, size: int, where: list[tuple[str, int]]):
        super().__init__(paths, size, origin="list files", unit="line")
        self.where = list(where)

    def describe(self, row: int) -> str:
        file, line = self.where[row]
        return f"{file}: line {line}: image file {self.paths[row]}"


class _Lines:
    """The lines of one list file: image paths, the label text after each and line numbers."""

    def __init__(self, path: Path):
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        self.names, self.rests, self.lines = [], [], []
        for number, line in enumerate(text.splitlines(), 1):
            parts = line.split(None, 1)
            if not parts:
                continue
            if len(parts) == 1:
                raise DataError(f"{path}: line {number}: no labels after the image path {parts[0]!r}")
            self.names.append(parts[0])
            self.rests.append(parts[1].rstrip())
            self.lines.append(number)
        if not self.names:
            raise DataError(f"{path}: no items (every line is empty)")

    def first_width(self) -> int:
        return len(self.rests[0].split())

    def labels(self, width: int, first: str) -> np.ndarray:
        """int64 (rows, width), or DataError naming the first line that does not fit."""
        values = self._parse_plain(width)
        if values is None:
            values = self._parse_each(width, first)
        if width > 1:  # a multi-hot row; a single value may be a class number (labels.py)
            bad = np.flatnonzero(((values != 0) & (values != 1)).any(1))
            if len(bad):
                row = values[bad[0]]
                raise DataError(f"{self.path}: line {self.lines[bad[0]]}: label values must be 0 or 1, got "
                                f"{row[(row != 0) & (row != 1)][0]}")
        return values

    def _parse_plain(self, width: int) -> np.ndarray | None:
        """The common case at C speed (ImageNet-100's 128,000 lines of 100 values: about 1 s instead
        of 5): digits separated by single spaces, `width` per line. None for anything else."""
        joined = "\n".join(self.rests)
        if "  " in joined or _PLAIN.fullmatch(joined) is None:
            return None
        if any(r.count(" ") + 1 != width for r in self.rests):
            return None
        values = np.fromstring(joined, dtype=np.int64, sep=" ")
        return values.reshape(len(self.rests), width) if values.size == len(self.rests) * width else None

    def _parse_each(self, width: int, first: str) -> np.ndarray:
        out = np.empty((len(self.rests), width), dtype=np.int64)
        for i, (rest, number) in enumerate(zip(self.rests, self.lines)):
            tokens = rest.split()
            if len(tokens) != width:
                raise DataError(f"{self.path}: line {number}: {len(tokens)} label values, expected {width} "
                                f"(as {first})")
            for j, t in enumerate(tokens):
                try:
                    out[i, j] = int(t)
                except (ValueError, OverflowError):
                    raise DataError(f"{self.path}: line {number}: label value {t!r} is not an integer") from None
        return out


_PLAIN = re.compile(r"[0-9 \n]*")


def load_list_arrays(path, *, image_root=None, image_size: int = 224, stream_images: bool = True,
                     image_workers: int = DEFAULT_WORKERS, check_files: bool = True,
                     drop_unlabeled: bool = False) -> dict:
    """{'image': ImageSource (or uint8 array), 'labels', 'query_idx', 'retrieval_idx', 'train_idx'}
    of a list-file folder. check_files: report a missing image now (False: leave it to a scan).
    drop_unlabeled=False: an image without any label is an error naming its file and line."""
    folder = list_folder(Path(os.fspath(path)))
    missing = [f for f in FILE_NAMES if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder}: missing list file(s) {', '.join(missing)} (the layout has test.txt, "
                        "database.txt and train.txt)")
    root = folder if image_root is None else Path(os.fspath(image_root))
    if not root.is_dir():
        raise DataError(f"{root}: image root folder not found")
    files = [(role, _Lines(folder / name)) for role, name in LIST_FILES]
    first = files[0][1]
    width = first.first_width()
    where_first = f"{first.path.name} line {first.lines[0]}"
    rows = {role: lines.labels(width, where_first) for role, lines in files}
    labels, index = _deduplicate(files, rows, root)
    empty = np.flatnonzero(labels.sum(1) == 0)
    if len(empty) and not drop_unlabeled:
        file, line = index["where"][empty[0]]
        raise UnlabeledItemsError(file, len(empty), line)  # "row" of the list file: its line
    out = {"labels": labels, **index}
    source = ImageSource(ListFileReader(out.pop("paths"), image_size, out.pop("where")), workers=image_workers)
    if check_files:
        source.check_files()
    out["image"] = source if stream_images else source.load().numpy()
    return out


def _deduplicate(files, rows: dict, root: Path) -> tuple[np.ndarray, dict]:
    """One item per distinct image path; each file's rows as item indices."""
    item_of: dict[str, int] = {}
    paths, where, label_rows = [], [], []
    index, line_of = {}, {}
    for role, lines in files:
        positions, line_of[role] = [], {}
        for name, row, number in zip(lines.names, rows[role], lines.lines):
            full = name if os.path.isabs(name) else os.path.join(root, name)
            key = os.path.normpath(full)
            item = item_of.get(key)
            if item is None:
                item = item_of[key] = len(paths)
                paths.append(full)
                where.append((str(lines.path), number))
                label_rows.append(row)
            elif not np.array_equal(label_rows[item], row):
                file, line = where[item]
                raise DataError(f"{lines.path}: line {number}: {name} is listed with labels "
                                f"{' '.join(map(str, row))}, but {Path(file).name} line {line} gives "
                                f"{' '.join(map(str, label_rows[item]))}")
            positions.append(item)
            line_of[role].setdefault(item, number)
        index[role] = np.unique(np.asarray(positions, dtype=np.int64))
    names = dict(LIST_FILES)
    for role, why in (("retrieval_idx", "queries are never in the database"),
                      ("train_idx", "queries are never trained on")):
        both = np.intersect1d(index["query_idx"], index[role])
        if len(both):
            item = int(both[0])
            file, line = where[item]
            raise DataError(f"{file}: line {line}: this query image is also on line {line_of[role][item]} of "
                            f"{names[role]} ({len(both)} such images; {why})")
    labels = np.stack(label_rows)
    if labels.shape[1] == 1 and np.any((labels != 0) & (labels != 1)):
        (labels,), _ = one_hot([labels], ["the class numbers"], files[0][1].path.parent)
    return labels.astype(np.float32), {**index, "paths": paths, "where": where}
