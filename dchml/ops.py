"""The only module that touches `torch.ops.dchml`: thin wrappers with input validation, fake
(meta) kernels for torch.compile, and autograd registration.

Every public function here checks its inputs and raises a clear Python exception (naming the
argument, what was expected and what was received) before any kernel runs, so that a kernel
never sees an input it was not written for.
"""
from __future__ import annotations

import torch

from . import _C


def require_device_support(name: str, tensor: torch.Tensor) -> None:
    """Raise a clear error for a tensor on a device this build has no kernels for."""
    if tensor.device.type == "cuda" and not _C.cuda_built():
        raise RuntimeError(
            f"{name} is a CUDA tensor, but dchml was built without CUDA support; "
            "rebuild with a CUDA toolkit (FORCE_CUDA=1) or move the tensor to the CPU"
        )
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on device {tensor.device}; dchml supports cpu and cuda tensors")


def require_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"inputs must be on one device, got {listed}")
    for name, t in tensors.items():
        if t is not None:
            require_device_support(name, t)


# --- Hamming ranker ops (issue: bit-packed Hamming ranker) ------------------------------------


# --- Margin-dynamic-softmax loss ops (issue: fused loss) --------------------------------------
