"""The eager PyTorch baseline of the two losses: the lean composite a careful user writes. The
surrogate's gbar is computed once, there is one (n x c) logits matrix, the positives are masked
out with masked_fill, and one logsumexp reduces it. Baseline (a) of benchmarks/bench_loss.py, and
(b) under torch.compile. Labels: a dense (n, c) 0/1 tensor of any dtype.
"""
from __future__ import annotations

import torch


def _label_forms(labels, dtype):
    """The labels as a weight matrix (for gbar) and as a bool mask (for masked_fill)."""
    weights = labels if labels.dtype == dtype else labels.to(dtype)
    mask = labels if labels.dtype == torch.bool else labels != 0
    return weights, mask


def margin_dynamic_softmax(codes, proxies, labels, *, eta=0.3, mu=0.3, other=None):
    """Mean margin-dynamic-softmax loss (eq. 13), or the inter-modal term (eq. 14) with `other`."""
    weights, mask = _label_forms(labels, codes.dtype)
    k = codes.shape[1]
    gbar = (weights @ proxies) / weights.sum(1, keepdim=True)
    den = codes if other is None else other
    u_num = (codes * gbar).sum(1) - mu * k
    u_den = u_num if other is None else (den * gbar).sum(1) - mu * k
    negatives = torch.logsumexp((eta * den @ proxies.T).masked_fill(mask, float("-inf")), dim=1)
    return (-eta * u_num + torch.logaddexp(eta * u_den, negatives)).mean()


def partial_softmax(codes, proxies, labels, *, gamma=0.2, sigma=0.2):
    """Mean PSLDH partial-softmax loss (§6): one softmax per positive against the row's negatives."""
    weights, mask = _label_forms(labels, codes.dtype)
    k = codes.shape[1]
    scores = gamma * (codes @ proxies.T)
    negatives = torch.logsumexp(scores.masked_fill(mask, float("-inf")), dim=1, keepdim=True)
    positive = scores - gamma * sigma * k
    per_positive = torch.logaddexp(positive, negatives) - positive
    return ((per_positive * weights).sum(1) / weights.sum(1)).mean()
