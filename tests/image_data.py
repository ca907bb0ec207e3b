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
