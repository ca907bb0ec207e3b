"""Loss modules over the fused kernels: `MarginDynamicSoftmaxLoss` (docs/spec.md §3/§4) and
`PartialSoftmaxLoss` (§6). Proxies are registered as a buffer (they move with `.to(device)` and
are saved in the state dict, but are not parameters: they are frozen ±1 codes).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from . import functional as losses


def _proxy_buffer(proxies):
    if not isinstance(proxies, torch.Tensor) or proxies.dim() != 2:
        raise ValueError(f"proxies must be a (c, k) tensor of ±1, got {getattr(proxies, 'shape', type(proxies).__name__)}")
    return proxies.detach().clone()


class MarginDynamicSoftmaxLoss(nn.Module):
    """loss(codes, labels, other=None) = dchml.margin_dynamic_softmax(codes, self.proxies, labels, ...)."""

    def __init__(self, proxies, *, eta=0.3, mu=0.3, reduction="mean"):
        super().__init__()
        self.register_buffer("proxies", _proxy_buffer(proxies))
        self.eta, self.mu = ops.check_scale("eta", float(eta)), ops.check_scalar("mu", float(mu))
        self.reduction = reduction
        losses.check_reduction(reduction)

    def forward(self, codes, labels, other=None):
        return losses.margin_dynamic_softmax(codes, self.proxies, labels, eta=self.eta, mu=self.mu,
                                             other=other, reduction=self.reduction)

    def extra_repr(self):
        return f"classes={self.proxies.shape[0]}, bits={self.proxies.shape[1]}, eta={self.eta}, mu={self.mu}, reduction={self.reduction!r}"


class PartialSoftmaxLoss(nn.Module):
    """loss(codes, labels) = dchml.partial_softmax(codes, self.proxies, labels, ...)."""

    def __init__(self, proxies, *, gamma=0.2, sigma=0.2, reduction="mean"):
        super().__init__()
        self.register_buffer("proxies", _proxy_buffer(proxies))
        self.gamma, self.sigma = ops.check_scale("gamma", float(gamma)), ops.check_scalar("sigma", float(sigma))
        self.reduction = reduction
        losses.check_reduction(reduction)

    def forward(self, codes, labels):
        return losses.partial_softmax(codes, self.proxies, labels, gamma=self.gamma, sigma=self.sigma,
                                      reduction=self.reduction)

    def extra_repr(self):
        return f"classes={self.proxies.shape[0]}, bits={self.proxies.shape[1]}, gamma={self.gamma}, sigma={self.sigma}, reduction={self.reduction!r}"
