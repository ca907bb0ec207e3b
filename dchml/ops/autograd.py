"""`MarginDynamicSoftmax`: the margin-dynamic-softmax loss as a plain `torch.autograd.Function`,
a drop-in for code that already wraps its loss in one (custom training loops, other frameworks'
Function-based ports). It calls the same fused kernels as `dchml.margin_dynamic_softmax` (which
goes through the registered operator instead, and is the one to use under torch.compile).

    rows = MarginDynamicSoftmax.apply(codes, proxies, labels, eta, mu, other)   # (n,) per-row losses
"""
from __future__ import annotations

import torch

from .loss import mds_loss_backward, mds_loss_rows_for_backward


class MarginDynamicSoftmax(torch.autograd.Function):
    """Per-row margin-dynamic-softmax loss (eq. 13; eq. 14's inter-modal term with `other`).

    apply(codes, proxies, labels, eta=0.3, mu=0.3, other=None) -> (n,) losses. Labels in any form
    `dchml.margin_dynamic_softmax` accepts. Gradients flow to codes and other; not to proxies.
    """

    @staticmethod
    def forward(ctx, codes, proxies, labels, eta=0.3, mu=0.3, other=None):
        loss, (proxies, labels, indices, lse, eta, mu) = mds_loss_rows_for_backward(
            codes, proxies, labels, eta=eta, mu=mu, other=other)
        # tensors through save_for_backward (version-checked), the two scalars on ctx
        ctx.save_for_backward(codes, other, proxies, labels, indices, lse)
        ctx.eta, ctx.mu = eta, mu
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        codes, other, proxies, labels, indices, lse = ctx.saved_tensors
        grad_codes, grad_other = mds_loss_backward(grad_loss, codes, other,
                                                       (proxies, labels, indices, lse, ctx.eta, ctx.mu))
        return grad_codes, None, None, None, None, grad_other
