"""Peers of PSLDH for the single-modality panel (benchmarks/single_sweep.py), trained on the SAME
feature MLP (Linear(d, 2048) -> ReLU -> Linear(2048, k)), the same normalised inputs and the same
loop as dchml's methods (Adam, cosine schedule, validation slice, best epoch kept, early stop), so
that a comparison is about the loss. Benchmark code only: nothing here is part of the product.

Deep-hashing losses, as DeepHash-pytorch (github swuxyj/DeepHash-pytorch) implements them
(DPSH.py at 302384d, DSH.py at c517f7e, HashNet.py at d1effa8; the public settings are theirs):

- DPSH (Li et al., IJCAI 2016): pairwise likelihood of the batch against the stored outputs U of
  every training item, theta = u.U^T / 2, loss = mean(log(1 + exp(-|theta|)) + max(theta, 0)
  - s * theta) + alpha * mean((u - sgn u)^2), s = 1 when two items share a label; alpha 0.1;
  raw outputs (no tanh), as DeepHash-pytorch's hash layer.
- DSH (Liu et al., CVPR 2016): contrastive loss against the stored outputs, margin m = 2k on the
  squared distance: mean(s/2 * d + (1 - s)/2 * max(m - d, 0)) + alpha * mean(| |u| - 1 |); alpha
  0.1; raw outputs.
- HashNet (Cao et al., ICCV 2017): u = tanh(scale * output), scale = sqrt(epoch // 20 + 1) (the
  continuation), weighted pairwise cross-entropy within the batch, dot = alpha * u.u^T, positive
  and negative pairs re-weighted to equal total weight; alpha 0.1.

Where DeepHash-pytorch's stored outputs U and labels start as zeros, here they start as the
untrained net's outputs and the true labels (dchml's loop stores every pass's outputs); from the
second epoch on the two are the same. The current batch's rows of U are its outputs (detached),
as `U[ind] = u.data` does there.

Shallow hasher: `kernel_hasher`, a plain RBF ridge hasher: ridge regression from RBF-kernel
features (1000 anchors drawn from the fitted training items) of the normalised inputs to the
codes the items should have, then sign; bandwidth and ridge strength chosen on the validation
slice. It predates dchml's own kernel hasher (dchml.method.baselines.kernel_hasher, which also
tries the kernel on the ridge projection); the sweep scores both, and the linear hasher
(dchml.method.baselines.linear_hasher).
"""
from __future__ import annotations

import math
import types

import numpy as np
import torch

from dchml.method import methods as method_registry
from dchml.method.baselines import RIDGE_STRENGTHS, _features
from dchml.method.kernel_hasher import Ridge
from dchml.method.methods import Method, get_method
from dchml.method.methods.csq import hash_centers, item_centers
from dchml.method.methods.psldh import PSLDH
from dchml.method.models import sgn
from dchml.retrieval.metrics import mean_average_precision

HASHNET_CONTINUATION = 20  # epochs per step of HashNet's scale, DeepHash-pytorch's value


def _set_output(net, activation) -> None:
    """Replace the feature MLP's output tanh by `activation(pre-activation)`, keeping its layers."""
    def forward(self, x):
        return activation(self.mlp(self.normalizer(x.float())))
    net.forward = types.MethodType(forward, net)


