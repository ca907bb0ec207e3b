"""`dchml features`: run frozen backbones once over a whole data set and write a dchml .npz
features file that `dchml train --data F` trains on (the fast, common route; the other is
end-to-end training on the images).

- Images: an image backbone (dchml.method.backbones) on every image, decoded by the source's workers,
  with the same preprocessing as end-to-end training (IHNet.preprocess), in eval mode.
- Text: the data set's bag-of-words rows (raw captions through the vocabulary fitted on the
  training items at load time), or CLIP's text tower on the raw captions.
- Chunked and resumable (dchml.method.feature_chunks): every `chunk_rows` items are written to
  `<out>.partial/` as one checksummed .npz file, next to a manifest of the settings; a second
  run with the same settings checks the saved chunks and computes only the missing ones, a run
  with other settings refuses to mix them, and a damaged chunk is refused by name. At the end the
  chunks are copied into the .npz (atomically) and the partial folder is removed.
- Memory does not grow with the number of images: one loader decodes every image (its workers
  start once), each batch's features go straight into the chunk file, and the assembly copies
  chunks in blocks; a convolutional backbone runs channels_last on the CPU (faster there).

The .npz holds image, text, labels, the split and `encoders` (JSON): the backbone, its weights,
the image size, the skipped images and the text vocabulary (or the CLIP text tower), so a model
trained on it can encode raw captions later.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import CrossModalData
from ..data.images import ImageSource
from ..data.npz import encoders_array
from .backbones import RANDOM, ClipTextEncoder, find_weights, get_spec, load_backbone_weights
from .models import IHNet
from .feature_chunks import FORMAT, FeaturesError, assemble, open_partial, pending_chunks, write_chunk
from .precision import MixedPrecision

TEXT_BACKBONES = ("bow", "clip")
DEFAULT_CHUNK_ROWS = 2048


def image_extractor(backbone: str, weights: str | None, image_size: int) -> IHNet:
    """IHNet's preprocessing + backbone in eval mode; `weights`: a path, "random" (weights drawn
    from seed 0) or None (look in the cache; none found is an error here: random features are
    useless except in tests)."""
    path = find_weights(backbone, weights)
    if path is None and weights != RANDOM:
        from .backbones import cache_dir

        raise FeaturesError(f"no weights for the {get_spec(backbone).title} backbone: pass --image-weights PATH, "
                            f"put them at {cache_dir() / (backbone + '.pth')}, or pass --image-weights random "
                            "(random weights, for tests only)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # "random" weights are the same on every run, so features and encode agree
        net = IHNet(1, None, image_size=image_size, backbone=backbone)
    if path is not None:
        load_backbone_weights(backbone, net.backbone, path)
    net.weights_path = path or RANDOM
    net.backbone_name = backbone
    return net.eval()


def _fingerprint(data: CrossModalData) -> str:
    """What identifies the items: image files (or array), split, and the text rows."""
    h = hashlib.sha256()
    image = data.image
    if isinstance(image, ImageSource):
        reader = image.reader
        h.update(type(reader).__name__.encode())
        h.update("\n".join(getattr(reader, "paths", [])).encode())
        h.update(repr((getattr(reader, "path", None), getattr(reader, "key", None), reader.item_shape)).encode())
        h.update(np.ascontiguousarray(image.rows))
    else:
        h.update(np.ascontiguousarray(image.numpy()))
    for t in (data.labels, data.query_idx, data.retrieval_idx, data.train_idx, data.text):
        if t is not None:  # image-only data has no text rows
            h.update(np.ascontiguousarray(t.numpy()))  # hashed in place: no copy of the text rows
    return h.hexdigest()


def extract_features(data: CrossModalData, out: str, *, image_backbone: str = "alexnet",
                     image_weights: str | None = None, text_backbone: str = "bow", text_weights: str | None = None,
                     device="cpu", batch_size: int = 64, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                     precision: str = "fp32", image_size: int | None = None, progress: bool = False,
                     log=None, on_chunk=None) -> dict:
    """Write the features file `out` (see the module doc) and return its summary.

    data.image must be pixels (an ImageSource or an in-memory uint8 tensor). on_chunk(kind, i):
    called after each chunk is saved (tests use it to interrupt). Raises FeaturesError,
    DataError, or the backbone errors (ValueError) with a message naming the problem.
    """
    if not data.image_is_pixels:
        raise FeaturesError(f"{data.name} has no images" if data.image is None else
                            f"{data.name} already holds {data.image_dim}-d image features, not images")
    if text_backbone not in TEXT_BACKBONES:
        raise FeaturesError(f"text backbone must be one of {', '.join(TEXT_BACKBONES)}, got {text_backbone!r}")
    if text_backbone == "clip" and data.captions is None:
        raise FeaturesError(f"--text-backbone clip needs raw captions; {data.name} has bag-of-words rows only")
    for name, value in (("batch_size", batch_size), ("chunk_rows", chunk_rows)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FeaturesError(f"{name} must be a positive integer, got {value!r}")
    log = log or (lambda message: None)
    device = torch.device(device)
    size = image_size or int(data.image.shape[-1])
    extractor = image_extractor(image_backbone, image_weights, size).to(device)
    amp = MixedPrecision(precision, device)
    out = Path(os.fspath(out))
    settings = {"format": FORMAT, "n": data.n, "data": _fingerprint(data), "image_backbone": image_backbone,
                "image_weights": _describe_file(extractor.weights_path), "image_size": size,
                "text_backbone": text_backbone, "chunk_rows": chunk_rows, "precision": amp.name}
    text_encoder = None
    if text_backbone == "clip":
        clip_name = image_backbone if get_spec(image_backbone).clip_arch else "clip-vit-b-32"
        text_weights = text_weights or find_weights(clip_name, None)
        if text_weights is None:
            raise FeaturesError("no CLIP weights for the text tower: pass --text-weights PATH (an open_clip state dict)")
        text_encoder = ClipTextEncoder(clip_name, text_weights).to(device)
        settings["text_weights"] = _describe_file(text_weights)
    partial = open_partial(out, settings)

    bar = _bar(data.n * (2 if text_encoder else 1), f"features {image_backbone}", progress)
    try:
        pending = pending_chunks(partial, "image", data.n, chunk_rows, bar)
        n_chunks = -(-data.n // chunk_rows)
        if len(pending) < n_chunks:
            log(f"resuming: {n_chunks - len(pending)} of {n_chunks} image chunks already in {partial}")
        # one loader for every chunk still to compute: its workers start once and keep decoding
        # while a chunk is written; a chunk is written batch by batch (memory: one batch)
        batches = _feature_batches(extractor, data.image, [rows for _, rows in pending], batch_size, device, amp, bar)
        try:
            for i, rows in pending:
                write_chunk(partial, "image", i, _next_rows(batches, len(rows)), len(rows))
                if on_chunk is not None:
                    on_chunk("image", i)
        finally:
            batches.close()
        if text_encoder is not None:
            captions = data.captions
            for i, rows in pending_chunks(partial, "text", data.n, chunk_rows, bar):
                features = _text_features(text_encoder, [captions[r] for r in rows], batch_size, bar)
                write_chunk(partial, "text", i, [features], len(rows))
                if on_chunk is not None:
                    on_chunk("text", i)
    finally:
        if bar is not None:
            bar.close()
    encoders = {"image": {"backbone": image_backbone, "weights": extractor.weights_path, "image_size": size,
                          "skipped": list(getattr(data.image, "skipped", ()))}}
    if text_encoder is not None:
        encoders["text"] = {"kind": "clip", "backbone": text_encoder.backbone_name, "weights": text_weights}
    elif data.encoders and "text" in data.encoders:
        encoders["text"] = data.encoders["text"]
    arrays = {"labels": data.labels.numpy(), "query_idx": data.query_idx.numpy(),
              "retrieval_idx": data.retrieval_idx.numpy(), "train_idx": data.train_idx.numpy(),
              "encoders": encoders_array(encoders)}
    if text_encoder is None and data.text is not None:  # image-only data: an .npz without text
        arrays["text"] = data.text.numpy()
    kinds = ("image", "text") if text_encoder is not None else ("image",)
    image_dim = assemble(out, partial, data.n, chunk_rows, kinds, arrays)
    shutil.rmtree(partial)
    return {"path": str(out), "n": data.n, "image_dim": image_dim,
            "text_dim": text_encoder.out_dim if text_encoder else data.text_dim, "encoders": encoders}


def _describe_file(path) -> str:
    if path in (None, RANDOM):
        return RANDOM
    st = os.stat(path)
    return f"{os.path.abspath(path)} ({st.st_size} bytes, modified {int(st.st_mtime)})"


def extract_rows(net: IHNet, images, device="cpu", *, batch_size: int = 64, precision: str = "fp32") -> torch.Tensor:
    """Backbone features (n, d) float32 of every image of `images` (ImageSource or uint8 tensor)."""
    device = torch.device(device)
    n = len(images)
    out, start = np.empty((0, 0), dtype=np.float32), 0
    for features in _feature_batches(net, images, [np.arange(n)], batch_size, device,
                                     MixedPrecision(precision, device), None):
        if start == 0:  # filled in place: held once, not once more by a concatenation
            out = np.empty((n, features.shape[1]), dtype=np.float32)
        out[start:start + len(features)] = features
        start += len(features)
    return torch.from_numpy(out)


def _next_rows(batches, n: int):
    """The next batches from `batches`, n rows in all (a batch never spans two chunks)."""
    taken = 0
    while taken < n:
        features = next(batches)
        taken += len(features)
        yield features


@torch.inference_mode()
def _feature_batches(net: IHNet, images, row_groups, batch_size, device, amp, bar):
    """Yield the backbone features (float32 numpy) of each batch of the rows of each group, in
    order; a batch never spans two groups. Images are decoded by one loader for all groups."""
    batches = [torch.from_numpy(rows[s:s + batch_size]) for rows in row_groups for s in range(0, len(rows), batch_size)]
    if isinstance(images, ImageSource):
        pixels = images.with_options(augment=False).iter_batches(batches)
    else:
        pixels = (images[b] for b in batches)
    layout = _inference_layout(net, device)
    for x in pixels:
        with amp.autocast():
            features = net.backbone(net.preprocess(x.to(device).contiguous(memory_format=layout))).float().cpu().numpy()
        _return_freed_memory()
        yield features
        if bar is not None:
            bar.update(len(x))


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _return_freed_memory() -> None:
    """Give the pages the C allocator holds free back to the system, once per batch. glibc serves
    a batch's mid-size buffers (activations of 8-17 MB) from its heap once its adaptive mmap
    threshold has risen past them, and keeps the freed pages: without this the process grew by
    about 100 MB over 4,000 images (AlexNet, batch 64; measured), with it it stays flat. A no-op
    without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _inference_layout(net: IHNet, device) -> torch.memory_format:
    """channels_last for a convolutional backbone on the CPU (the network is converted once):
    oneDNN's convolutions and max-pooling run about 1.4x faster on it than on NCHW (AlexNet, batch
    64, one thread, measured on this project's 2-core VM), the features equal to float rounding.
    CLIP's transformer and other devices keep their layout (not measured)."""
    if device.type != "cpu" or get_spec(net.backbone_name).clip_arch:
        return torch.contiguous_format
    net.backbone.to(memory_format=torch.channels_last)
    return torch.channels_last


def _text_features(encoder: ClipTextEncoder, captions, batch_size, bar) -> np.ndarray:
    parts = []
    for s in range(0, len(captions), batch_size):
        parts.append(encoder(captions[s:s + batch_size]).cpu())
        if bar is not None:
            bar.update(len(parts[-1]))
    return torch.cat(parts).numpy()


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, file=sys.stderr)
