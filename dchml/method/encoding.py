"""Out-of-sample encoding (docs/spec.md §2, eqs. 17-18): any image, image-feature or text batch ->
binary codes b = sgn(net(x)), packed 8 bits per byte with the ranker's `pack_codes`."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.images import ImageSource
from .models import HashModel, IHNet, THNet, sgn

# Images streamed from disk are encoded this many at a time whatever batch_size says: a batch of
# decoded 224 x 224 images and its backbone activations must fit in memory.
STREAM_BATCH = 128


def _resolve(model: nn.Module, batch: torch.Tensor, modality: str | None) -> nn.Module:
    if isinstance(model, IHNet):
        net, implied = model, "image"
    elif isinstance(model, THNet):
        net, implied = model, "text"
    elif isinstance(model, HashModel):
        if modality is None:
            modality = _infer_modality(model, batch)
        return model.net(modality)
    else:
        raise TypeError(f"model must be a HashModel, IHNet or THNet, got {type(model).__name__}")
    if modality not in (None, implied):
        raise ValueError(f"modality {modality!r} given for a {type(model).__name__}, which encodes {implied}")
    return net


def _infer_modality(model: HashModel, batch: torch.Tensor) -> str:
    spec = model.spec()
    if len(model.modalities) == 1:
        return model.modalities[0]
    if batch.dim() == 4:
        return "image"
    if batch.dim() == 2:
        fits = [m for m, d in (("image", spec["image_dim"]), ("text", spec["text_dim"])) if d == batch.shape[1]]
        if len(fits) == 1:
            return fits[0]
    raise ValueError(
        f"cannot tell the modality of a batch of shape {tuple(batch.shape)} (image "
        f"{'pixels (n, 3, H, W)' if spec['image_dim'] is None else 'features (n, %d)' % spec['image_dim']}, "
        f"text (n, {spec['text_dim']})); pass modality='image' or 'text'"
    )


@torch.no_grad()
def continuous_codes(model: nn.Module, batch, modality: str | None = None, *, batch_size: int = 1024,
                     device=None) -> torch.Tensor:
    """b̂ = net(x) in (-1, 1), (n, k) float32 on the CPU; the net runs in eval mode (no dropout).
    `batch` may be an ImageSource (images streamed from disk, decoded by its workers)."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if isinstance(batch, ImageSource):
        return _streamed_codes(_resolve(model, batch, modality), batch, min(batch_size, STREAM_BATCH), device)
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batch must be a torch.Tensor, numpy array or ImageSource, got {type(batch).__name__}")
    net = _resolve(model, batch, modality)
    if batch.dtype != torch.uint8 and not batch.is_floating_point():
        batch = batch.float()
    if batch.is_floating_point() and not bool(torch.isfinite(batch).all()):
        raise ValueError("batch holds NaN or infinite values")
    if device is None:
        device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        parts = [net(batch[s:s + batch_size].to(device)).float().cpu() for s in range(0, batch.shape[0], batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, net.bits)


def _streamed_codes(net, images: ImageSource, batch_size: int, device) -> torch.Tensor:
    if not getattr(net, "uses_pixels", False):
        raise ValueError("images streamed from files need a model trained on pixels (an image backbone)")
    if device is None:
        device = next(net.parameters()).device
    chunks = list(torch.arange(len(images)).split(batch_size))
    was_training = net.training
    net.eval()
    try:
        parts = [net(x.to(device)).float().cpu() for x in images.with_options(augment=False).iter_batches(chunks)]
    finally:
        net.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, net.bits)


def hash_codes(model: nn.Module, batch, modality: str | None = None, **kw) -> torch.Tensor:
    """±1 float codes sgn(net(x)), (n, k)."""
    return sgn(continuous_codes(model, batch, modality, **kw))


def encode(model: nn.Module, batch, modality: str | None = None, **kw) -> torch.Tensor:
    """Packed binary codes, uint8 (n, ceil(k/8)), for image pixels (n, 3, H, W) uint8, image
    features (n, d) or bag-of-words text (n, d). `model` is a CrossModalHashModel (modality
    inferred from the shape when unambiguous) or an IHNet / THNet."""
    from ..retrieval.codes import pack_codes  # the ranker's packing, so codes match HammingIndex bit for bit

    return pack_codes(hash_codes(model, batch, modality, **kw))
