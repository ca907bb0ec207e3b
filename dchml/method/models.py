"""The three networks of docs/spec.md §1-§2 and the container that ties them to the proxies.

- PHNet: one-hot label -> proxy code (Linear(c, 512) -> ReLU -> Linear(512, k) -> tanh).
- IHNet: image -> code, either a backbone on pixels (the paper's AlexNet, whose module names
  match torchvision's `alexnet` so an ImageNet state dict saved by torchvision loads as is, or
  another of dchml.method.backbones), or, for pre-extracted image features, an MLP [choice, docs/spec.md §2].
- THNet: bag-of-words -> Linear(d, 2048) -> ReLU -> Linear(2048, k) -> tanh.
- HashModel (also exported as CrossModalHashModel): the networks of one method (both modality
  nets for a cross-modal method, one for a single-modality one, PHNet when its category codes are
  learned) + the frozen category codes G as a buffer, so they are saved with the model. `spec()`
  returns the plain dict that rebuilds the model.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .normalize import FeatureNormalizer

# ImageNet statistics torchvision's pretrained AlexNet expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sgn(x: torch.Tensor) -> torch.Tensor:
    """docs/spec.md's sign (Notation): +1 where x > 0, else -1 (zero maps to -1, so codes are never 0)."""
    return torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class PHNet(nn.Module):
    """Proxy hashing network (§1): the one-hot vector of each category -> k-dim proxy in (-1, 1)."""

    def __init__(self, n_labels: int, bits: int, hidden: int = 512):
        super().__init__()
        _check_positive(n_labels=n_labels, bits=bits, hidden=hidden)
        self.n_labels, self.bits = n_labels, bits
        self.net = nn.Sequential(nn.Linear(n_labels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, bits), nn.Tanh())
        _xavier(self)

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        return self.net(one_hot)

    def continuous_proxies(self) -> torch.Tensor:
        """ĝ: the network applied to every category's one-hot vector, (c, k)."""
        eye = torch.eye(self.n_labels, device=self.net[0].weight.device, dtype=self.net[0].weight.dtype)
        return self(eye)

    @torch.no_grad()
    def proxies(self) -> torch.Tensor:
        """G = sgn(ĝ), (c, k) with entries ±1."""
        return sgn(self.continuous_proxies())


