"""Step 1 of Algorithm 1 (docs/spec.md §5) and of PSLDH (§6.1): train the category network on its
loss, then freeze the ±1 category codes G into model.proxies."""
from __future__ import annotations

import torch

from ..losses.functional import proxy_network_loss
from .config import TrainConfig
from .models import HashModel


def proxy_diagnostics(proxies: torch.Tensor) -> dict:
    """Minimum and mean pairwise Hamming distance between the ±1 proxy codes (ideal >= k/2)."""
    c, k = proxies.shape
    if c < 2:
        return {"min_hamming": float(k), "mean_hamming": float(k), "bits": k, "n_proxies": c}
    dist = (k - proxies @ proxies.T) / 2
    off = dist[~torch.eye(c, dtype=torch.bool, device=dist.device)]
    return {"min_hamming": float(off.min()), "mean_hamming": float(off.mean()), "bits": k, "n_proxies": c}


def train_proxies(model: HashModel, cfg: TrainConfig, log=None) -> dict:
    """DCHML's step 1: PHNet on L_PH (docs/spec.md §1)."""
    return train_category_net(model, cfg, lambda g: proxy_network_loss(g, alpha=cfg.alpha, beta=cfg.beta),
                              "PHNet", "L_PH", log)


def train_category_net(model: HashModel, cfg: TrainConfig, loss_of, name: str, loss_name: str, log=None) -> dict:
    """Train model.phnet on loss_of(Ĝ) until the relative improvement over 100 steps drops below
    proxy_tol (or proxy_steps), then freeze G = sgn(Ĝ) into model.proxies. Returns the diagnostics."""
    # The category network's matrices are tiny (c x 512): on the CPU, thread start-up and contention
    # cost far more than they save (measured 1 ms/step on one thread vs up to 60 ms on two busy cores).
    threads = torch.get_num_threads()
    if next(model.phnet.parameters()).device.type == "cpu":
        torch.set_num_threads(1)
    try:
        diag = _fit(model, cfg, loss_of)
    finally:
        torch.set_num_threads(threads)
    if log:
        log(f"{name}: {diag['steps']} steps, {loss_name} {diag['loss']:.4g}, code Hamming distance min "
            f"{diag['min_hamming']:.0f} / mean {diag['mean_hamming']:.1f} of {diag['bits']} bits")
        if diag["min_hamming"] == 0:
            log("warning: two categories share a code; use more bits for this many labels")
    return diag


def _optimizer(phnet, cfg: TrainConfig):
    """Adam by default [choice, docs/spec.md C1]; 'sgd' is PSLDH's public schedule: SGD with
    weight decay 1e-5 and the rate divided by 10 every 100 steps."""
    if cfg.proxy_optimizer == "sgd":
        optimizer = torch.optim.SGD(phnet.parameters(), lr=cfg.proxy_lr, weight_decay=1e-5)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.1)
    return torch.optim.Adam(phnet.parameters(), lr=cfg.proxy_lr), None


def _fit(model: HashModel, cfg: TrainConfig, loss_of) -> dict:
    phnet = model.phnet
    optimizer, schedule = _optimizer(phnet, cfg)
    window, previous, loss_value, step = 100, None, float("nan"), 0
    for step in range(1, cfg.proxy_steps + 1):
        loss = loss_of(phnet.continuous_proxies())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        loss_value = float(loss.detach())
        if step % window == 0 and cfg.proxy_tol > 0:
            if previous is not None and previous - loss_value <= cfg.proxy_tol * max(abs(previous), 1e-12):
                break
            previous = loss_value
    with torch.no_grad():
        model.proxies.copy_(phnet.proxies())
    return {"steps": step, "loss": loss_value, **proxy_diagnostics(model.proxies)}
