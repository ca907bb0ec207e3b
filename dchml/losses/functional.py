"""Losses of docs/spec.md §3, §4 and §6, on the fused kernels (`torch.ops.dchml.*`, via dchml.ops).

Labels: a dense (n, c) 0/1 tensor (bool, integer or float), a `torch.sparse_csr` (n, c) tensor of
the positives, or a tuple `(offsets, indices)` of int64 tensors listing row i's positive classes in
`indices[offsets[i]:offsets[i + 1]]`. Every row needs a positive (ValueError otherwise). Proxies
are ±1 (int8 or float) and constants: no gradient flows to them.
"""
from __future__ import annotations

import torch

from .. import ops


def _reduce(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        # an empty batch gives 0, not NaN, so that an empty shard does not poison a sum of losses
        return rows.mean() if rows.numel() else rows.sum()
    if reduction == "sum":
        return rows.sum()
    if reduction == "none":
        return rows
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def margin_dynamic_softmax(codes, proxies, labels, *, eta=0.3, mu=0.3, other=None, reduction="mean"):
    """Margin-dynamic-softmax loss (eq. 13), or the inter-modal term (eq. 14) when `other` is given.

    codes (n, k) float32/float64 continuous outputs (differentiable); proxies (c, k) ±1; labels as in
    the module docstring. loss_i = -eta u_i + logsumexp({eta u_i} ∪ {eta b_i.g_q : q negative}), with
    u_i = b_i . mean_{e positive} g_e - mu k; positives never enter the denominator. With `other`,
    the numerator's surrogate score comes from `codes` and the denominator (surrogate and negatives)
    from `other`; gradients flow to both. reduction: "mean", "sum" or "none" (per-row losses).
    """
    check_reduction(reduction)
    if reduction != "none":
        return ops.mds_loss_reduced(codes, proxies, labels, reduction, eta=eta, mu=mu, other=other)
    return ops.mds_loss_rows(codes, proxies, labels, eta=eta, mu=mu, other=other)


def partial_softmax(codes, proxies, labels, *, gamma=0.2, sigma=0.2, reduction="mean"):
    """PSLDH partial-softmax loss (§6): one softmax per positive p, {gamma (b.g_p - sigma k)}
    against the row's negatives {gamma b.g_q}, averaged over the row's positives."""
    check_reduction(reduction)
    if reduction != "none":
        return ops.partial_softmax_reduced(codes, proxies, labels, reduction, gamma=gamma, sigma=sigma)
    return ops.partial_softmax_rows(codes, proxies, labels, gamma=gamma, sigma=sigma)


# --- Method-layer losses: DCHML_P's pairwise proxy loss and PHNet's loss ------------


def _check_codes_proxies_labels(codes, proxies, labels):
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (n, k), got shape {tuple(codes.shape)}")
    if proxies.dim() != 2 or proxies.shape[1] != codes.shape[1]:
        raise ValueError(f"proxies must be (c, {codes.shape[1]}), got shape {tuple(proxies.shape)}")
    if labels.shape != (codes.shape[0], proxies.shape[0]):
        raise ValueError(
            f"labels must be (n, c) = ({codes.shape[0]}, {proxies.shape[0]}), got shape {tuple(labels.shape)}"
        )


def pairwise_proxy_loss(codes, proxies, labels, reduction="mean"):
    """DCHML_P's pairwise proxy loss (docs/spec.md §5), the ablation that replaces l_S:

        loss_i = -sum_j [ l_ij * Θ_ij - log(1 + exp(Θ_ij)) ],   Θ_ij = 0.5 * b̂_i . g_j

    i.e. a logistic likelihood of "sample i has label j" from the code/proxy inner product, summed
    over ALL c proxies (positives and negatives). log(1 + exp(.)) is computed as softplus so long
    codes (|Θ| up to k/2) do not overflow. Returns per-row sums reduced by `reduction`.
    """
    _check_codes_proxies_labels(codes, proxies, labels)
    theta = 0.5 * (codes @ proxies.to(codes.dtype).T)
    rows = (torch.nn.functional.softplus(theta) - labels.to(codes.dtype) * theta).sum(1)
    return _reduce(rows, reduction)


def proxy_network_loss(proxy_outputs, alpha=0.05, beta=0.1):
    """PHNet's loss L_PH (docs/spec.md §1) on the continuous proxies ĝ (c, k):

        sum_i sum_{j != i} max(0, ĝ_i . ĝ_j)  +  alpha * sum_b (sum_j ĝ_j[b])^2
        + beta * sum_j || ĝ_j - sgn(ĝ_j) ||^2

    A plain sum over the c proxies (there is one set, no batch to average over). sgn(ĝ) is a
    constant target (no gradient flows through the sign), zero mapping to -1 as everywhere else.
    """
    g = proxy_outputs
    if g.dim() != 2:
        raise ValueError(f"proxy_outputs must be 2-D (c, k), got shape {tuple(g.shape)}")
    gram = g @ g.T
    off_diagonal = ~torch.eye(g.shape[0], dtype=torch.bool, device=g.device)
    separation = torch.relu(gram[off_diagonal]).sum()
    balance = g.sum(0).pow(2).sum()
    target = torch.where(g > 0, torch.ones_like(g), -torch.ones_like(g)).detach()
    quantization = (g - target).pow(2).sum()
    return separation + alpha * balance + beta * quantization


# --- PSLDH's category-network loss and CSQ's central-similarity loss --------------------------


def category_code_loss(code_outputs, alpha=0.05, beta=0.01):
    """PSLDH's loss of its category (label) network on the continuous category codes Ĝ (c, k)
    (docs/spec.md §6.1; it differs from PHNet's L_PH):

        (1/c^2) * sum_{i,j} relu((Ĝ Ĝ^T - k I)_ij)^2  +  alpha * (1/c) * ||1^T Ĝ||^2
        + beta * (1/c) * ||sgn(Ĝ) - Ĝ||^2

    The first term pushes every pair of codes to a non-positive inner product (the diagonal,
    |ĝ_i|^2 - k <= 0, never contributes); sgn(Ĝ) is a constant target, zero mapping to -1.
    """
    g = code_outputs
    if g.dim() != 2:
        raise ValueError(f"code_outputs must be 2-D (c, k), got shape {tuple(g.shape)}")
    c, k = g.shape
    eye = torch.eye(c, dtype=g.dtype, device=g.device)
    separation = torch.relu(g @ g.T - k * eye).pow(2).sum() / (c * c)
    balance = g.sum(0).pow(2).sum() / c
    target = torch.where(g > 0, torch.ones_like(g), -torch.ones_like(g)).detach()
    quantization = (target - g).pow(2).sum() / c
    return separation + alpha * balance + beta * quantization


def central_similarity_loss(codes, centers, *, lam=1e-4, reduction="mean"):
    """CSQ's loss (Yuan et al., CVPR 2020; docs/spec.md §12) of outputs u in (-1, 1) against each
    item's ±1 hash centre: binary cross-entropy of (u + 1)/2 to (centre + 1)/2, averaged over the
    k bits, plus lam * mean_b (|u_b| - 1)^2. Per row with reduction="none"; "mean" is the
    public code's BCELoss mean over all elements plus lam times the mean quantization."""
    check_reduction(reduction)
    if codes.shape != centers.shape:
        raise ValueError(f"centers must have the shape of codes {tuple(codes.shape)}, got {tuple(centers.shape)}")
    probability = (0.5 * (codes + 1)).clamp(0.0, 1.0)
    target = 0.5 * (centers.to(codes.dtype) + 1)
    bce = torch.nn.functional.binary_cross_entropy(probability, target, reduction="none").mean(1)
    quantization = (codes.abs() - 1).pow(2).mean(1)
    return _reduce(bce + lam * quantization, reduction)
