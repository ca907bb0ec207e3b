"""Algorithm 1 of METHOD.md §5: PHNet first, then alternating image / text passes and the C
update, with evaluation, per-epoch atomic checkpoints and exact resume.

The loop is factored so a distributed driver can reuse it: `train_proxies` (step 1),
`train_pass` (one pass of one modality over GIVEN sample positions: a rank passes its shard),
`update_codes` (step 2c) and `evaluate` (MAP@K with the ranker).

Determinism [choice]: everything random comes from the seed: the model init and dropout from
torch's global CPU generator (forked, so the caller's RNG state is untouched and restored on
exit), the shuffles and C's random init from a dedicated torch.Generator. Both states are saved
in every checkpoint, so a resumed run equals an uninterrupted one bit for bit on the CPU.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import torch

from .backbones import find_weights, get_spec, load_backbone_weights, param_groups
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .data.images import ImageSource, training_batches
from .losses import proxy_network_loss
from .models import CrossModalHashModel, sgn
from .objective import METHODS, LossWeights, full_objective, step_loss
from .precision import FP32, MixedPrecision, check_precision


@dataclass
class TrainConfig:
    """Every hyper-parameter of the method; defaults are the paper's (METHOD.md §1, §4)."""

    method: str = "dchml"           # dchml | dchml_q (gamma = 0) | dchml_p (pairwise proxy loss)
    bits: int = 64
    epochs: int = 120               # outer iterations of Algorithm 1 (paper: converges ~120)
    batch_size: int = 128
    lr: float = 1e-3                # SGD, paper range [1e-4, 1e-3]
    momentum: float = 0.0           # plain SGD as in the paper
    weight_decay: float = 0.0
    eta: float = 0.3
    mu: float = 0.3
    lam: float = 0.001              # lambda of eq. 16
    gamma: float = 0.01             # NUS-WIDE's value
    alpha: float = 0.05             # PHNet bit balance
    beta: float = 0.1               # PHNet quantization
    proxy_steps: int = 2000         # PHNet: at most this many full-batch steps ...
    proxy_lr: float = 1e-3          # ... of Adam [choice: SGD diverges on L_PH's summed scale]
    proxy_tol: float = 1e-3         # ... stopping when 100 steps improve L_PH by < tol (relative)
    eval_every: int = 5             # MAP@topk every N epochs (and always after the last)
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
    backbone_lr_scale: float = 1.0   # the backbone's lr = lr x this (0 freezes it)
    precision: str = "fp32"          # fp32 | auto | bf16 | fp16: mixed precision on CUDA
    augment: bool = False            # random crop + flip of training images streamed from files

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("bits", "epochs", "batch_size", "proxy_steps", "eval_every", "topk", "image_size",
                     "image_hidden", "text_hidden", "proxy_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "proxy_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("momentum", "weight_decay", "eta", "mu", "lam", "gamma", "alpha", "beta", "proxy_tol",
                     "backbone_lr_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        get_spec(self.image_backbone)
        check_precision(self.precision, self.device)

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


@dataclass
class TrainResult:
    model: CrossModalHashModel
    history: list = field(default_factory=list)
    proxy_diagnostics: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # the last checkpoint dict (tensors on the CPU)


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
        diag = _train_proxies(model, cfg)
    finally:
        torch.set_num_threads(threads)
    if log:
        log(f"PHNet: {diag['steps']} steps, L_PH {diag['loss']:.4g}, proxy Hamming distance min "
            f"{diag['min_hamming']:.0f} / mean {diag['mean_hamming']:.1f} of {diag['bits']} bits")
        if diag["min_hamming"] == 0:
            log("warning: two proxies are identical; use more bits for this many labels")
    return diag


def _train_proxies(model: CrossModalHashModel, cfg: TrainConfig) -> dict:
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


# --- step 2a/2b: one pass of one modality ----------------------------------------------------------


def train_pass(net, optimizer, inputs, rows, positions, stored_self, stored_other, codes_c, labels, proxies,
               weights: LossWeights, batch_size: int, device, progress=None, precision=FP32) -> dict:
    """One pass of `net` over the training positions `positions` (already shuffled), in batches.

    inputs: the modality's full data tensor, or an ImageSource (decoded by its worker processes);
    rows: data row of each training position; precision: a MixedPrecision (autocast on CUDA);
    stored_self / stored_other (n_train, k): latest outputs, stored_self updated in place;
    codes_c (n_train, k) ±1; labels (n_train, c). Returns the mean step loss and mean terms.
    """
    net.train()
    totals = {"loss": 0.0, "intra": 0.0, "inter": 0.0, "quant": 0.0}
    seen = 0
    for pos, x in training_batches(inputs, rows, positions, batch_size):
        x = x.to(device, non_blocking=True)
        pos_d = pos.to(device)
        with precision.autocast():
            out = net(x)
        out = out.float()
        loss, terms = step_loss(out, stored_other[pos_d], codes_c[pos_d], proxies, labels[pos_d], weights)
        optimizer.zero_grad(set_to_none=True)
        precision.step(loss, optimizer)
        stored_self[pos_d] = out.detach()
        b = pos.numel()
        seen += b
        totals["loss"] += float(loss.detach()) * b
        for key, value in terms.items():
            totals[key] += value * b
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{totals['loss'] / seen:.4f}")
    if not math.isfinite(totals["loss"]):
        raise FloatingPointError("the training loss became NaN or infinite; lower the learning rate (--lr)")
    return {key: value / max(seen, 1) for key, value in totals.items()}


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
    from . import mean_average_precision
    from .encoding import hash_codes

    kw = dict(batch_size=batch_size, device=device)
    q_img = hash_codes(model, data.image[data.query_idx], "image", **kw)
    q_txt = hash_codes(model, data.text[data.query_idx], "text", **kw)
    d_img = hash_codes(model, data.image[data.retrieval_idx], "image", **kw)
    d_txt = hash_codes(model, data.text[data.retrieval_idx], "text", **kw)
    ql, dl = data.labels[data.query_idx], data.labels[data.retrieval_idx]
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


# --- Algorithm 1 -----------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
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


def _optimizer(net, cfg: TrainConfig):
    return torch.optim.SGD(param_groups(net, cfg.lr, cfg.backbone_lr_scale), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(data, config: TrainConfig | None = None, *, checkpoint_path: str | None = None,
          resume: bool = False, progress: bool | None = None, log=log_to_stderr, on_epoch_end=None) -> TrainResult:
    """Run Algorithm 1 on `data` (a dchml.data.CrossModalData).

    checkpoint_path: written atomically after every epoch. resume=True continues from that file
    (its config wins, except `epochs` and `eval_every`, which may be raised/changed to extend a run).
    progress: tqdm bars (default: when stderr is a TTY). log: callable for one-line messages or None.
    on_epoch_end(epoch, record): called after each epoch's checkpoint (tests use it to interrupt).
    """
    cfg = config or TrainConfig()
    if resume and not checkpoint_path:
        raise ValueError("resume=True needs checkpoint_path")
    if progress is None:
        progress = sys.stderr.isatty()
    log = log or (lambda message: None)
    device = _resolve_device(cfg.device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _train(data, cfg, device, checkpoint_path, resume, progress, log, on_epoch_end)


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
    history: list
    diag: dict
    start_epoch: int
    checkpoint: dict  # the restored checkpoint's entries; empty for a fresh run


def start_run(data, cfg: TrainConfig, device, train_idx, checkpoint_path, resume: bool, log) -> RunState:
    """Step 1 of Algorithm 1 and the initial C and stored outputs, or all of it from a checkpoint.

    Shared by the single-process and the distributed drivers, so both restore exactly the same state.
    """
    generator = torch.Generator()
    if resume:
        state = load_checkpoint(checkpoint_path)
        cfg = _resumed_config(state, cfg)
        _check_same_data(state, data, checkpoint_path)
        model = model_from_checkpoint(state).to(device)
        opt_image, opt_text = _optimizer(model.image_net, cfg), _optimizer(model.text_net, cfg)
        opt_image.load_state_dict(state["optim_image"])
        opt_text.load_state_dict(state["optim_text"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        return RunState(cfg, model, opt_image, opt_text, state["codes_c"].to(device),
                        state["stored_image"].to(device), state["stored_text"].to(device), generator,
                        list(state["history"]), dict(state["phnet"]), int(state["epoch"]),
                        {k: v for k, v in state.items() if k not in ("format", "version")})
    torch.manual_seed(cfg.seed)
    generator.manual_seed(cfg.seed)
    model = build_model(data, cfg, log).to(device)
    diag = train_proxies(model, cfg, log)
    opt_image, opt_text = _optimizer(model.image_net, cfg), _optimizer(model.text_net, cfg)
    codes_c = sgn(torch.randn(train_idx.numel(), cfg.bits, generator=generator)).to(device)
    # Stored outputs start as the untrained nets' outputs, so l_I has a real partner from step 1.
    from .encoding import continuous_codes

    stored_image = continuous_codes(model, data.image[train_idx], "image", device=device).to(device)
    stored_text = continuous_codes(model, data.text[train_idx], "text", device=device).to(device)
    return RunState(cfg, model, opt_image, opt_text, codes_c, stored_image, stored_text, generator, [], diag, 0, {})


def _train(data, cfg, device, checkpoint_path, resume, progress, log, on_epoch_end) -> TrainResult:
    train_idx = data.train_idx.to(torch.int64)
    labels = data.labels[train_idx].to(device, torch.float32)
    n_train = train_idx.numel()
    run = start_run(data, cfg, device, train_idx, checkpoint_path, resume, log)
    cfg, model, opt_image, opt_text = run.cfg, run.model, run.opt_image, run.opt_text
    codes_c, stored_image, stored_text, generator = run.codes_c, run.stored_image, run.stored_text, run.generator
    history, diag, start_epoch, state = run.history, run.diag, run.start_epoch, run.checkpoint
    if resume:
        log(f"resuming {cfg.method} from {checkpoint_path} after epoch {start_epoch} of {cfg.epochs}")
    weights = cfg.loss_weights()
    proxies = model.proxies
    steps_per_pass = math.ceil(n_train / cfg.batch_size)
    images, precision = training_images(data, cfg), MixedPrecision(cfg.precision, device)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        began = time.perf_counter()
        bar = _progress(2 * steps_per_pass, f"{cfg.method} epoch {epoch}/{cfg.epochs}", progress)
        try:
            # 2a: image net, text side from the stored text outputs; 2b: the reverse.
            order = torch.randperm(n_train, generator=generator)
            image_stats = train_pass(model.image_net, opt_image, images, train_idx, order, stored_image,
                                     stored_text, codes_c, labels, proxies, weights, cfg.batch_size, device, bar,
                                     precision)
            order = torch.randperm(n_train, generator=generator)
            text_stats = train_pass(model.text_net, opt_text, data.text, train_idx, order, stored_text,
                                    stored_image, codes_c, labels, proxies, weights, cfg.batch_size, device, bar,
                                    precision)
        finally:
            if bar is not None:
                bar.close()
        codes_c = update_codes(stored_image, stored_text)  # 2c
        seconds = time.perf_counter() - began
        record = epoch_record(cfg, epoch, seconds, image_stats, text_stats,
                              full_objective(stored_image, stored_text, codes_c, proxies, labels, weights),
                              lambda: evaluate(model, data, topk=cfg.topk, device=device))
        history.append(record)
        log(_epoch_line(cfg, record))
        state = _checkpoint_state(model, cfg, epoch, opt_image, opt_text, codes_c, stored_image, stored_text,
                                  generator, device, history, diag, data, train_idx)
        if checkpoint_path:
            save_checkpoint(state, checkpoint_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    model.eval()
    return TrainResult(model=model, history=history, proxy_diagnostics=diag, state=state)


def training_images(data, cfg: TrainConfig):
    """The image input of the training passes: data.image, with the augmentation switched on
    for images streamed from files when cfg.augment asks for it."""
    if isinstance(data.image, ImageSource):
        return data.image.with_options(augment=cfg.augment)
    return data.image


def epoch_record(cfg: TrainConfig, epoch: int, seconds: float, image_stats: dict, text_stats: dict,
                 objective: dict, evaluate_now) -> dict:
    """One epoch's history entry; MAP (from `evaluate_now()`) every `eval_every` epochs and at the end."""
    record = {"epoch": epoch, "seconds": seconds, "loss_image": image_stats["loss"],
              "loss_text": text_stats["loss"], **objective, "i2t_map": None, "t2i_map": None}
    if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
        scores = evaluate_now()
        record["i2t_map"], record["t2i_map"] = scores["i2t_map"], scores["t2i_map"]
    return record


def _epoch_line(cfg, record) -> str:
    line = (f"{cfg.method} epoch {record['epoch']}/{cfg.epochs}: objective {record['objective']:.4f} "
            f"(image pass {record['loss_image']:.4f}, text pass {record['loss_text']:.4f}), {record['seconds']:.1f}s")
    if record["i2t_map"] is not None:
        line += f", MAP@{cfg.topk} I->T {record['i2t_map']:.4f} T->I {record['t2i_map']:.4f}"
    return line


def _checkpoint_state(model, cfg, epoch, opt_image, opt_text, codes_c, stored_image, stored_text, generator,
                      device, history, diag, data, train_idx) -> dict:
    rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    cpu = torch.device("cpu")
    return {
        "epoch": epoch,
        "config": cfg.to_dict(),
        "model_spec": model.spec(),
        "model": {k: v.detach().to(cpu).clone() for k, v in model.state_dict().items()},
        "optim_image": _to_cpu(opt_image.state_dict()),
        "optim_text": _to_cpu(opt_text.state_dict()),
        "codes_c": codes_c.to(cpu).clone(),
        "stored_image": stored_image.to(cpu).clone(),
        "stored_text": stored_text.to(cpu).clone(),
        "rng": rng,
        "history": [dict(r) for r in history],
        "phnet": dict(diag),
        "data": {"name": data.name, "n": int(data.n), "train_idx": train_idx.clone(),
                 "encoders": dict(data.encoders or {})},
    }


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
    saved = state.get("data", {})
    same = (saved.get("n") == data.n and isinstance(saved.get("train_idx"), torch.Tensor)
            and torch.equal(saved["train_idx"], data.train_idx.to(torch.int64)))
    if not same:
        raise CheckpointError(f"checkpoint {path} was trained on different data ({saved.get('name')!r}, "
                              f"n={saved.get('n')}); resume with the same --data and --seed")