class AlexNetBackbone(nn.Module):
    """conv1..conv5 + fc6 + fc7 of torchvision's AlexNet, with the same module names and indices
    (`features.0 ... features.10`, `classifier.1`, `classifier.4`), so torchvision's state dict
    minus fc8 (`classifier.6.*`) loads with strict=True. Output: the 4096-d fc7 activation."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def load_alexnet_weights(backbone: AlexNetBackbone, path: str) -> None:
    """Load an ImageNet AlexNet state dict saved by torchvision (`torch.save(alexnet(weights=...)
    .state_dict(), path)`) from a local file; fc8 is dropped. Never downloads anything."""
    from .backbones import load_backbone_weights

    load_backbone_weights("alexnet", backbone, path)


class IHNet(nn.Module):
    """Image hashing network (§2). `image_dim=None`: a backbone (`backbone`, default the paper's
    AlexNet; see dchml.method.backbones) on (n, 3, H, W) uint8 pixels (scaled to [0, 1], resized to
    `image_size`, normalised with the backbone's statistics) + Linear(backbone dim, k) + tanh.
    `image_dim=d`: pre-extracted features -> Linear(d, hidden) -> ReLU -> Linear(hidden, k) -> tanh,
    the same shape as THNet [choice]."""

    def __init__(self, bits: int, image_dim: int | None = None, *, hidden: int = 2048, image_size: int = 224,
                 backbone: str = "alexnet"):
        super().__init__()
        _check_positive(bits=bits, hidden=hidden, image_size=image_size)
        self.bits, self.image_dim, self.image_size = bits, image_dim, image_size
        if image_dim is None:
            from .backbones import build_backbone, get_spec

            spec = get_spec(backbone)
            if image_size < spec.min_size:
                raise ValueError(f"image_size must be >= {spec.min_size} for the {spec.title} backbone, got {image_size}")
            self.backbone = build_backbone(backbone, image_size)
            self.hash = nn.Linear(spec.out_dim, bits)
            _xavier(self.hash)
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        else:
            _check_positive(image_dim=image_dim)
            self.normalizer = FeatureNormalizer(image_dim)
            self.mlp = nn.Sequential(nn.Linear(image_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, bits))
            _xavier(self.mlp)

    @property
    def uses_pixels(self) -> bool:
        return self.image_dim is None

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (n, 3, H, W) -> normalised float (n, 3, image_size, image_size)."""
        x = images.to(self.mean.device, torch.float32, copy=True)  # (a float input stays untouched)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        # (x / 255 - mean) / std as one multiply-add in place: the division, subtraction and their
        # temporaries cost as much as 7% of AlexNet's forward per batch (measured, one thread)
        return x.mul_(1.0 / (255.0 * self.std)).add_(-self.mean / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_pixels:
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"IHNet (AlexNet) expects images of shape (n, 3, H, W), got {tuple(x.shape)}")
            if x.dtype == torch.uint8:
                x = self.preprocess(x)
            return torch.tanh(self.hash(self.backbone(x)))
        if x.dim() != 2 or x.shape[1] != self.image_dim:
            raise ValueError(f"IHNet expects image features of shape (n, {self.image_dim}), got {tuple(x.shape)}")
        return torch.tanh(self.mlp(self.normalizer(x.float())))


class THNet(nn.Module):
    """Text hashing network (§2): bag-of-words -> Linear(d, 2048) -> ReLU -> Linear(2048, k) -> tanh."""

    def __init__(self, text_dim: int, bits: int, *, hidden: int = 2048):
        super().__init__()
        _check_positive(text_dim=text_dim, bits=bits, hidden=hidden)
        self.text_dim, self.bits = text_dim, bits
        self.normalizer = FeatureNormalizer(text_dim)
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, bits))
        _xavier(self.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.text_dim:
            raise ValueError(f"THNet expects bag-of-words of shape (n, {self.text_dim}), got {tuple(x.shape)}")
        return torch.tanh(self.mlp(self.normalizer(x.float())))


MODALITIES = ("image", "text")


class HashModel(nn.Module):
    """The hashing networks of one method plus its frozen category codes G (buffer `proxies`,
    (c, k) ±1): DCHML's proxies, PSLDH's category codes or CSQ's hash centres.

    modalities: the modalities it encodes, ("image", "text") for a cross-modal method, one of them
    for a single-modality method; only their networks exist. category_net: whether G comes from a
    trained category network (`phnet`: PHNet for DCHML, PSLDH's label network, the same layers);
    CSQ's centres are constructed, not trained. `center_fill` (k,) ±1 is the fixed code that
    breaks ties of CSQ's multi-label centres (zeros for other methods)."""

    def __init__(self, bits: int, n_labels: int, text_dim: int | None = None, image_dim: int | None = None, *,
                 proxy_hidden: int = 512, image_hidden: int = 2048, text_hidden: int = 2048,
                 image_size: int = 224, image_backbone: str = "alexnet", modalities=MODALITIES,
                 category_net: bool = True):
        super().__init__()
        modalities = tuple(m for m in MODALITIES if m in tuple(modalities))
        if not modalities:
            raise ValueError("a model needs at least one modality ('image' or 'text')")
        self._spec = dict(bits=bits, n_labels=n_labels, text_dim=text_dim if "text" in modalities else None,
                          image_dim=image_dim, proxy_hidden=proxy_hidden, image_hidden=image_hidden,
                          text_hidden=text_hidden, image_size=image_size, image_backbone=image_backbone,
                          modalities=list(modalities), category_net=bool(category_net))
        if category_net:
            self.phnet = PHNet(n_labels, bits, hidden=proxy_hidden)
        if "image" in modalities:
            self.image_net = IHNet(bits, image_dim, hidden=image_hidden, image_size=image_size,
                                   backbone=image_backbone)
        if "text" in modalities:
            if text_dim is None:
                raise ValueError("a model with a text network needs text_dim")
            self.text_net = THNet(text_dim, bits, hidden=text_hidden)
        self.register_buffer("proxies", torch.zeros(n_labels, bits))
        self.register_buffer("center_fill", torch.zeros(bits))

    @property
    def bits(self) -> int:
        return self._spec["bits"]

    @property
    def modalities(self) -> tuple:
        return tuple(self._spec["modalities"])

    @property
    def cross_modal(self) -> bool:
        return len(self.modalities) == 2

    def spec(self) -> dict:
        """Plain dict (ints, strings, lists and None) that `HashModel(**spec)` rebuilds the model from."""
        return {**self._spec, "modalities": list(self._spec["modalities"])}

    def net(self, modality: str) -> nn.Module:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        if modality not in self.modalities:
            raise ValueError(f"this model encodes {' and '.join(self.modalities)} only, not {modality}")
        return self.image_net if modality == "image" else self.text_net

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return self.net(modality)(x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # Models saved before center_fill existed hold every other tensor: its zeros are right for them.
        if "center_fill" not in state_dict and "proxies" in state_dict:
            state_dict = {**state_dict, "center_fill": self.center_fill.detach().clone()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# The cross-modal name the package has always exported; a HashModel with both modalities.
CrossModalHashModel = HashModel


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
