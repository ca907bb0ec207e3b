"""`MarginDynamicSoftmax`: the margin-dynamic-softmax loss as a plain `torch.autograd.Function`,
a drop-in for code that already wraps its loss in one (custom training loops, other frameworks'
Function-based ports). It calls the same fused kernels as `dchml.margin_dynamic_softmax` (which
goes through the registered operator instead, and is the one to use under torch.compile).

    rows = MarginDynamicSoftmax.apply(codes, proxies, labels, eta, mu, other)   # (n,) per-row losses
"""
from __future__ import annotations

import torch

from . import ops


class MarginDynamicSoftmax(torch.autograd.Function):
    """Per-row margin-dynamic-softmax loss (eq. 13; eq. 14's inter-modal term with `other`).

    apply(codes, proxies, labels, eta=0.3, mu=0.3, other=None) -> (n,) losses. Labels in any form
    `dchml.margin_dynamic_softmax` accepts. Gradients flow to codes and other; not to proxies.
    """

    @staticmethod
    def forward(ctx, codes, proxies, labels, eta=0.3, mu=0.3, other=None):
        proxies, labels, indices = ops._prepare_loss_inputs(codes, proxies, labels, other)
        eta, mu = ops._check_scale("eta", eta), ops._check_scalar("mu", mu)
        loss, lse = torch.ops.dchml.mds_loss(codes, other, proxies, labels, indices, eta, mu)
        ctx.save_for_backward(codes, other, proxies, labels, indices, lse)
        ctx.eta, ctx.mu = eta, mu
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        codes, other, proxies, labels, indices, lse = ctx.saved_tensors
        grad_codes, grad_other = torch.ops.dchml.mds_loss_backward(
            grad_loss, codes, other, proxies, labels, indices, lse, ctx.eta, ctx.mu)
        return grad_codes, None, None, None, None, (grad_other if other is not None else None)
