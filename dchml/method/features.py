"""`dchml features`: run frozen backbones once over a whole data set and write a dchml .npz
features file that `dchml train --data F` trains on (the fast, common route; the other is
end-to-end training on the images).

- Images: an image backbone (dchml.method.backbones) on every image, decoded by the source's workers,
  with the same preprocessing as end-to-end training (IHNet.preprocess), in eval mode.
- Text: the data set's bag-of-words rows (raw captions through the vocabulary fitted on the
  training items at load time), or CLIP's text tower on the raw captions.
- Chunked and resumable: every `chunk_rows` items are written to `<out>.partial/` as one .npz
  file (atomically; the zip's CRC-32 guards its content), next to a manifest of the settings; a
  second run with the same settings checks the saved chunks and computes only the missing ones, a
  run with other settings refuses to mix them, and a damaged chunk is refused by name. At the end
  the .npz is assembled chunk by chunk (memory: one chunk), written to a temporary file and
  moved onto `<out>`, and the partial folder is removed.

The .npz holds image, text, labels, the split and `encoders` (JSON): the backbone, its weights,
the image size, the skipped images and the text vocabulary (or the CLIP text tower), so a model
trained on it can encode raw captions later.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import CrossModalData, DataError
from ..data.images import ImageSource
from ..data.npz import encoders_array
from ..io.atomic import write_atomic
from ..io.integrity import DamagedFileError, verify_zip
from .backbones import RANDOM, ClipTextEncoder, find_weights, get_spec, load_backbone_weights
from .models import IHNet
from .precision import MixedPrecision

FORMAT = "dchml-features-partial-2"  # 2: chunks are .npz (checksummed), no longer .npy
TEXT_BACKBONES = ("bow", "clip")
DEFAULT_CHUNK_ROWS = 2048
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same features give the same file


class FeaturesError(ValueError):
    """The extraction cannot run as asked (no weights, a partial folder of other settings, ...)."""


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
        raise FeaturesError(f"{data.name} already holds {data.image_dim}-d image features, not images")
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
    partial = _open_partial(out, settings)

    n_chunks = -(-data.n // chunk_rows)
    bar = _bar(data.n * (2 if text_encoder else 1), f"features {image_backbone}", progress)
    try:
        done = sum(_chunk_path(partial, "image", i).is_file() for i in range(n_chunks))
        if done:
            log(f"resuming: {done} of {n_chunks} image chunks already in {partial}")
        for i in range(n_chunks):
            _chunk(partial, "image", i, chunk_rows, data.n,
                   lambda rows: _image_features(extractor, data.image, rows, batch_size, device, amp, bar), bar,
                   on_chunk)
        if text_encoder is not None:
            captions = data.captions
            for i in range(n_chunks):
                _chunk(partial, "text", i, chunk_rows, data.n,
                       lambda rows: _text_features(text_encoder, [captions[r] for r in rows], batch_size, bar),
                       bar, on_chunk)
    finally:
        if bar is not None:
            bar.close()
    encoders = {"image": {"backbone": image_backbone, "weights": extractor.weights_path, "image_size": size,
                          "skipped": list(getattr(data.image, "skipped", ()))}}
    if text_encoder is not None:
        encoders["text"] = {"kind": "clip", "backbone": text_encoder.backbone_name, "weights": text_weights}
    elif data.encoders and "text" in data.encoders:
        encoders["text"] = data.encoders["text"]
    image_dim = _write_npz(out, partial, data, n_chunks, encoders, text_encoder is not None)
    shutil.rmtree(partial)
    return {"path": str(out), "n": data.n, "image_dim": image_dim,
            "text_dim": text_encoder.out_dim if text_encoder else data.text_dim, "encoders": encoders}


def _describe_file(path) -> str:
    if path in (None, RANDOM):
        return RANDOM
    st = os.stat(path)
    return f"{os.path.abspath(path)} ({st.st_size} bytes, modified {int(st.st_mtime)})"


def _open_partial(out: Path, settings: dict) -> Path:
    partial = out.with_name(out.name + ".partial")
    manifest = partial / "manifest.json"
    if partial.is_dir():
        try:
            saved = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            saved = None
        if saved != settings:
            changed = sorted(k for k in settings if not isinstance(saved, dict) or saved.get(k) != settings[k])
            raise FeaturesError(f"{partial} holds an interrupted extraction with other settings "
                                f"({', '.join(changed) or 'unreadable manifest'} differ); delete that folder to "
                                "start over, or rerun with the same data and options to continue it")
        return partial
    partial.mkdir(parents=True)
    write_atomic(str(manifest), lambda f: f.write(json.dumps(settings, indent=1).encode()))
    return partial


def _chunk_path(partial: Path, kind: str, i: int) -> Path:
    return partial / f"{kind}_{i:06d}.npz"


def _verify_chunk(path: Path) -> None:
    try:
        verify_zip(path, "features chunk", "delete it and run the same command again to compute it anew")
    except DamagedFileError as exc:
        raise FeaturesError(str(exc)) from None


def _read_chunk(path: Path) -> np.ndarray:
    _verify_chunk(path)
    with np.load(path, allow_pickle=False) as z:
        return z["features"]


def _chunk(partial, kind, i, chunk_rows, n, compute, bar, on_chunk) -> None:
    """Compute and save chunk i unless a previous run saved it already."""
    path = _chunk_path(partial, kind, i)
    rows = np.arange(i * chunk_rows, min(n, (i + 1) * chunk_rows))
    if path.is_file():
        _verify_chunk(path)  # found now, not after the chunks still to compute
        if bar is not None:
            bar.update(len(rows))
        return
    values = np.ascontiguousarray(compute(rows), dtype=np.float32)
    write_atomic(str(path), lambda f: np.savez(f, features=values))
    if on_chunk is not None:
        on_chunk(kind, i)


def extract_rows(net: IHNet, images, device="cpu", *, batch_size: int = 64, precision: str = "fp32") -> torch.Tensor:
    """Backbone features (n, d) float32 of every image of `images` (ImageSource or uint8 tensor)."""
    device = torch.device(device)
    rows = np.arange(len(images))
    return torch.from_numpy(_image_features(net, images, rows, batch_size, device, MixedPrecision(precision, device), None))


@torch.inference_mode()
def _image_features(net: IHNet, images, rows, batch_size, device, amp, bar) -> np.ndarray:
    view = images[torch.from_numpy(rows)]
    if isinstance(view, ImageSource):
        batches = view.with_options(augment=False).iter_batches(list(torch.arange(len(view)).split(batch_size)))
    else:
        batches = view.split(batch_size)
    out, start = None, 0
    for x in batches:
        with amp.autocast():
            features = net.backbone(net.preprocess(x.to(device))).float().cpu().numpy()
        if out is None:  # filled in place: a chunk's features are held once, not once more by a concatenation
            out = np.empty((len(rows), features.shape[1]), dtype=np.float32)
        out[start:start + len(features)] = features
        start += len(features)
        if bar is not None:
            bar.update(len(x))
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def _text_features(encoder: ClipTextEncoder, captions, batch_size, bar) -> np.ndarray:
    parts = []
    for s in range(0, len(captions), batch_size):
        parts.append(encoder(captions[s:s + batch_size]).cpu())
        if bar is not None:
            bar.update(len(parts[-1]))
    return torch.cat(parts).numpy()


def _write_npz(out: Path, partial: Path, data: CrossModalData, n_chunks: int, encoders: dict,
               text_from_chunks: bool) -> int:
    """Assemble the .npz from the chunks, streaming each array into the zip (memory: one chunk)."""
    arrays = {"labels": data.labels.numpy(), "query_idx": data.query_idx.numpy(),
              "retrieval_idx": data.retrieval_idx.numpy(), "train_idx": data.train_idx.numpy(),
              "encoders": encoders_array(encoders)}
    if not text_from_chunks:
        arrays["text"] = data.text.numpy()
    dims = {}

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            dims["image"] = _stream_member(zf, "image", partial, n_chunks, data.n)
            if text_from_chunks:
                _stream_member(zf, "text", partial, n_chunks, data.n)
            for name, array in arrays.items():
                with zf.open(zipfile.ZipInfo(f"{name}.npy", _ZIP_TIME), "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(array, order="C"), allow_pickle=False)

    write_atomic(str(out), write)
    return dims["image"]


def _stream_member(zf: zipfile.ZipFile, kind: str, partial: Path, n_chunks: int, n: int) -> int:
    """Write the chunks of `kind` as one (n, dim) float32 .npy member; returns dim."""
    chunk = _read_chunk(_chunk_path(partial, kind, 0))
    dim = int(chunk.shape[-1]) if chunk.ndim == 2 else -1
    with zf.open(zipfile.ZipInfo(f"{kind}.npy", _ZIP_TIME), "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.dtype(np.float32).str, "fortran_order": False,
                                                  "shape": (n, max(dim, 0))})
        rows = 0
        for i in range(n_chunks):
            if i:
                chunk = None  # one chunk in memory at a time
                chunk = _read_chunk(_chunk_path(partial, kind, i))
            if chunk.dtype != np.float32 or chunk.ndim != 2 or chunk.shape[1] != dim:
                raise DataError(f"{_chunk_path(partial, kind, i)}: chunk of {chunk.dtype} {chunk.shape}, "
                                f"expected float32 (rows, {dim}); delete {partial} and extract again")
            fh.write(chunk.tobytes())
            rows += chunk.shape[0]
    if rows != n:
        raise DataError(f"{partial}: the {kind} chunks hold {rows} rows, expected {n}; delete it and extract again")
    return dim


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, file=sys.stderr)
