"""float64 reference of the losses, written straight from docs/spec.md §3, §4 and §6: a loop over
rows with the explicit index sets P_i and N_i of each row (no masks, no (n x c) matrix), NumPy
float64 for the per-row dot products. Used by tests/test_losses.py.
"""
from __future__ import annotations

import numpy as np


def _logsumexp(values):
    values = np.asarray(values, dtype=np.float64)
    m = values.max()
    return m + np.log(np.exp(values - m).sum())


def _sets(label_row):
    label_row = np.asarray(label_row)
    return np.flatnonzero(label_row != 0), np.flatnonzero(label_row == 0)


def _as64(x):
    return None if x is None else np.asarray(x, dtype=np.float64)


def mds_rows(codes, proxies, labels, eta, mu, other=None):
    """Per-row eq. 13 (other None) or the inter-modal term of eq. 14: numerator surrogate from
    `codes`, denominator (surrogate and negatives) from `other`."""
    codes, proxies, other = _as64(codes), _as64(proxies), _as64(other)
    k = proxies.shape[1]
    out = []
    for i, label_row in enumerate(np.asarray(labels)):
        positives, negatives = _sets(label_row)
        gbar = proxies[positives].mean(0)
        b_den = codes[i] if other is None else other[i]
        u_num = codes[i] @ gbar - mu * k
        u_den = b_den @ gbar - mu * k
        denominator = np.concatenate([[eta * u_den], eta * (proxies[negatives] @ b_den)])
        out.append(-eta * u_num + _logsumexp(denominator))  # -log(exp(eta u_num) / sum exp(den))
    return np.array(out)


def mds_grad_rows(codes, proxies, labels, eta, mu, other=None):
    """docs/spec.md §3's gradient of each row loss, per row: (d/d codes, d/d other or None)."""
    codes, proxies, other = _as64(codes), _as64(proxies), _as64(other)
    k = proxies.shape[1]
    g_codes = np.zeros_like(codes)
    g_other = None if other is None else np.zeros_like(other)
    for i, label_row in enumerate(np.asarray(labels)):
        positives, negatives = _sets(label_row)
        gbar = proxies[positives].mean(0)
        b_den = codes[i] if other is None else other[i]
        logits = np.concatenate([[eta * (b_den @ gbar - mu * k)], eta * (proxies[negatives] @ b_den)])
        p = np.exp(logits - _logsumexp(logits))
        den = eta * (p[0] * gbar + p[1:] @ proxies[negatives])  # sum over q in N_i of p_q g_q
        if other is None:  # -eta (1 - p0) gbar + eta sum_q p_q g_q
            g_codes[i] = -eta * gbar + den
        else:
            g_codes[i] = -eta * gbar
            g_other[i] = den
    return g_codes, g_other


def partial_softmax_rows(codes, proxies, labels, gamma, sigma):
    """Per-row §6: mean over positives p of -log softmax of gamma (s_p - sigma k) against the
    row's negatives gamma s_q."""
    codes, proxies = _as64(codes), _as64(proxies)
    k = proxies.shape[1]
    out = []
    for i, label_row in enumerate(np.asarray(labels)):
        positives, negatives = _sets(label_row)
        negative_logits = gamma * (proxies[negatives] @ codes[i])
        terms = []
        for p in positives:
            pos = gamma * (codes[i] @ proxies[p] - sigma * k)
            terms.append(-pos + _logsumexp(np.concatenate([[pos], negative_logits])))
        out.append(np.mean(terms))
    return np.array(out)
