"""Losses of METHOD.md §3, §4 and §6.

PROVISIONAL: this first version is the plain PyTorch composite (an (n x c) logits matrix and a
masked log-sum-exp), so that the layers above can be written against the final signatures. The
fused-kernel issue replaces the bodies with `torch.ops.dchml.*` calls; the signatures stay.
"""
from __future__ import annotations

import torch


def _reduce(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return rows.mean() if rows.numel() else rows.sum()
    if reduction == "sum":
        return rows.sum()
    if reduction == "none":
        return rows
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def margin_dynamic_softmax(codes, proxies, labels, *, eta=0.3, mu=0.3, other=None, reduction="mean"):
    """Margin-dynamic-softmax loss (eq. 13), or the inter-modal term (eq. 14) when `other` is given.

    codes (n, k) continuous outputs; proxies (c, k) ±1; labels (n, c) 0/1 with a positive per row.
    With `other`, the numerator's surrogate score comes from `codes` and the denominator
    (surrogate and negatives) from `other`.
    """
    labels = labels.to(codes.dtype)
    g = proxies.to(codes.dtype)
    k = codes.shape[1]
    positives = labels.sum(1)
    if bool((positives == 0).any()):
        bad = (positives == 0).nonzero()
        raise ValueError(f"{bad.numel()} rows have no positive label (first: row {int(bad[0])})")
    denominator_codes = codes if other is None else other
    u_num = (codes * (labels @ g / positives[:, None])).sum(1) - mu * k
    u_den = (denominator_codes * (labels @ g / positives[:, None])).sum(1) - mu * k
    logits = eta * (denominator_codes @ g.T)
    logits = logits.masked_fill(labels > 0, float("-inf"))
    all_terms = torch.cat([(eta * u_den)[:, None], logits], dim=1)
    rows = -eta * u_num + torch.logsumexp(all_terms, dim=1)
    return _reduce(rows, reduction)


def partial_softmax(codes, proxies, labels, *, gamma=0.2, sigma=0.2, reduction="mean"):
    """PSLDH partial-softmax loss (§6): one softmax per positive against the row's negatives."""
    labels = labels.to(codes.dtype)
    g = proxies.to(codes.dtype)
    k = codes.shape[1]
    positives = labels.sum(1)
    if bool((positives == 0).any()):
        bad = (positives == 0).nonzero()
        raise ValueError(f"{bad.numel()} rows have no positive label (first: row {int(bad[0])})")
    scores = gamma * (codes @ g.T)
    neg = torch.logsumexp(scores.masked_fill(labels > 0, float("-inf")), dim=1, keepdim=True)
    pos = scores - gamma * sigma * k
    per_pos = -pos + torch.logaddexp(pos, neg)
    rows = (per_pos * labels).sum(1) / positives
    return _reduce(rows, reduction)


# --- Method-layer losses (issue 4): DCHML_P's pairwise proxy loss and PHNet's loss ------------


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
    """DCHML_P's pairwise proxy loss (METHOD.md §5), the ablation that replaces l_S:

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
    """PHNet's loss L_PH (METHOD.md §1) on the continuous proxies ĝ (c, k):

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
