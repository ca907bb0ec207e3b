"""Image (and CLIP text) backbones: what each one is, how it is built, where its weights come from.

- `alexnet`: the paper's conv1..fc7 (models.AlexNetBackbone, torchvision's module names), 4096-d;
- `vgg11`: torchvision VGG-11 (PSLDH's network) without its ImageNet classifier layer, fc7, 4096-d;
- `vgg16`: torchvision VGG-16 without its ImageNet classifier layer, fc7, 4096-d;
- `resnet50`: torchvision ResNet-50 without `fc`, the pooled 2048-d vector;
- `clip-vit-b-32` / `clip-vit-b-32-openai`: CLIP ViT-B/32 image tower through open_clip (an
  optional dependency), the 512-d image embedding; the text tower encodes captions
  (`ClipTextEncoder`). The `-openai` variant is the QuickGELU architecture of OpenAI's release;
  the other matches open_clip's own (LAION) weights.

Weights are never downloaded. They come from a file the user names (`--image-weights PATH`),
or from the library's cache folder ($DCHML_CACHE, default ~/.cache/dchml) as `<name>.pth`
(`.pt`, `.bin`, `.safetensors`), or, for torchvision models, from torchvision's own download
cache (torch.hub's checkpoints folder) under torchvision's file names. `random` asks for random
weights on purpose (tests, benchmarks). Files are read with torch.load(weights_only=True).

Each backbone declares its input normalisation (mean, std on [0, 1] RGB) and the smallest input
side it accepts; IHNet applies them. `param_groups` gives the optimiser a lower learning rate for
the backbone than for the hash layer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models import IMAGENET_MEAN, IMAGENET_STD, AlexNetBackbone

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
RANDOM = "random"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    title: str
    out_dim: int
    mean: tuple
    std: tuple
    min_size: int            # smallest input side the network accepts
    head_keys: tuple = ()    # prefixes of a full-model state dict that are not part of the backbone
    torchvision_files: tuple = ()  # torchvision's cache file names of its ImageNet weights
    needs: str | None = None  # optional package: "torchvision" or "open_clip"
    clip_arch: str | None = None


BACKBONES = {
    "alexnet": BackboneSpec("alexnet", "AlexNet", 4096, IMAGENET_MEAN, IMAGENET_STD, 63,
                            head_keys=("classifier.6.",), torchvision_files=("alexnet-owt-7be5be79.pth",)),
    "vgg11": BackboneSpec("vgg11", "VGG-11", 4096, IMAGENET_MEAN, IMAGENET_STD, 32, head_keys=("classifier.6.",),
                          torchvision_files=("vgg11-8a719046.pth",), needs="torchvision"),
    "vgg16": BackboneSpec("vgg16", "VGG-16", 4096, IMAGENET_MEAN, IMAGENET_STD, 32, head_keys=("classifier.6.",),
                          torchvision_files=("vgg16-397923af.pth",), needs="torchvision"),
    "resnet50": BackboneSpec("resnet50", "ResNet-50", 2048, IMAGENET_MEAN, IMAGENET_STD, 32, head_keys=("fc.",),
                             torchvision_files=("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
                             needs="torchvision"),
    "clip-vit-b-32": BackboneSpec("clip-vit-b-32", "CLIP ViT-B/32", 512, CLIP_MEAN, CLIP_STD, 32,
                                  needs="open_clip", clip_arch="ViT-B-32"),
    "clip-vit-b-32-openai": BackboneSpec("clip-vit-b-32-openai", "CLIP ViT-B/32 (OpenAI)", 512, CLIP_MEAN, CLIP_STD,
                                         32, needs="open_clip", clip_arch="ViT-B-32-quickgelu"),
}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"image backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    return BACKBONES[name]


def available(name: str) -> bool:
    """Whether the optional package `name`'s backbone needs is installed."""
    needs = get_spec(name).needs
    if needs is None:
        return True
    try:
        __import__(needs)
    except ImportError:
        return False
    return True


def _require(spec: BackboneSpec):
    if not available(spec.name):
        extra = "dchml[images]" if spec.needs == "torchvision" else "open_clip_torch"
        raise ValueError(f"the {spec.title} backbone needs the '{spec.needs}' package: pip install {extra}")


# --- building ---------------------------------------------------------------------------------------


def build_backbone(name: str, image_size: int = 224) -> nn.Module:
    """The backbone with random weights: float (n, 3, S, S) normalised input -> (n, out_dim)."""
    spec = get_spec(name)
    _require(spec)
    if name == "alexnet":
        return AlexNetBackbone()
    if name in ("vgg11", "vgg16"):
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        net.classifier = nn.Sequential(*list(net.classifier)[:-1])  # keep fc6, fc7 (and their names)
        return net
    if name == "resnet50":
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        net.fc = nn.Identity()
        return net
    return _clip_model(spec, image_size).visual


def _clip_model(spec: BackboneSpec, image_size: int = 224):
    import logging

    import open_clip

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip logs a warning for every model built without weights
    try:
        return open_clip.create_model(spec.clip_arch, pretrained=None, force_image_size=image_size)
    finally:
        root.setLevel(level)


