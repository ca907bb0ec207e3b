"""What a run is asked to do: `TrainConfig` (every hyper-parameter, checked when made), the
recipes (dchml's defaults and each method's paper settings) and the device name's check.

Method hyper-parameters (eta, mu, lam, gamma, sigma, alpha, beta) belong to the method that reads
them: left at None they take that method's default (dchml.method.methods), and giving one that the
method does not read is an error rather than a silently ignored setting."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..ops import MAX_BITS, MAX_CUDA_BITS
from .backbones import get_spec
from .normalize import DEFAULT_CLIP, check_kind
from .objective import LossWeights
from .precision import check_precision

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant", "step")
PROXY_OPTIMIZERS = ("adam", "sgd")
SELECTIONS = ("best", "last")


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run. The defaults are dchml's recipe (docs/method.md, chosen by
    benchmarks/recipe_sweep.py over a panel of data sets); `TrainConfig.paper()` gives the paper's
    literal settings (docs/spec.md §1, §4)."""

    method: str = "dchml"           # dchml | dchml_q | dchml_p (cross-modal) | psldh | csq (one modality)
    modality: str | None = None     # single-modality methods: image | text (None: image when present)
    bits: int = 64
    epochs: int = 60                # at most this many outer iterations of Algorithm 1
    batch_size: int = 128
    optimizer: str = "adam"         # adam | adamw | sgd (the paper: sgd)
    lr: float = 1e-3
    momentum: float = 0.9           # sgd only
    weight_decay: float = 0.0
    warmup_epochs: int = 1          # linear warm-up of the learning rate ...
    schedule: str = "cosine"        # ... then cosine decay to 0 at `epochs`, constant, or step:
    step_every: int = 100           # ... the rate times step_factor every step_every epochs
    step_factor: float = 0.3
    image_norm: str = "auto"        # input normalisation of image features (dchml.method.normalize)
    text_norm: str = "auto"         # ... and of text
    norm_clip: float = DEFAULT_CLIP
    val_fraction: float = 0.1       # validation slice of the training items (0: none) ...
    val_max: int = 1000             # ... at most this many items
    patience: int = 3               # stop after this many evaluations without improvement (0: never)
    select: str = "best"            # keep the best validation epoch, or the last one
    # The method's hyper-parameters (None: the method's default; docs/spec.md §12 lists them):
    eta: float | None = None        # DCHML: softmax scale (0.3)
    mu: float | None = None         # DCHML: margin (0.3)
    lam: float | None = None        # DCHML: lambda of eq. 16 (0.001); PSLDH, CSQ: quantization weight
    gamma: float | None = None      # DCHML: quantization weight (0.01, NUS-WIDE's); PSLDH: softmax scale
    sigma: float | None = None      # PSLDH: margin (0.2)
    alpha: float | None = None      # category network: bit balance
    beta: float | None = None       # category network: quantization
    proxy_steps: int = 2000         # category network: at most this many full-batch steps ...
    proxy_lr: float = 1e-3          # ... of Adam [choice: SGD diverges on L_PH's summed scale]
    proxy_optimizer: str = "adam"   # ... or sgd (PSLDH's public schedule)
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
    image_backbone: str | None = None  # None: the method's (DCHML, CSQ: alexnet; PSLDH: vgg11); vgg16, ...
    backbone_lr_scale: float = 0.1   # a pretrained backbone's lr = lr x this (0 freezes it)
    precision: str = "fp32"          # fp32 | auto | bf16 | fp16: mixed precision on CUDA
    augment: bool = False            # random crop + flip of training images streamed from files

    def __post_init__(self):
        self._resolve_method_defaults()
        self.validate()

    def _resolve_method_defaults(self) -> None:
        from .methods import METHOD_PARAMS, get_method

        method = get_method(self.method)
        for name in METHOD_PARAMS:
            if getattr(self, name) is None and name in method.params:
                setattr(self, name, method.params[name])
        if self.image_backbone is None:
            self.image_backbone = method.default_backbone

    @classmethod
    def paper(cls, **overrides) -> "TrainConfig":
        """The method's paper recipe (its literal published settings: DCHML plain SGD at lr 1e-3,
        120 epochs, features as given, the last epoch kept, docs/spec.md §4; PSLDH §6.4, CSQ §12)."""
        return cls.for_recipe("paper", **overrides)

    @classmethod
    def for_recipe(cls, recipe: str, **overrides) -> "TrainConfig":
        return cls(**{**recipe_settings(recipe, overrides.get("method", "dchml")), **overrides})

    @property
    def method_params(self) -> dict:
        """The hyper-parameters the method reads, with their values."""
        from .methods import get_method

        return {name: getattr(self, name) for name in get_method(self.method).params}

    def validate(self) -> None:
        from .methods import FLAG_OF, METHOD_PARAMS, get_method

        method = get_method(self.method)
        unused = [name for name in METHOD_PARAMS if name not in method.params and getattr(self, name) is not None]
        if unused:
            takes = ", ".join(FLAG_OF.get(n, n) for n in method.params) or "none"
            raise ValueError(f"{', '.join(FLAG_OF.get(n, n) for n in unused)}: not a parameter of {self.method} "
                             f"(it takes {takes})")
        if self.modality not in (None, "image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {self.modality!r}")
        if self.modality is not None and method.cross_modal:
            raise ValueError(f"modality is for single-modality methods; {self.method} trains both modalities")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("select", SELECTIONS),
                              ("proxy_optimizer", PROXY_OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        check_kind(self.image_norm, "image_norm")
        check_kind(self.text_norm, "text_norm")
        for name in ("bits", "epochs", "batch_size", "proxy_steps", "eval_every", "topk", "image_size",
                     "image_hidden", "text_hidden", "proxy_hidden", "val_max", "step_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_epochs", "patience", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "proxy_lr", "norm_clip", "step_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("momentum", "weight_decay", "proxy_tol", "backbone_lr_scale") + tuple(method.params):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
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
        spec = get_spec(self.image_backbone)
        if self.image_size < spec.min_size:
            raise ValueError(f"image_size must be >= {spec.min_size} ({spec.title}'s smallest input), "
                             f"got {self.image_size}")

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


# DCHML's paper recipe (docs/spec.md §4), the one PAPER_RECIPE has always named; each method has its
# own (dchml.method.methods): `recipe_settings` picks it.
PAPER_RECIPE = dict(epochs=120, optimizer="sgd", lr=1e-3, momentum=0.0, weight_decay=0.0, warmup_epochs=0,
                    schedule="constant", image_norm="none", text_norm="none", val_fraction=0.0, patience=0,
                    select="last", eval_every=5, backbone_lr_scale=1.0)
RECIPES = {"default": {}, "paper": PAPER_RECIPE}


def recipe_settings(recipe: str, method: str = "dchml") -> dict:
    """The TrainConfig fields a recipe sets for a method: none for dchml's default recipe (the
    dataclass defaults), the method's published settings for 'paper'."""
    from .methods import get_method

    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return dict(get_method(method).paper_recipe) if recipe == "paper" else {}


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
