"""Small generated image-text data sets for the image tests: JPEG files with captions that hold
punctuation and non-ASCII words, in the text-list and index.mat layouts, and a v7.3-like HDF5
pixel file."""
from pathlib import Path

import numpy as np

WORDS = [["cat", "Café"], ["dog", "東京"], ["sea", "naïve"], ["sky", "blue"]]


def pixels(n: int, size: int, seed: int = 0):
    """(n, size, size, 3) uint8 images and (n, 4) multi-hot labels; smooth patterns that depend on
    the labels, so JPEG keeps them recognisable."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 4), dtype=np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        k = int(rng.integers(4))
        labels[i, k] = 1
        if rng.random() < 0.3:
            labels[i, (k + 1) % 4] = 1
        images[i] = np.stack([(xx * (k + 1) + yy * i) % 256, (yy * (k + 2) + 3 * i) % 256,
                              np.full_like(xx, 60 * k + i % 7)], -1)
    return images, labels


def captions(labels) -> list[str]:
    return [", ".join(w for j in np.flatnonzero(row) for w in WORDS[j]) + "!" for row in labels]


def make_textlist(folder, n: int = 30, size: int = 64, seed: int = 0) -> Path:
    """images.txt + JPEGs + labels.txt + captions.txt."""
    from PIL import Image

    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    images, labels = pixels(n, size, seed)
    names = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / "img" / f"{i}.jpg", quality=92)
        names.append(f"img/{i}.jpg")
    (folder / "images.txt").write_text("\n".join(names) + "\n")
    np.savetxt(folder / "labels.txt", labels, fmt="%d")
    (folder / "captions.txt").write_text("\n".join(captions(labels)) + "\n", encoding="utf-8")
    return folder


def corrupt(path) -> None:
    """Cut a JPEG file to a third of its length (a truncated download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 3])


# --- single-modality layouts: CIFAR-10's python folder and DeepHash-pytorch's list files --------

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def py2_pickle(obj) -> bytes:
    """`obj` pickled the way Python 2's cPickle wrote CIFAR-10 (protocol 2, byte strings as
    BINSTRING, numpy.core module names), for the loader to read with encoding='bytes'."""
    import io
    import pickle
    import struct

    class Py2Pickler(pickle._Pickler):
        dispatch = dict(pickle._Pickler.dispatch)

        def save_string(self, obj):
            data = obj if isinstance(obj, bytes) else obj.encode("latin1")
            if len(data) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
            else:
                self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
            self.memoize(obj)

        dispatch[bytes] = save_string
        dispatch[str] = save_string

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_batches(per_class: int, seed: int = 0):
    """(pixels (n, 3, 32, 32) uint8, class numbers (n,)) of a CIFAR-style set, classes shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    pixels = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    pixels[:, 0, 0, 0] = labels  # each image knows its class: checks that pixels and labels stay paired
    return pixels, labels


def make_cifar_folder(folder, per_class: int = 70, seed: int = 0, *, meta: bool = True) -> Path:
    """A cifar-10-batches-py folder: 10 classes x per_class images over data_batch_1..5 and
    test_batch (one sixth each), pickled as the release is, plus batches.meta."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels, labels = cifar_batches(per_class, seed)
    for name, rows in zip(CIFAR_BATCHES, np.array_split(np.arange(len(labels)), 6)):
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels[rows]],
                 b"data": pixels[rows].reshape(len(rows), -1), b"filenames": [b"x_%d.png" % i for i in rows]}
        (folder / name).write_bytes(py2_pickle(batch))
    if meta:
        (folder / "batches.meta").write_bytes(py2_pickle({b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                                          b"label_names": [c.encode() for c in CIFAR_CLASSES]}))
    return folder


def make_list_folder(folder, *, n: int = 12, size: int = 24, seed: int = 0, images=None) -> Path:
    """DeepHash-pytorch list files with JPEGs: test.txt (items 0-2), database.txt (items 3..n-1),
    train.txt (4 database items, one listed twice); labels are 4-column multi-hot rows.
    images: a folder for the JPEGs (default: next to the lists, under img/)."""
    from PIL import Image

    folder = Path(folder)
    root = Path(images) if images is not None else folder
    (root / "img").mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    pics, labels = pixels(n, size, seed)
    lines = []
    for i, pic in enumerate(pics):
        Image.fromarray(pic).save(root / "img" / f"{i}.jpg", quality=92)
        lines.append(f"img/{i}.jpg " + " ".join(map(str, labels[i])) + "\n")
    (folder / "test.txt").write_text("".join(lines[:3]))
    (folder / "database.txt").write_text("".join(lines[3:]))
    (folder / "train.txt").write_text("".join([lines[3], lines[5], lines[5], lines[8], lines[9]]))
    return folder
