"""One pass of one modality over the training items (steps 2a / 2b of Algorithm 1, the one pass
of a single-modality method), the optimiser and its learning-rate schedule, and DCHML's C update
(step 2c). What a mini-batch's loss is comes from the method (dchml.method.methods)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.images import training_batches
from .backbones import param_groups
from .config import TrainConfig
from .models import sgn
from .precision import FP32, MixedPrecision


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
    warm-up over `warmup_epochs`, then cosine decay to 0 at `epochs`, constant, or a step decay
    (x step_factor every step_every epochs, as torch's StepLR stepped once per epoch). A pure
    function of the position, so a resumed run needs no scheduler state."""
    t = (epoch - 1) + step / max(steps, 1)
    if t < cfg.warmup_epochs:
        return cfg.lr * (t + 1 / max(steps, 1)) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_factor ** ((epoch - 1) // cfg.step_every)
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min((t - cfg.warmup_epochs) / span, 1.0)))


# --- one pass of one modality ------------------------------------------------------------------------


@dataclass
class PassInputs:
    """Everything one pass of one modality needs. `positions` index the fitted training items
    (already shuffled); `rows` maps a position to its row in `inputs`; stored_self is updated in
    place with the pass's outputs; `loss(out, pos)` gives a mini-batch's (loss, {term: float})
    (the method's, pos on the device); `lr_at(step)` gives the learning rate of each step."""

    modality: str
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    stored_self: torch.Tensor
    loss: object
    batch_size: int
    device: torch.device
    lr_at: object
    progress: object = None
    precision: MixedPrecision = FP32
    terms: tuple = ()              # the names of the terms `loss` reports


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the schedule's rate, keeping each parameter group's ratio to the base rate (a
    backbone's lr_scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def train_pass(p: PassInputs) -> dict:
    """One pass of `p.net` over `p.positions` in batches; returns the mean step loss and terms."""
    p.net.train()
    totals = {"loss": 0.0}
    seen = 0
    batches = training_batches(p.inputs, p.rows, p.positions, p.batch_size)
    for step, (pos, x) in enumerate(batches):
        x = x.to(p.device, non_blocking=True)
        pos_d = pos.to(p.device)
        with p.precision.autocast():
            out = p.net(x)
        out = out.float()
        loss, terms = p.loss(out, pos_d)
        set_learning_rate(p.optimizer, p.lr_at(step))
        p.optimizer.zero_grad(set_to_none=True)
        p.precision.step(loss, p.optimizer)
        p.stored_self[pos_d] = out.detach()
        b = pos.numel()
        seen += b
        totals["loss"] += float(loss.detach()) * b
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + value * b
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
