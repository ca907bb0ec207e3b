"""The eager PyTorch composite of the two losses: "what users write today" (an (n x c) logits
matrix, a mask, a masked log-sum-exp). Baseline (a) of benchmarks/bench_loss.py, and (b) under
torch.compile. This is the body dchml/losses.py had before the fused kernels (same formula, same
signatures), kept verbatim as the baseline.
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
    """Margin-dynamic-softmax loss (eq. 13), or the inter-modal term (eq. 14) when `other` is given."""
    labels = labels.to(codes.dtype)
    g = proxies.to(codes.dtype)
    k = codes.shape[1]
    positives = labels.sum(1)
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
    scores = gamma * (codes @ g.T)
    neg = torch.logsumexp(scores.masked_fill(labels > 0, float("-inf")), dim=1, keepdim=True)
    pos = scores - gamma * sigma * k
    per_pos = -pos + torch.logaddexp(pos, neg)
    rows = (per_pos * labels).sum(1) / positives
    return _reduce(rows, reduction)
