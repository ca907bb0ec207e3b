"""The DCHML objective (docs/spec.md §4, eq. 16) as the per-step loss of one modality's pass, and the full
objective evaluated on the stored outputs.

Reduction [choice]: every term is a per-sample SUM over its own index set (softmax terms per
sample, ||b̂_i - c_i||^2 summed over the k bits) and the per-sample totals are AVERAGED over the
mini-batch. This keeps the paper's ratios between the terms (lambda, gamma multiply per-sample
quantities exactly as in eq. 16) while making the step size independent of the batch size.

When the image net is trained, the text net is fixed: the text side enters through its STORED
latest outputs (detached), l_S^t is a constant and is left out of the step loss, and both
directions of eq. 14 are kept, since b̂^v appears in the numerator of one and in the denominator
of the other: margin_dynamic_softmax(codes=b̂^v, other=b̂^t) + margin_dynamic_softmax(codes=b̂^t,
other=b̂^v). Gradients reach only the modality being trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses.functional import margin_dynamic_softmax, pairwise_proxy_loss

DCHML_METHODS = ("dchml", "dchml_q", "dchml_p")  # the methods eq. 16 weighs (dchml.method.methods has all)


@dataclass(frozen=True)
class LossWeights:
    """The weights of eq. 16 as one method uses them (DCHML_Q has gamma = 0)."""

    method: str = "dchml"
    eta: float = 0.3
    mu: float = 0.3
    lam: float = 0.001
    gamma: float = 0.01

    @classmethod
    def for_method(cls, method: str, *, eta: float, mu: float, lam: float, gamma: float) -> "LossWeights":
        if method not in DCHML_METHODS:
            raise ValueError(f"method must be one of {', '.join(DCHML_METHODS)}, got {method!r}")
        return cls(method=method, eta=eta, mu=mu, lam=lam, gamma=0.0 if method == "dchml_q" else gamma)


def intra_modal_loss(out, proxies, labels, weights: LossWeights):
    """l_S per sample: margin-dynamic-softmax (eq. 13), or DCHML_P's pairwise proxy loss."""
    if weights.method == "dchml_p":
        return pairwise_proxy_loss(out, proxies, labels, reduction="none")
    return margin_dynamic_softmax(out, proxies, labels, eta=weights.eta, mu=weights.mu, reduction="none")


def inter_modal_loss(out, other, proxies, labels, weights: LossWeights):
    """l_I per sample (eq. 14), both directions. DCHML_P keeps this term [choice: docs/spec.md §5
    replaces only l_S], so the ablation isolates the intra-modal loss."""
    kw = dict(eta=weights.eta, mu=weights.mu, reduction="none")
    return margin_dynamic_softmax(out, proxies, labels, other=other, **kw) + margin_dynamic_softmax(
        other, proxies, labels, other=out, **kw
    )


def step_loss(out, other_stored, codes_c, proxies, labels, weights: LossWeights):
    """Loss of one mini-batch of the modality being trained; returns (scalar, {term: float}).

    out (b, k) with grad; other_stored (b, k) the other modality's stored outputs (no grad);
    codes_c (b, k) the ±1 targets C; proxies (c, k) ±1; labels (b, c) 0/1.
    """
    other_stored = other_stored.detach()
    l_s = intra_modal_loss(out, proxies, labels, weights)
    l_i = inter_modal_loss(out, other_stored, proxies, labels, weights)
    quant = (out - codes_c).pow(2).sum(1)
    total = (l_s + weights.lam * l_i + weights.gamma * quant).mean()
    terms = {"intra": float(l_s.detach().mean()), "inter": float(l_i.detach().mean()), "quant": float(quant.detach().mean())}
    return total, terms


@torch.no_grad()
def full_objective(stored_image, stored_text, codes_c, proxies, labels, weights: LossWeights, chunk: int = 4096):
    """Eq. 16 on the stored outputs of the whole training set, divided by n (per-sample mean).
    Returns {"objective", "intra_image", "intra_text", "inter", "quant"} as floats."""
    n = stored_image.shape[0]
    sums = {"intra_image": 0.0, "intra_text": 0.0, "inter": 0.0, "quant": 0.0}
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        bv, bt, c, y = stored_image[sl], stored_text[sl], codes_c[sl], labels[sl]
        sums["intra_image"] += float(intra_modal_loss(bv, proxies, y, weights).sum())
        sums["intra_text"] += float(intra_modal_loss(bt, proxies, y, weights).sum())
        # l_I(i) of eq. 14 is symmetric in the two modalities: one call per direction.
        kw = dict(eta=weights.eta, mu=weights.mu, reduction="sum")
        sums["inter"] += float(margin_dynamic_softmax(bv, proxies, y, other=bt, **kw))
        sums["inter"] += float(margin_dynamic_softmax(bt, proxies, y, other=bv, **kw))
        sums["quant"] += float((bv - c).pow(2).sum() + (bt - c).pow(2).sum())
    out = {key: value / max(n, 1) for key, value in sums.items()}
    out["objective"] = out["intra_image"] + out["intra_text"] + weights.lam * out["inter"] + weights.gamma * out["quant"]
    return out
