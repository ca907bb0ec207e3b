"""Algorithm 1 of docs/spec.md §5: PHNet first, then alternating image / text passes and the C
update, with model selection on a validation slice, per-epoch atomic checkpoints and exact resume.

One loop (`run_epochs`) drives every way of training; what differs between one process and
several is a `Passes` object: how one modality's pass runs over the training positions, how a
checkpoint is committed, and how ranks agree. `SingleProcess` is the plain one;
dchml.distributed_train plugs in its DDP passes; benchmarks plug in their own.

Model selection [choice]: a seeded validation slice of the training items (`val_fraction`, at
most `val_max` items) is held out of training. Every `eval_every` epochs its items are ranked
against the remaining training items, and the epoch with the best mean validation MAP is kept;
training stops early after `patience` evaluations without improvement. The query set is never
looked at during training.

Determinism [choice]: everything random comes from the seed: the model init and dropout from
torch's global CPU generator (forked, so the caller's RNG state is untouched and restored on
exit), the shuffles and C's random init from a dedicated torch.Generator, the validation slice
from numpy's default_rng. Both torch states are saved in every checkpoint, so a resumed run equals
an uninterrupted one bit for bit on the CPU.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones import find_weights, get_spec, load_backbone_weights, param_groups
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .data.fingerprint import difference, identity
from .data.images import ImageSource, training_batches
from .losses import proxy_network_loss
from .models import CrossModalHashModel, sgn
from .normalize import DEFAULT_CLIP, check_kind
from .objective import METHODS, LossWeights, full_objective, step_loss
from .ops import MAX_BITS, MAX_CUDA_BITS
from .precision import FP32, MixedPrecision, check_precision

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
    image_norm: str = "auto"        # input normalisation of image features (dchml.normalize)
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
    # End-to-end training on pixels (dchml.backbones, dchml.precision, dchml.data.images):
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
        # configuration needs on given data is checked by dchml/preflight.py).
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


@dataclass
class TrainResult:
    model: CrossModalHashModel
    history: list = field(default_factory=list)
    proxy_diagnostics: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # the last checkpoint dict (tensors on the CPU)
    selection: dict = field(default_factory=dict)  # which epoch was kept, and why


# --- step 1: PHNet -------------------------------------------------------------------------------


def proxy_diagnostics(proxies: torch.Tensor) -> dict:
    """Minimum and mean pairwise Hamming distance between the ±1 proxy codes (ideal >= k/2)."""
    c, k = proxies.shape
    if c < 2:
        return {"min_hamming": float(k), "mean_hamming": float(k), "bits": k, "n_proxies": c}
    dist = (k - proxies @ proxies.T) / 2
    off = dist[~torch.eye(c, dtype=torch.bool, device=dist.device)]
    return {"min_hamming": float(off.min()), "mean_hamming": float(off.mean()), "bits": k, "n_proxies": c}


def train_proxies(model: CrossModalHashModel, cfg: TrainConfig, log=None) -> dict:
    """Train PHNet on L_PH until the relative improvement over 100 steps drops below proxy_tol (or
    proxy_steps), then freeze G = sgn(PHNet(Y)) into model.proxies. Returns the diagnostics."""
    # PHNet's matrices are tiny (c x 512): on the CPU, thread start-up and contention cost far more
    # than they save (measured 1 ms/step on one thread vs up to 60 ms on two busy cores).
    threads = torch.get_num_threads()
    if next(model.phnet.parameters()).device.type == "cpu":
        torch.set_num_threads(1)
    try:
        diag = _fit_phnet(model, cfg)
    finally:
        torch.set_num_threads(threads)
    if log:
        log(f"PHNet: {diag['steps']} steps, L_PH {diag['loss']:.4g}, proxy Hamming distance min "
            f"{diag['min_hamming']:.0f} / mean {diag['mean_hamming']:.1f} of {diag['bits']} bits")
        if diag["min_hamming"] == 0:
            log("warning: two proxies are identical; use more bits for this many labels")
    return diag


def _fit_phnet(model: CrossModalHashModel, cfg: TrainConfig) -> dict:
    phnet = model.phnet
    optimizer = torch.optim.Adam(phnet.parameters(), lr=cfg.proxy_lr)
    window, previous, loss_value, step = 100, None, float("nan"), 0
    for step in range(1, cfg.proxy_steps + 1):
        loss = proxy_network_loss(phnet.continuous_proxies(), alpha=cfg.alpha, beta=cfg.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if step % window == 0:
            if previous is not None and previous - loss_value <= cfg.proxy_tol * max(abs(previous), 1e-12):
                break
            previous = loss_value
    with torch.no_grad():
        model.proxies.copy_(phnet.proxies())
    return {"steps": step, "loss": loss_value, **proxy_diagnostics(model.proxies)}


# --- the optimiser and its learning-rate schedule --------------------------------------------------


def make_optimizer(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # A pretrained image backbone learns at lr x backbone_lr_scale, the hash layer at lr.
    params = param_groups(net, cfg.lr, cfg.backbone_lr_scale)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def learning_rate(cfg: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The learning rate of step `step` (0-based) of `steps` in epoch `epoch` (1-based): linear
    warm-up over `warmup_epochs`, then cosine decay to 0 at `epochs` (or constant). A pure
    function of the position, so a resumed run needs no scheduler state."""
    t = (epoch - 1) + step / max(steps, 1)
    if t < cfg.warmup_epochs:
        return cfg.lr * (t + 1 / max(steps, 1)) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min((t - cfg.warmup_epochs) / span, 1.0)))


