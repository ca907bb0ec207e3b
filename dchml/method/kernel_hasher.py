"""The kernel hasher: the strongest of the shallow baselines scored beside every run.

For one modality at a time (it never looks at the other, so it serves cross-modal and
single-modality data alike): RBF features on m anchor points drawn from the fitted training
items, ridge regression from those features to the code each training item should have (the
caller's targets: the mean proxy code of its labels), then sign.

Where the kernel looks [choice, measured]: RBF distances are taken either on the normalised
inputs, or on their ridge projection onto the targets (a k-dimensional, supervised metric: the
kernel then corrects the linear hasher's prediction locally, pulling it towards the codes that
label sets near it actually have). Which space, the kernel width (a multiple of the median
item-anchor distance) and the ridge strengths are chosen on the validation slice by MAP: the
slice's predicted codes ranked against the fitted items' target codes, so nothing is chosen on
the queries and the choice needs no second modality. On the built-in set the inputs' RBF
features alone only match the linear hasher (its classes are nearly linear in the features),
while the projection beats it (docs/compare.md has the numbers).

Deterministic: the anchors are a sample of the fitted items drawn from numpy's
default_rng([seed, tag]); everything else is closed-form, so the hasher is a pure function of
the features, the split and the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..retrieval.metrics import mean_average_precision
from .models import sgn

DEFAULT_ANCHORS = 1000
# The width and strengths are chosen with the ridge fitted on, and the validation items ranked
# against, at most this many of the fitted items (then refitted on all of them): the choice
# costs a fraction of one full fit per candidate, and a few thousand items pin it down.
SELECTION_ITEMS = 3000
# Kernel widths as multiples of the median item-anchor distance: the usual heuristic (KSH, SDH)
# is the median itself; half and double it bracket it for sets where it is off.
BANDWIDTH_SCALES = (0.5, 1.0, 2.0)
# Ridge strengths, times the mean eigenvalue of the centred features' Gram matrix.
RIDGE_STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1)
PROJECTION_STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # the linear ridge onto the targets
SPACES = ("inputs", "projection")
FALLBACK = (1.0, 1e-2)  # (width scale, strength) on the inputs when there is no validation slice
_ANCHOR_TAG, _SELECTION_TAG = 0xA11C, 0x5E1


def sample_positions(n: int, size: int, seed: int, tag: int) -> torch.Tensor:
    """Sorted positions of min(size, n) of n items, drawn from (seed, tag) without replacement."""
    if size >= n:
        return torch.arange(n)
    picked = np.random.default_rng([seed, tag]).choice(n, size=size, replace=False)
    return torch.from_numpy(np.sort(picked)).to(torch.int64)


def squared_distances(x: torch.Tensor, anchors: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """(n, m) squared Euclidean distances in float64, in row blocks (bounded memory)."""
    a = anchors.to(torch.float64)
    a_sq = (a * a).sum(1)
    out = torch.empty(x.shape[0], a.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[0], batch):
        xb = x[start:start + batch].to(torch.float64)
        block = (xb * xb).sum(1, keepdim=True) + a_sq - 2.0 * (xb @ a.T)
        out[start:start + batch] = block.clamp_min_(0)
    return out


def median_distance(sq_dist: torch.Tensor) -> float:
    """The median item-anchor distance: the unit of the kernel width."""
    return float(sq_dist.sqrt().median()) or 1.0


def rbf(sq_dist: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(sq_dist / (-2.0 * bandwidth * bandwidth))


class Ridge:
    """Ridge regression x -> targets with a bias, for any number of strengths from one Gram
    matrix (the n x n one when there are fewer rows than columns). A strength is relative to
    the mean eigenvalue of the Gram matrix, so one grid fits features of any scale."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor):
        x, targets = x.to(torch.float64), targets.to(torch.float64)
        self.x_mean, self.t_mean = x.mean(0), targets.mean(0)
        self.xc = x - self.x_mean
        n, d = self.xc.shape
        self.dual = d > n
        self.gram = self.xc @ self.xc.T if self.dual else self.xc.T @ self.xc
        self.scale = float(self.gram.diagonal().mean()) or 1.0
        tc = targets - self.t_mean
        self.rhs = tc if self.dual else self.xc.T @ tc

    def weights(self, strength: float) -> torch.Tensor:
        system = self.gram.clone()
        system.diagonal().add_(strength * self.scale)
        solved = torch.cholesky_solve(self.rhs, torch.linalg.cholesky(system))
        return self.xc.T @ solved if self.dual else solved

    def affine(self, strength: float) -> "Affine":
        return Affine(self.x_mean, self.weights(strength), self.t_mean)


@dataclass(frozen=True)
class Affine:
    """x -> (x - shift) @ matrix + offset: a fitted ridge map."""

    shift: torch.Tensor
    matrix: torch.Tensor
    offset: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float64) - self.shift) @ self.matrix + self.offset


