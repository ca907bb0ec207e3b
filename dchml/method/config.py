"""What a run is asked to do: `TrainConfig` (every hyper-parameter, checked when made), the
recipes (dchml's defaults and the paper's literal settings) and the device name's check."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..ops import MAX_BITS, MAX_CUDA_BITS
from .backbones import get_spec
from .normalize import DEFAULT_CLIP, check_kind
from .objective import METHODS, LossWeights
from .precision import check_precision

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
SELECTIONS = ("best", "last")


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run. The defaults are dchml's recipe (docs/method.md, chosen by
    benchmarks/recipe_sweep.py over a panel of data sets); `TrainConfig.paper()` gives the paper's
    literal settings (docs/spec.md §1, §4)."""

    method: str = "dchml"           # dchml | dchml_q (gamma = 0) | dchml_p (pairwise proxy loss)
    bits: int = 64
    epochs: int = 60                # at most this many outer iterations of Algorithm 1
    batch_size: int = 128
    optimizer: str = "adam"         # adam | adamw | sgd (the paper: sgd)
    lr: float = 1e-3
    momentum: float = 0.9           # sgd only
    weight_decay: float = 0.0
    warmup_epochs: int = 1          # linear warm-up of the learning rate ...
    schedule: str = "cosine"        # ... then cosine decay to 0 at `epochs`, or constant
    image_norm: str = "auto"        # input normalisation of image features (dchml.method.normalize)
    text_norm: str = "auto"         # ... and of text
    norm_clip: float = DEFAULT_CLIP
    val_fraction: float = 0.1       # validation slice of the training items (0: none) ...
    val_max: int = 1000             # ... at most this many items
    patience: int = 3               # stop after this many evaluations without improvement (0: never)
    select: str = "best"            # keep the best validation epoch, or the last one
    eta: float = 0.3
    mu: float = 0.3
    lam: float = 0.001              # lambda of eq. 16
    gamma: float = 0.01             # NUS-WIDE's value
    alpha: float = 0.05             # PHNet bit balance
    beta: float = 0.1               # PHNet quantization
    proxy_steps: int = 2000         # PHNet: at most this many full-batch steps ...
    proxy_lr: float = 1e-3          # ... of Adam [choice: SGD diverges on L_PH's summed scale]
    proxy_tol: float = 1e-3         # ... stopping when 100 steps improve L_PH by < tol (relative)
    eval_every: int = 2             # validation MAP every N epochs (and after the last)
    topk: int = 5000
    seed: int = 0
    device: str = "cpu"
    image_size: int = 224           # AlexNet input side (pixel data only)
    image_hidden: int = 2048        # feature MLP width (feature data only)
    text_hidden: int = 2048
    proxy_hidden: int = 512
    image_weights: str | None = None  # local backbone state dict, or "random" (pixel data only)
    # End-to-end training on pixels (dchml.method.backbones, dchml.method.precision, dchml.data.images):
    image_backbone: str = "alexnet"  # alexnet (the paper) | vgg16 | resnet50 | clip-vit-b-32[-openai]
    backbone_lr_scale: float = 0.1   # a pretrained backbone's lr = lr x this (0 freezes it)
    precision: str = "fp32"          # fp32 | auto | bf16 | fp16: mixed precision on CUDA
    augment: bool = False            # random crop + flip of training images streamed from files

    def __post_init__(self):
        self.validate()

    @classmethod
    def paper(cls, **overrides) -> "TrainConfig":
        """The paper's literal recipe: plain SGD at lr 1e-3, 120 epochs, features as given, the last
        epoch kept (docs/spec.md §4)."""
        return cls(**{**PAPER_RECIPE, **overrides})

    @classmethod
    def for_recipe(cls, recipe: str, **overrides) -> "TrainConfig":
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        return cls(**{**RECIPES[recipe], **overrides})

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("select", SELECTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        check_kind(self.image_norm, "image_norm")
        check_kind(self.text_norm, "text_norm")
        for name in ("bits", "epochs", "batch_size", "proxy_steps", "eval_every", "topk", "image_size",
                     "image_hidden", "text_hidden", "proxy_hidden", "val_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_epochs", "patience", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "proxy_lr", "norm_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("momentum", "weight_decay", "eta", "mu", "lam", "gamma", "alpha", "beta", "proxy_tol",
                     "backbone_lr_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        get_spec(self.image_backbone)
        check_precision(self.precision, self.device)
        # Upper bounds that would otherwise fail late, after minutes of work (the memory a
        # configuration needs on given data is checked by dchml/method/preflight.py).
        if self.bits > MAX_BITS:
            raise ValueError(f"bits must be at most {MAX_BITS} (the ranker's longest code), got {self.bits}")
        if str(self.device).startswith("cuda") and self.bits > MAX_CUDA_BITS:
            raise ValueError(f"bits must be at most {MAX_CUDA_BITS} on CUDA (the GPU ranker's longest code), "
                             f"got {self.bits}")
        if self.seed >= 2**64:
            raise ValueError(f"seed must be below 2**64 (torch's generator), got {self.seed}")
        if self.image_size < 63:
            raise ValueError(f"image_size must be >= 63 (AlexNet's smallest input), got {self.image_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**values)

    def loss_weights(self) -> LossWeights:
        return LossWeights.for_method(self.method, eta=self.eta, mu=self.mu, lam=self.lam, gamma=self.gamma)


# The paper's literal training settings (docs/spec.md §4): everything else keeps its default.
PAPER_RECIPE = dict(epochs=120, optimizer="sgd", lr=1e-3, momentum=0.0, weight_decay=0.0, warmup_epochs=0,
                    schedule="constant", image_norm="none", text_norm="none", val_fraction=0.0, patience=0,
                    select="last", eval_every=5, backbone_lr_scale=1.0)
RECIPES = {"default": {}, "paper": PAPER_RECIPE}


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be like 'cpu' or 'cuda', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {name!r}")
    return device