# --- weights ----------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """dchml's weight folder: $DCHML_CACHE, else ~/.cache/dchml."""
    return Path(os.environ.get("DCHML_CACHE") or Path.home() / ".cache" / "dchml")


def find_weights(name: str, given: str | None) -> str | None:
    """The weight file to use for backbone `name`: `given` (a path, or "random" for None), else
    the first file found in the cache folders (module doc), else None (random weights)."""
    spec = get_spec(name)
    if given == RANDOM:
        return None
    if given is not None:
        if not os.path.isfile(given):
            raise FileNotFoundError(f"image weights file not found: {given}")
        return given
    candidates = [cache_dir() / f"{name}{suffix}" for suffix in WEIGHT_SUFFIXES]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates += [hub / f for f in spec.torchvision_files]
    return next((str(p) for p in candidates if p.is_file()), None)


def weights_record(name: str, given: str | None, found: str | None) -> dict:
    """What a run's image backbone started from, for its checkpoint, metrics.json and report:
    the weights file and its SHA-256, or that the weights are random and why."""
    spec = get_spec(name)
    record = {"name": name, "title": spec.title, "weights": found, "sha256": None, "random": found is None}
    if found is None:
        record["why"] = ("asked for (--image-weights random)" if given == RANDOM else
                         f"no weights file found (--image-weights, {cache_dir()}/{name}.pth, or torchvision's cache)")
    else:
        import hashlib

        digest = hashlib.sha256()
        with open(found, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        record["sha256"] = digest.hexdigest()
    return record


def read_state_dict(path: str) -> dict:
    """A state dict from a local file (torch.load(weights_only=True), or safetensors)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch/zip/pickle errors of every kind)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"image weights file {path} is not a readable torch state dict ({first})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"image weights file {path} holds a {type(state).__name__}, expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(name: str, backbone: nn.Module, path: str) -> None:
    """Load the weights of `path` into `backbone` (built by build_backbone(name)). A full model's
    state dict is accepted: its classifier (fc8 / fc) or, for CLIP, its text tower is left out."""
    spec = get_spec(name)
    state = read_state_dict(path)
    if spec.clip_arch is not None and any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    state = {k: v for k, v in state.items() if not k.startswith(spec.head_keys)}
    expected = backbone.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"image weights file {path} is not a {spec.title} state dict: missing keys {missing[:4]}, "
                         f"unexpected keys {unexpected[:4]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"image weights file {path}: {key} has shape {tuple(value.shape)}, "
                             f"expected {tuple(expected[key].shape)} for {spec.title}"
                             + (" (CLIP's position embedding is fixed by the image size it was trained at, 224)"
                                if "positional" in key else ""))
    backbone.load_state_dict(state, strict=True)


# --- CLIP text tower ----------------------------------------------------------------------------------


class ClipTextEncoder(nn.Module):
    """CLIP's text tower (open_clip): captions -> (n, 512) text embeddings. Captions are cut to
    CLIP's 77 tokens. Weights: the full CLIP state dict (the image tower is dropped)."""

    def __init__(self, name: str = "clip-vit-b-32", weights: str | None = None):
        super().__init__()
        spec = get_spec(name)
        if spec.clip_arch is None:
            raise ValueError(f"the text backbone must be a CLIP model, got {name!r}")
        _require(spec)
        import open_clip

        model = _clip_model(spec)
        if weights is not None:
            state = read_state_dict(weights)
            missing, unexpected = model.load_state_dict(state, strict=False)
            text_missing = [k for k in missing if not k.startswith("visual.")]
            if text_missing or unexpected:
                raise ValueError(f"text weights file {weights} is not a {spec.title} state dict: missing keys "
                                 f"{text_missing[:4]}, unexpected keys {sorted(unexpected)[:4]}")
        model.visual = None  # the image tower is not needed here
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec.clip_arch)
        self.backbone_name, self.out_dim = name, spec.out_dim

    @torch.no_grad()
    def forward(self, captions) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(list(captions)).to(device)).float()


# --- fine-tuning ----------------------------------------------------------------------------------------


def param_groups(net: nn.Module, lr: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser parameter groups for one hashing network: its backbone (if it has one) at
    lr * backbone_lr_scale, everything else at lr. A scale of 1 gives one group (plain SGD, the
    paper's setting); a scale of 0 freezes the backbone (no gradients computed for it)."""
    backbone = getattr(net, "backbone", None)
    if backbone is None or backbone_lr_scale == 1:
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr}]
    owned = {id(p) for p in backbone.parameters()}
    head = [p for p in net.parameters() if id(p) not in owned]
    if backbone_lr_scale == 0:
        backbone.requires_grad_(False)
        return [{"params": head, "lr": lr}]
    # lr_scale: a learning-rate schedule multiplies the base rate by it (train.set_learning_rate)
    return [{"params": list(backbone.parameters()), "lr": lr * backbone_lr_scale, "lr_scale": backbone_lr_scale},
            {"params": head, "lr": lr, "lr_scale": 1.0}]