@dataclass(frozen=True)
class KernelHasher:
    """A fitted kernel hasher: code(x) = sgn(readout(rbf(||space(x) - anchors||))), where space
    is the identity or the linear projection onto the targets."""

    projection: Affine | None   # None: the kernel is on the inputs themselves
    anchors: torch.Tensor       # (m, d) anchor points, in the kernel's space
    bandwidth: float            # sigma: phi_j(x) = exp(-||x - a_j||^2 / (2 sigma^2))
    readout: Affine             # (m,) RBF features -> (k,) real-valued code

    def space(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64) if self.projection is None else self.projection(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(rbf(squared_distances(self.space(x), self.anchors), self.bandwidth))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """±1 float32 codes (n, k)."""
        return sgn(self.predict(x).float())


def fit_kernel_hasher(fit_x: torch.Tensor, targets: torch.Tensor, *, val_x: torch.Tensor | None = None,
                      val_labels: torch.Tensor | None = None, fit_labels: torch.Tensor | None = None,
                      topk: int = 5000, seed: int = 0, n_anchors: int = DEFAULT_ANCHORS,
                      spaces=SPACES) -> tuple[KernelHasher, dict]:
    """Fit on one modality's normalised fitted items `fit_x` (n, d) and their `targets` (n, k).
    With a validation slice (`val_x`, `val_labels`, and the fitted items' `fit_labels`) the space,
    width and strengths are chosen by its MAP; without one, RBF on the inputs with FALLBACK.
    Returns the hasher and what was chosen: {"space", "bandwidth", "bandwidth_scale",
    "ridge_strength", "projection_strength", "anchors", "validation_map"}."""
    fit_x, targets = fit_x.to(torch.float64), targets.to(torch.float64)
    n = fit_x.shape[0]
    anchor_idx = sample_positions(n, n_anchors, seed, _ANCHOR_TAG)
    subset = sample_positions(n, SELECTION_ITEMS, seed, _SELECTION_TAG)
    chosen = {"space": "inputs", "bandwidth_scale": FALLBACK[0], "ridge_strength": FALLBACK[1],
              "projection_strength": None, "validation_map": None}
    projection = None
    if val_x is not None and val_x.shape[0] > 0:
        chosen, projection = _choose(fit_x, targets, val_x.to(torch.float64), anchor_idx, subset,
                                     _validation_scorer(targets[subset], val_labels, fit_labels[subset], topk),
                                     spaces)
    z = fit_x if projection is None else projection(fit_x)
    anchors = z[anchor_idx]
    sq = squared_distances(z, anchors)
    sigma = chosen["bandwidth_scale"] * median_distance(sq[subset])
    readout = Ridge(rbf(sq, sigma), targets).affine(chosen["ridge_strength"])
    return KernelHasher(projection, anchors, sigma, readout), {**chosen, "bandwidth": sigma,
                                                                "anchors": int(anchor_idx.numel())}


def _validation_scorer(targets, val_labels, fit_labels, topk):
    """MAP of real-valued predictions for the validation items, signed, against the codes
    (signed targets) that database items with `fit_labels` should have."""
    database = sgn(targets.float())
    k = min(topk, database.shape[0])
    return lambda predicted: float(mean_average_precision(sgn(predicted.float()), database, val_labels, fit_labels,
                                                          topk=k))


def _choose(fit_x, targets, val_x, anchor_idx, subset, score, spaces):
    """The best (space, width scale, strength) by validation MAP, with the readout fitted on the
    `subset` of the fitted items; returns (choice dict, the projection of the chosen space)."""
    best = None
    for space in spaces:
        projection, projection_strength = None, None
        if space == "projection":
            linear = Ridge(fit_x, targets)
            projection_strength = max(PROJECTION_STRENGTHS, key=lambda a: score(linear.affine(a)(val_x)))
            projection = linear.affine(projection_strength)
        z_fit, z_val = (fit_x, val_x) if projection is None else (projection(fit_x), projection(val_x))
        anchors = z_fit[anchor_idx]
        sub_sq, val_sq = squared_distances(z_fit[subset], anchors), squared_distances(z_val, anchors)
        median = median_distance(sub_sq)
        for scale in BANDWIDTH_SCALES:
            sigma = scale * median
            ridge, val_phi = Ridge(rbf(sub_sq, sigma), targets[subset]), rbf(val_sq, sigma)
            for strength in RIDGE_STRENGTHS:
                value = score(ridge.affine(strength)(val_phi))
                if best is None or value > best[0]["validation_map"]:
                    best = ({"space": space, "bandwidth_scale": scale, "ridge_strength": strength,
                             "projection_strength": projection_strength, "validation_map": value}, projection)
    return best