# --- one pass of one modality ------------------------------------------------------------------------


@dataclass
class PassInputs:
    """Everything one pass of one modality needs. `positions` index the fitted training items
    (already shuffled); `rows` maps a position to its row in `inputs`; stored_self is updated in
    place with the pass's outputs; `lr_at(step)` gives the learning rate of each step."""

    modality: str
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    stored_self: torch.Tensor
    stored_other: torch.Tensor
    codes_c: torch.Tensor
    labels: torch.Tensor
    proxies: torch.Tensor
    weights: LossWeights
    batch_size: int
    device: torch.device
    lr_at: object
    progress: object = None
    precision: MixedPrecision = FP32


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the schedule's rate, keeping each parameter group's ratio to the base rate (a
    backbone's lr_scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def train_pass(p: PassInputs) -> dict:
    """One pass of `p.net` over `p.positions` in batches; returns the mean step loss and terms."""
    p.net.train()
    totals = {"loss": 0.0, "intra": 0.0, "inter": 0.0, "quant": 0.0}
    seen = 0
    batches = training_batches(p.inputs, p.rows, p.positions, p.batch_size)
    for step, (pos, x) in enumerate(batches):
        x = x.to(p.device, non_blocking=True)
        pos_d = pos.to(p.device)
        with p.precision.autocast():
            out = p.net(x)
        out = out.float()
        loss, terms = step_loss(out, p.stored_other[pos_d], p.codes_c[pos_d], p.proxies, p.labels[pos_d], p.weights)
        set_learning_rate(p.optimizer, p.lr_at(step))
        p.optimizer.zero_grad(set_to_none=True)
        p.precision.step(loss, p.optimizer)
        p.stored_self[pos_d] = out.detach()
        b = pos.numel()
        seen += b
        totals["loss"] += float(loss.detach()) * b
        for key, value in terms.items():
            totals[key] += value * b
        if p.progress is not None:
            p.progress.update(1)
            p.progress.set_postfix(loss=f"{totals['loss'] / seen:.4f}")
    check_finite(totals["loss"])
    return {key: value / max(seen, 1) for key, value in totals.items()}


def check_finite(loss: float) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError("the training loss became NaN or infinite; lower the learning rate (--lr)")


# --- step 2c ---------------------------------------------------------------------------------------


def update_codes(stored_image: torch.Tensor, stored_text: torch.Tensor) -> torch.Tensor:
    """C = sgn(B̂^v + B̂^t) from the stored outputs."""
    return sgn(stored_image + stored_text)


# --- evaluation ------------------------------------------------------------------------------------

PRECISION_AT_N = (1, 10, 50, 100, 200, 500, 1000, 1500, 2000, 3000, 4000, 5000)


def evaluate(model: CrossModalHashModel, data, *, topk: int = 5000, curves: bool = False, device=None,
             batch_size: int = 1024) -> dict:
    """MAP@topk for I->T (image queries vs the text database) and T->I, with the ranker's metrics.
    With curves=True also precision@N and the precision-recall curve by Hamming radius."""
    return retrieval_scores(model, data, data.query_idx, data.retrieval_idx, topk=topk, curves=curves,
                            device=device, batch_size=batch_size)


def retrieval_scores(model: CrossModalHashModel, data, query_idx, db_idx, *, topk: int = 5000,
                     curves: bool = False, device=None, batch_size: int = 1024) -> dict:
    """MAP@topk of `query_idx` items ranked against `db_idx` items, both directions."""
    from . import mean_average_precision
    from .encoding import hash_codes

    kw = dict(batch_size=batch_size, device=device)
    q_img = hash_codes(model, data.image[query_idx], "image", **kw)
    q_txt = hash_codes(model, data.text[query_idx], "text", **kw)
    d_img = hash_codes(model, data.image[db_idx], "image", **kw)
    d_txt = hash_codes(model, data.text[db_idx], "text", **kw)
    ql, dl = data.labels[query_idx], data.labels[db_idx]
    tasks = {"i2t": (q_img, d_txt), "t2i": (q_txt, d_img)}
    out = {"topk": topk}
    for task, (q, d) in tasks.items():
        out[f"{task}_map"] = float(mean_average_precision(q, d, ql, dl, topk=topk))
    if curves:
        from . import pr_curve, precision_at_n

        ns = [n for n in PRECISION_AT_N if n <= d_img.shape[0]]
        out["curves"] = {}
        for task, (q, d) in tasks.items():
            precision, recall = pr_curve(q, d, ql, dl)
            out["curves"][task] = {
                "precision_at_n": {"n": ns, "precision": [float(v) for v in precision_at_n(q, d, ql, dl, ns)]},
                "pr": {"precision": [float(v) for v in precision], "recall": [float(v) for v in recall]},
            }
    return out


# --- the validation slice ------------------------------------------------------------------------------

MIN_VALIDATION = 20  # fewer validation items than this give too noisy a MAP to select on


def validation_split(train_idx: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit_idx, val_idx): the training items trained on and the held-out validation slice, both
    sorted data rows. Deterministic from cfg.seed; val_idx is empty when selection is off or the
    training set is too small to spare a slice."""
    n = train_idx.numel()
    n_val = min(cfg.val_max, int(round(cfg.val_fraction * n)))
    if n_val < MIN_VALIDATION or n - n_val < MIN_VALIDATION:
        return train_idx, train_idx[:0]
    perm = torch.from_numpy(np.random.default_rng([cfg.seed, 0x5A1]).permutation(n))
    val = perm[:n_val].sort().values
    fit = perm[n_val:].sort().values
    return train_idx[fit], train_idx[val]


# --- Algorithm 1 -----------------------------------------------------------------------------------


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


def build_model(data, cfg: TrainConfig, log=None) -> CrossModalHashModel:
    image_dim = None if data.image_is_pixels else data.image_dim
    if image_dim is not None:
        for name, default in (("image_weights", None), ("image_backbone", "alexnet"), ("augment", False)):
            if getattr(cfg, name) != default:
                raise ValueError(f"{name} is only for pixel images; this data set has {image_dim}-d image features")
    elif cfg.augment and not isinstance(data.image, ImageSource):
        raise ValueError("augment applies to images streamed from files; these pixels are in memory")
    model = CrossModalHashModel(cfg.bits, data.n_labels, data.text_dim, image_dim, proxy_hidden=cfg.proxy_hidden,
                                image_hidden=cfg.image_hidden, text_hidden=cfg.text_hidden,
                                image_size=cfg.image_size, image_backbone=cfg.image_backbone)
    if image_dim is None:
        weights = find_weights(cfg.image_backbone, cfg.image_weights)
        if weights:
            load_backbone_weights(cfg.image_backbone, model.image_net.backbone, weights)
        if log:
            log(f"image backbone {cfg.image_backbone}: " + (f"weights from {weights}" if weights else "random weights"))
    return model


def training_images(data, cfg: TrainConfig):
    """The image input of the training passes: data.image, with the augmentation switched on
    for images streamed from files when cfg.augment asks for it."""
    if isinstance(data.image, ImageSource):
        return data.image.with_options(augment=cfg.augment)
    return data.image


def fit_normalizers(model: CrossModalHashModel, data, fit_idx: torch.Tensor, cfg: TrainConfig) -> None:
    """Fit the input normalisers of the feature nets on the fitted training items only."""
    if not data.image_is_pixels:
        model.image_net.normalizer.fit(data.image[fit_idx], cfg.image_norm, clip=cfg.norm_clip)
    model.text_net.normalizer.fit(data.text[fit_idx], cfg.text_norm, clip=cfg.norm_clip)


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class RunState:
    """What Algorithm 1 carries from one epoch to the next, fresh or restored from a checkpoint."""

    cfg: TrainConfig
    model: CrossModalHashModel
    opt_image: torch.optim.Optimizer
    opt_text: torch.optim.Optimizer
    codes_c: torch.Tensor
    stored_image: torch.Tensor
    stored_text: torch.Tensor
    generator: torch.Generator
    train_idx: torch.Tensor
    fit_idx: torch.Tensor
    val_idx: torch.Tensor
    labels: torch.Tensor          # (n_fit, c) float32 on the device
    history: list
    diag: dict
    epoch: int                    # completed epochs
    best: dict                    # {"epoch", "score", "model" (state dict on the CPU)} or {}
    identity: dict = field(default_factory=dict)  # the data's fingerprint (dchml.data.fingerprint)
    stale: int = 0                # evaluations since the best one
    stopped_early: bool = False


class SingleProcess:
    """The passes of one process: the plain pass, checkpoints written directly."""

    main = True
    label = ""

    def prepare(self, run: RunState, log) -> None:
        pass

    def net(self, run: RunState, modality: str):
        return run.model.net(modality)

    def run_pass(self, p: PassInputs) -> dict:
        return train_pass(p)

    def epoch_seconds(self, seconds: float) -> float:
        return seconds

    def commit(self, state: dict, path: str | None) -> None:
        if path:
            save_checkpoint(state, path)

    def agree(self, flag: bool) -> bool:
        return flag

    def finish(self, run: RunState) -> None:
        pass


def train(data, config: TrainConfig | None = None, *, checkpoint_path: str | None = None,
          resume: bool = False, progress: bool | None = None, log=log_to_stderr, on_epoch_end=None,
          passes=None) -> TrainResult:
    """Run Algorithm 1 on `data` (a dchml.data.CrossModalData).

    checkpoint_path: written atomically after every epoch. resume=True continues from that file
    (its config wins, except `epochs` and `eval_every`, which may be raised/changed to extend a run).
    progress: tqdm bars (default: when stderr is a TTY). log: callable for one-line messages or None.
    on_epoch_end(epoch, record): called after each epoch's checkpoint (tests use it to interrupt).
    passes: how each pass runs (default SingleProcess(); dchml.distributed_train plugs in DDP).
    """
    cfg = config or TrainConfig()
    if resume and not checkpoint_path:
        raise ValueError("resume=True needs checkpoint_path")
    if progress is None:
        progress = sys.stderr.isatty()
    log = log or (lambda message: None)
    device = resolve_device(cfg.device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        run = start_run(data, cfg, device, checkpoint_path, resume, log)
        return run_epochs(data, run, device, passes or SingleProcess(), checkpoint_path=checkpoint_path,
                          progress=progress, log=log, on_epoch_end=on_epoch_end, resumed=resume)


def start_run(data, cfg: TrainConfig, device, checkpoint_path, resume: bool, log) -> RunState:
    """Step 1 of Algorithm 1, the normalisers, the validation slice and the initial C and stored
    outputs, or all of it from a checkpoint. Every rank of a distributed run calls it identically."""
    train_idx = data.train_idx.to(torch.int64)
    generator = torch.Generator()
    if resume:
        state = load_checkpoint(checkpoint_path)
        cfg = _resumed_config(state, cfg)
        _check_same_data(state, data, checkpoint_path)
        if "split" not in state:
            raise CheckpointError(f"checkpoint {checkpoint_path} was written by an older dchml (version "
                                  f"{state.get('version')}): it can be evaluated and encoded with, not resumed")
        fit_idx, val_idx = state["split"]["fit_idx"], state["split"]["val_idx"]
        model = model_from_checkpoint(state, weights="last").to(device)
        opt_image, opt_text = make_optimizer(model.image_net, cfg), make_optimizer(model.text_net, cfg)
        opt_image.load_state_dict(state["optim_image"])
        opt_text.load_state_dict(state["optim_text"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        sel = state["selection"]
        best = {"epoch": sel["epoch"], "score": sel["score"], "model": state["model"]} if sel["epoch"] else {}
        return RunState(cfg, model, opt_image, opt_text, state["codes_c"].to(device),
                        state["stored_image"].to(device), state["stored_text"].to(device), generator,
                        train_idx, fit_idx, val_idx, data.labels[fit_idx].to(device, torch.float32),
                        list(state["history"]), dict(state["phnet"]), int(state["epoch"]), best,
                        {k: v for k, v in state["data"].items() if k not in ("name", "n", "train_idx")},
                        int(sel["stale"]), bool(sel["stopped_early"]))
    torch.manual_seed(cfg.seed)
    generator.manual_seed(cfg.seed)
    fit_idx, val_idx = validation_split(train_idx, cfg)
    model = build_model(data, cfg, log).to(device)
    fit_normalizers(model, data, fit_idx, cfg)
    diag = train_proxies(model, cfg, log)
    opt_image, opt_text = make_optimizer(model.image_net, cfg), make_optimizer(model.text_net, cfg)
    codes_c = sgn(torch.randn(fit_idx.numel(), cfg.bits, generator=generator)).to(device)
    # Stored outputs start as the untrained nets' outputs, so l_I has a real partner from step 1.
    from .encoding import continuous_codes

    stored_image = continuous_codes(model, data.image[fit_idx], "image", device=device).to(device)
    stored_text = continuous_codes(model, data.text[fit_idx], "text", device=device).to(device)
    return RunState(cfg, model, opt_image, opt_text, codes_c, stored_image, stored_text, generator, train_idx,
                    fit_idx, val_idx, data.labels[fit_idx].to(device, torch.float32), [], diag, 0, {},
                    identity(data, train_idx))


def run_epochs(data, run: RunState, device, passes, *, checkpoint_path=None, progress=False, log=None,
               on_epoch_end=None, resumed=False) -> TrainResult:
    """Steps 2a-2c of Algorithm 1 for every remaining epoch, with validation, selection, early
    stopping and a checkpoint committed after each epoch (the epoch line is logged after it)."""
    log = log or (lambda message: None)
    cfg = run.cfg
    if resumed:
        log(f"resuming {cfg.method} from {checkpoint_path} after epoch {run.epoch} of {cfg.epochs}")
    passes.prepare(run, log)
    weights = cfg.loss_weights()
    n_fit = run.fit_idx.numel()
    steps = math.ceil(n_fit / cfg.batch_size)
    precision = MixedPrecision(cfg.precision, device)
    state = {}
    while run.epoch < cfg.epochs and not run.stopped_early:
        epoch = run.epoch + 1
        began = time.perf_counter()
        bar = progress_bar(2 * steps, f"{cfg.method} epoch {epoch}/{cfg.epochs}{passes.label}", progress)
        stats = {}
        try:
            # 2a: image net, text side from the stored text outputs; 2b: the reverse.
            for modality, stored_self, stored_other, optimizer, inputs in (
                    ("image", run.stored_image, run.stored_text, run.opt_image, training_images(data, cfg)),
                    ("text", run.stored_text, run.stored_image, run.opt_text, data.text)):
                order = torch.randperm(n_fit, generator=run.generator)
                stats[modality] = passes.run_pass(PassInputs(
                    modality, passes.net(run, modality), optimizer, inputs, run.fit_idx, order, stored_self,
                    stored_other, run.codes_c, run.labels, run.model.proxies, weights, cfg.batch_size, device,
                    lambda step, e=epoch: learning_rate(cfg, e, step, steps), bar, precision))
        finally:
            if bar is not None:
                bar.close()
        run.codes_c = update_codes(run.stored_image, run.stored_text)  # 2c
        run.epoch = epoch
        record = {"epoch": epoch, "seconds": passes.epoch_seconds(time.perf_counter() - began),
                  "loss_image": stats["image"]["loss"], "loss_text": stats["text"]["loss"],
                  "lr": learning_rate(cfg, epoch, steps, steps),
                  **full_objective(run.stored_image, run.stored_text, run.codes_c, run.model.proxies, run.labels,
                                   weights),
                  "val_i2t_map": None, "val_t2i_map": None}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            _validate(data, run, record, device, passes)
        run.history.append(record)
        state = checkpoint_state(run, data, device)
        passes.commit(state, checkpoint_path)
        log(epoch_line(cfg, record))
        if run.stopped_early:
            log(f"stopping early: no better validation MAP in {run.stale} evaluations since epoch "
                f"{run.best['epoch']}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    passes.finish(run)
    selection = selection_summary(run)
    if run.best and cfg.select == "best":
        run.model.load_state_dict(run.best["model"])
    log(selection["reason"])
    run.model.eval()
    return TrainResult(model=run.model, history=run.history, proxy_diagnostics=run.diag, state=state,
                       selection=selection)


def _validate(data, run: RunState, record: dict, device, passes) -> None:
    """Validation MAP of this epoch; updates the best epoch and the early-stopping count."""
    if run.val_idx.numel() == 0:
        return
    cfg = run.cfg
    scores = retrieval_scores(run.model, data, run.val_idx, run.fit_idx, topk=min(cfg.topk, run.fit_idx.numel()),
                              device=device)
    record["val_i2t_map"], record["val_t2i_map"] = scores["i2t_map"], scores["t2i_map"]
    score = (scores["i2t_map"] + scores["t2i_map"]) / 2
    better = passes.agree(not run.best or score > run.best["score"])
    if better:
        run.best = {"epoch": run.epoch, "score": score,
                    "model": {k: v.detach().to("cpu").clone() for k, v in run.model.state_dict().items()}}
        run.stale = 0
    else:
        run.stale += 1
    run.stopped_early = cfg.patience > 0 and run.stale >= cfg.patience and run.epoch < cfg.epochs


def selection_summary(run: RunState) -> dict:
    """Which epoch's model is kept and why, in words for the log and the report."""
    cfg, last = run.cfg, run.epoch
    n_val = int(run.val_idx.numel())
    if not run.best or cfg.select == "last":
        why = ("no validation slice (val_fraction 0 or too few training items)" if not n_val
               else "select='last'")
        return {"kept_epoch": last, "last_epoch": last, "rule": "last", "validation_items": n_val,
                "validation_map": None, "stopped_early": False,
                "reason": f"kept the last epoch ({last}): {why}"}
    best = run.best["epoch"]
    reason = (f"kept epoch {best} of {last}: best mean validation MAP {run.best['score']:.4f} on {n_val} held-out "
              f"training items")
    if run.stopped_early:
        reason += f"; stopped early after {run.stale} evaluations without improvement"
    return {"kept_epoch": best, "last_epoch": last, "rule": "best validation MAP", "validation_items": n_val,
            "validation_map": run.best["score"], "stopped_early": run.stopped_early, "reason": reason}


def epoch_line(cfg, record) -> str:
    line = (f"{cfg.method} epoch {record['epoch']}/{cfg.epochs}: objective {record['objective']:.4f} "
            f"(image pass {record['loss_image']:.4f}, text pass {record['loss_text']:.4f}), {record['seconds']:.1f}s")
    if record["val_i2t_map"] is not None:
        line += f", validation MAP I->T {record['val_i2t_map']:.4f} T->I {record['val_t2i_map']:.4f}"
    return line


def checkpoint_state(run: RunState, data, device) -> dict:
    """The checkpoint of the run after its latest epoch. `model` holds the weights to use (the
    selected epoch's), `model_last` the latest weights when they differ (what a resume continues)."""
    rng = {"generator": run.generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    cpu = torch.device("cpu")
    latest = {k: v.detach().to(cpu).clone() for k, v in run.model.state_dict().items()}
    keep_best = run.best and run.cfg.select == "best" and run.best["epoch"] != run.epoch
    state = {
        "epoch": run.epoch,
        "config": run.cfg.to_dict(),
        "model_spec": run.model.spec(),
        "model": run.best["model"] if keep_best else latest,
        "optim_image": _to_cpu(run.opt_image.state_dict()),
        "optim_text": _to_cpu(run.opt_text.state_dict()),
        "codes_c": run.codes_c.to(cpu).clone(),
        "stored_image": run.stored_image.to(cpu).clone(),
        "stored_text": run.stored_text.to(cpu).clone(),
        "rng": rng,
        "history": [dict(r) for r in run.history],
        "phnet": dict(run.diag),
        "data": {"name": data.name, "n": int(data.n), "train_idx": run.train_idx.clone(), **run.identity,
                 "encoders": dict(data.encoders or {})},
        "split": {"fit_idx": run.fit_idx.clone(), "val_idx": run.val_idx.clone()},
        "selection": {"epoch": run.best.get("epoch", 0), "score": run.best.get("score"), "stale": run.stale,
                      "stopped_early": run.stopped_early, "summary": selection_summary(run)},
    }
    if keep_best:
        state["model_last"] = latest
    return state


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _resumed_config(state: dict, requested: TrainConfig) -> TrainConfig:
    saved = TrainConfig.from_dict(state["config"])
    if requested.epochs < int(state["epoch"]):
        raise ValueError(f"epochs={requested.epochs} but the checkpoint already completed {state['epoch']} epochs")
    return dataclasses.replace(saved, epochs=requested.epochs, eval_every=requested.eval_every,
                               device=requested.device)


def _check_same_data(state: dict, data, path: str) -> None:
    why = difference(state.get("data", {}), data)
    if why:
        raise CheckpointError(f"checkpoint {path} cannot be resumed on this data: {why}; "
                              "resume with the data and --seed it was trained with")
