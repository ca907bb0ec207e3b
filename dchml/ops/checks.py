"""Input checks shared by every operator wrapper: devices, code matrices, scalar parameters.
Each raises a clear Python exception naming the argument, what was expected and what came."""
from __future__ import annotations

import math

import torch

from .library import cuda_built


def require_device_support(name: str, tensor: torch.Tensor) -> None:
    """Raise a clear error for a tensor on a device this build has no kernels for."""
    if tensor.device.type == "cuda" and not cuda_built():
        raise RuntimeError(
            f"{name} is a CUDA tensor, but dchml was built without CUDA support; "
            "rebuild with a CUDA toolkit (FORCE_CUDA=1) or move the tensor to the CPU"
        )
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on device {tensor.device}; dchml supports cpu and cuda tensors")


def require_same_device(**tensors: torch.Tensor) -> None:
    # fast path (called on every loss step): all on the CPU
    for t in tensors.values():
        if t is not None and t.device.type != "cpu":
            break
    else:
        return
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"inputs must be on one device, got {listed}")
    for name, t in tensors.items():
        if t is not None:
            require_device_support(name, t)


FLOAT_CODES = (torch.float32, torch.float64)


def check_codes(codes, name="codes"):
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(codes).__name__}")
    if codes.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, k), got shape {tuple(codes.shape)}")
    if codes.dtype not in FLOAT_CODES:
        raise TypeError(f"{name} must be float32 or float64, got {codes.dtype}")


def check_scalar(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_scale(name, value):
    """The softmax scale (eta, or PSLDH's gamma): a negative one turns the loss upside down."""
    value = check_scalar(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value
