"""Losses of METHOD.md §3, §4 and §6, on the fused kernels (`torch.ops.dchml.*`, via dchml.ops).

Labels: a dense (n, c) 0/1 tensor (bool, integer or float), a `torch.sparse_csr` (n, c) tensor of
the positives, or a tuple `(offsets, indices)` of int64 tensors listing row i's positive classes in
`indices[offsets[i]:offsets[i + 1]]`. Every row needs a positive (ValueError otherwise). Proxies
are ±1 (int8 or float) and constants: no gradient flows to them.
"""
from __future__ import annotations

import torch

from . import ops


def _reduce(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        # an empty batch gives 0, not NaN, so that an empty shard does not poison a sum of losses
        return rows.mean() if rows.numel() else rows.sum()
    if reduction == "sum":
        return rows.sum()
    if reduction == "none":
        return rows
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_reduction(reduction):
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
    _check_reduction(reduction)
    if reduction != "none":
        return ops.mds_loss_reduced(codes, proxies, labels, reduction, eta=eta, mu=mu, other=other)
    return ops.mds_loss_rows(codes, proxies, labels, eta=eta, mu=mu, other=other)


def partial_softmax(codes, proxies, labels, *, gamma=0.2, sigma=0.2, reduction="mean"):
    """PSLDH partial-softmax loss (§6): one softmax per positive p, {gamma (b.g_p - sigma k)}
    against the row's negatives {gamma b.g_q}, averaged over the row's positives."""
    _check_reduction(reduction)
    if reduction != "none":
        return ops.partial_softmax_reduced(codes, proxies, labels, reduction, gamma=gamma, sigma=sigma)
    return ops.partial_softmax_rows(codes, proxies, labels, gamma=gamma, sigma=sigma)