def _with_batch(stored: torch.Tensor, out: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The stored outputs U with the batch's rows set to its current outputs (detached)."""
    u = stored.clone()
    u[pos] = out.detach()
    return u


class _Peer(Method):
    cross_modal = False
    category_net = False
    default_backbone = "alexnet"
    params = {"alpha": 0.1}
    terms = ("pairs",)

    def make_category_codes(self, model, cfg, log=None) -> dict:
        for m in model.modalities:
            if getattr(model.net(m), "uses_pixels", False):
                raise ValueError("benchmark peers run on feature vectors only")
            _set_output(model.net(m), self.activation)
        # The Hadamard centres, so that the shallow hashers have a target for this model too.
        centers, _ = hash_centers(model.proxies.shape[0], model.bits, cfg.seed)
        with torch.no_grad():
            model.proxies.copy_(centers)
            model.center_fill.fill_(1.0)
        return {"steps": 0, "loss": 0.0}

    def item_targets(self, model, labels):
        return get_method("csq").item_targets(model, labels)

    @staticmethod
    def activation(x):
        return x

    def objective(self, run) -> dict:
        return {"objective": float("nan")}  # the pass losses are logged; a full n x n sum costs more than a pass

    def pass_loss(self, run, modality):
        labels, stored, cfg = run.labels, run.stored[modality], run.cfg

        def loss(out, pos):
            value = self.batch_loss(out, labels[pos], _with_batch(stored, out, pos), labels, cfg, run)
            return value, {"pairs": float(value.detach())}
        return loss


class DPSH(_Peer):
    name = "dpsh"
    title = "DPSH"
    summary = "peer: pairwise likelihood with quantization (IJCAI 2016)"

    def batch_loss(self, u, y, U, Y, cfg, run):
        s = (y @ Y.T > 0).to(u.dtype)
        theta = 0.5 * (u @ U.T)
        likelihood = (torch.log1p(torch.exp(-theta.abs())) + theta.clamp_min(0) - s * theta).mean()
        return likelihood + cfg.alpha * (u - sgn(u.detach())).pow(2).mean()


class DSH(_Peer):
    name = "dsh"
    title = "DSH"
    summary = "peer: contrastive loss with margin 2k (CVPR 2016)"

    def batch_loss(self, u, y, U, Y, cfg, run):
        dissimilar = (y @ Y.T == 0).to(u.dtype)
        dist = (u.pow(2).sum(1, keepdim=True) - 2 * (u @ U.T) + U.pow(2).sum(1)).clamp_min(0)  # |u_i - U_j|^2
        margin = 2 * u.shape[1]
        pairs = ((1 - dissimilar) / 2 * dist + dissimilar / 2 * (margin - dist).clamp_min(0)).mean()
        return pairs + cfg.alpha * (1 - u.abs()).abs().mean()


class HashNet(_Peer):
    name = "hashnet"
    title = "HashNet"
    summary = "peer: weighted pairwise cross-entropy with the tanh-scale continuation (ICCV 2017)"

    def __init__(self):
        self.scale = 1.0

    def activation(self, x):
        return torch.tanh(self.scale * x)

    def pass_loss(self, run, modality):
        # run.epoch epochs are done: this pass is epoch run.epoch (0-based), as in the public loop.
        self.scale = math.sqrt(run.epoch // HASHNET_CONTINUATION + 1)
        return super().pass_loss(run, modality)

    def batch_loss(self, u, y, U, Y, cfg, run):
        s = (y @ y.T > 0).to(u.dtype)
        dot = cfg.alpha * (u @ u.T)
        nll = torch.log1p(torch.exp(-dot.abs())) + dot.clamp_min(0) - s * dot  # = dot + log(1 + e^-dot) - s dot
        positive = s > 0
        n_pos, n_all = positive.sum(), float(s.numel())
        n_neg = n_all - n_pos
        weight = torch.where(positive, n_all / n_pos.clamp_min(1), n_all / n_neg.clamp_min(1))
        return (nll * weight).sum() / n_all


class PSLDHOnCentres(PSLDH):
    """Diagnostic, not a peer: PSLDH's loss with CSQ's constructed centres as its category codes
    instead of the trained category network's, to measure what the codes' separation is worth."""

    name = "psldh_centres"
    title = "PSLDH on CSQ centres"
    category_net = False
    summary = "diagnostic: PSLDH's loss on Hadamard / Bernoulli centres"

    def make_category_codes(self, model, cfg, log=None) -> dict:
        return get_method("csq").make_category_codes(model, cfg, log)

    def item_targets(self, model, labels):
        return Method.item_targets(self, model, labels)


PEERS = {m.name: m for m in (DPSH(), DSH(), HashNet(), PSLDHOnCentres())}


def register_peers() -> None:
    """Make the peers known to TrainConfig and the loop (the method registry) in this process."""
    for name, method in PEERS.items():
        method_registry.METHODS.setdefault(name, method)


# --- the kernel hasher -----------------------------------------------------------------------------

KERNEL_ANCHORS = 1000
KERNEL_BANDWIDTHS = (0.5, 1.0, 2.0)  # times the median item-anchor distance


def _rbf(x: torch.Tensor, anchors: torch.Tensor, width: float) -> torch.Tensor:
    d2 = (x.pow(2).sum(1, keepdim=True) - 2 * x @ anchors.T + anchors.pow(2).sum(1)).clamp_min(0)
    return torch.exp(-d2 / (2 * width * width))


def kernel_hasher(model, data, fit_idx, val_idx, *, topk: int = 5000, targets: str = "centers", seed: int = 0) -> dict:
    """RBF-kernel ridge hasher on `model`'s normalised inputs. targets: "centers" (CSQ's item
    centres from Hadamard / Bernoulli codes) or "model" (the model's item targets: PSLDH's mean
    category code). Returns {"map", "bandwidth", "ridge_strength", "val_map"}."""
    (modality,) = model.modalities
    task = {"image": "i2i", "text": "t2t"}[modality]
    labels = data.labels
    if targets == "centers":
        centers, _ = hash_centers(labels.shape[1], model.bits, seed)
        fill = torch.ones(model.bits)
        target = item_centers(labels[fit_idx].double(), centers.double(), fill.double())
    else:
        target = get_method("psldh").item_targets(model, labels[fit_idx])
    feats = {name: _features(model, data, modality, idx).double()
             for name, idx in (("fit", fit_idx), ("val", val_idx), ("query", data.query_idx),
                               ("database", data.retrieval_idx))}
    rng = np.random.default_rng([seed, 0xA7C])
    anchors = feats["fit"][torch.from_numpy(rng.choice(fit_idx.numel(), min(KERNEL_ANCHORS, fit_idx.numel()),
                                                       replace=False))]
    sample = feats["fit"][:2000]
    d2 = (sample.pow(2).sum(1, keepdim=True) - 2 * sample @ anchors.T + anchors.pow(2).sum(1)).clamp_min(0)
    median = float(d2.sqrt().median())
    best = None
    for bw in KERNEL_BANDWIDTHS:
        width = bw * median
        phi = {name: _rbf(x, anchors, width) for name, x in feats.items()}
        ridge = Ridge(phi["fit"], target)
        for strength in RIDGE_STRENGTHS:
            fitted = ridge.affine(strength)
            code = lambda name: sgn(fitted(phi[name]).float())  # noqa: E731
            val = float(mean_average_precision(code("val"), code("fit"), labels[val_idx], labels[fit_idx],
                                               topk=min(topk, fit_idx.numel())))
            if best is None or val > best[0]:
                best = (val, bw, strength, code("query"), code("database"))
    val, bw, strength, q, db = best
    value = float(mean_average_precision(q, db, labels[data.query_idx], labels[data.retrieval_idx],
                                         topk=min(topk, data.retrieval_idx.numel())))
    return {"map": value, "task": task, "bandwidth": bw, "ridge_strength": strength, "val_map": val,
            "targets": targets}
