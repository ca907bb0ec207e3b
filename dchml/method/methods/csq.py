"""CSQ, Central Similarity Quantization (Yuan et al., CVPR 2020; docs/spec.md §12), the most used
baseline of DeepHash-pytorch, as a peer to compare PSLDH with on the same networks and data: each
category gets a ±1 hash centre (rows of [H_k; -H_k] for a Hadamard matrix H_k when c <= 2k and k is
a power of two, else seeded Bernoulli centres kept apart), a multi-label item's centre is the sign
of the sum of its categories' centres (ties broken by one fixed random code), and the network is
trained with a binary cross-entropy to the centre plus lambda times a quantization term."""
from __future__ import annotations

import numpy as np
import torch

from ...losses.functional import central_similarity_loss
from ..proxies import proxy_diagnostics
from .base import Method

CSQ_PARAMS = {"lam": 1e-4}

# DeepHash-pytorch's CSQ.py (stored copy, commit 0fc62a5): Adam at 1e-3, batch 128, 150 epochs,
# lambda 1e-4 (that script keeps the best epoch by its test MAP; here the last epoch is kept, since
# nothing is chosen on the queries).
CSQ_PAPER = dict(epochs=150, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0, warmup_epochs=0,
                 schedule="constant", image_norm="none", text_norm="none", val_fraction=0.0, patience=0,
                 select="last", eval_every=5, backbone_lr_scale=1.0)

BERNOULLI_TRIES = 20


def hadamard(k: int) -> np.ndarray | None:
    """Sylvester's Hadamard matrix of order k (a power of two), else None."""
    if k < 1 or k & (k - 1):
        return None
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < k:
        h = np.block([[h, h], [h, -h]])
    return h


def hash_centers(n_labels: int, bits: int, seed: int) -> tuple[torch.Tensor, str]:
    """(centres (c, k) ±1, how they were made). Bernoulli centres: each has exactly k/2 bits -1,
    drawn from the seed; of BERNOULLI_TRIES draws, the first whose minimum pairwise distance
    exceeds k/4 with mean >= k/2 is kept, else the one with the largest minimum [choice]."""
    h = hadamard(bits)
    if h is not None and n_labels <= 2 * bits:
        return torch.from_numpy(np.concatenate([h, -h])[:n_labels].copy()), "hadamard"
    rng = np.random.default_rng([seed, 0xC5A])
    best, best_min = None, -1.0
    for _ in range(BERNOULLI_TRIES):
        centers = np.ones((n_labels, bits), dtype=np.float32)
        for row in centers:
            row[rng.choice(bits, bits // 2, replace=False)] = -1
        dist = (bits - centers @ centers.T) / 2
        off = dist[~np.eye(n_labels, dtype=bool)] if n_labels > 1 else np.array([float(bits)])
        if off.min() > best_min:
            best, best_min = centers, float(off.min())
        if off.min() > bits / 4 and off.mean() >= bits / 2:
            break
    return torch.from_numpy(best), "bernoulli"


def item_centers(labels: torch.Tensor, centers: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Each item's centre: sgn of the sum of its categories' centres, `fill` where the sum is 0."""
    total = labels.to(centers.dtype) @ centers
    return torch.where(total > 0, torch.ones_like(total),
                       torch.where(total < 0, -torch.ones_like(total), fill.expand_as(total)))


class CSQ(Method):
    name = "csq"
    title = "CSQ"
    cross_modal = False
    params = CSQ_PARAMS
    terms = ("center",)
    category_net = False
    default_backbone = "alexnet"
    paper_recipe = CSQ_PAPER
    summary = "single modality: central similarity quantization to Hadamard hash centres (CVPR 2020)"

    def make_category_codes(self, model, cfg, log=None) -> dict:
        centers, how = hash_centers(model.proxies.shape[0], model.bits, cfg.seed)
        fill_rng = np.random.default_rng([cfg.seed, 0xF11])
        fill = torch.from_numpy(np.where(fill_rng.random(model.bits) < 0.5, -1.0, 1.0).astype(np.float32))
        with torch.no_grad():
            model.proxies.copy_(centers)
            model.center_fill.copy_(fill)
        diag = {"steps": 0, "loss": 0.0, "centers": how, **proxy_diagnostics(model.proxies)}
        if log:
            log(f"CSQ hash centres: {how}, Hamming distance min {diag['min_hamming']:.0f} / mean "
                f"{diag['mean_hamming']:.1f} of {diag['bits']} bits")
        return diag

    def item_targets(self, model, labels: torch.Tensor) -> torch.Tensor:
        centers = model.proxies.detach().to(labels.device, torch.float64)
        return item_centers(labels.to(torch.float64), centers, model.center_fill.detach().to(labels.device,
                                                                                              torch.float64))

    def pass_loss(self, run, modality: str):
        model, lam = run.model, run.cfg.lam

        def loss(out, pos):
            targets = item_centers(run.labels[pos], model.proxies, model.center_fill)
            rows = central_similarity_loss(out, targets, lam=lam, reduction="none")
            total = rows.mean()
            return total, {"center": float(total.detach())}
        return loss

    @torch.no_grad()
    def objective(self, run) -> dict:
        (stored,) = run.stored.values()
        targets = item_centers(run.labels, run.model.proxies, run.model.center_fill)
        rows = central_similarity_loss(stored, targets, lam=run.cfg.lam, reduction="none")
        value = float(rows.mean()) if len(rows) else 0.0
        return {"objective": value, "center": value}
