"""Mixed precision for the training passes: torch.autocast (bfloat16, or float16 with a
GradScaler) on CUDA; on the CPU, and with "fp32", plain float32 steps.

Only the networks' forward passes run in reduced precision; their outputs are cast back to
float32 before the loss, whose fused kernels and ±1 code arithmetic stay in float32.
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "auto", "bf16", "fp16")


def check_precision(precision: str, device="cpu") -> None:
    """A clear error for an unknown precision, or bf16 / fp16 asked for off CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if precision in ("bf16", "fp16") and kind != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device (mixed precision runs on GPUs only); "
                         f"use fp32 or auto on {kind}")


class MixedPrecision:
    """precision: "fp32"; "bf16" / "fp16" (CUDA only); "auto": bf16 where the GPU supports it,
    else fp16, and fp32 on the CPU. `dtype` is the autocast dtype, None for float32."""

    def __init__(self, precision: str = "fp32", device="cpu"):
        device = torch.device(device)
        check_precision(precision, device)
        self.device = device
        self.dtype = None
        if device.type == "cuda" and precision != "fp32":
            if precision == "auto":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            self.dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """loss.backward() and optimizer.step(), through the GradScaler when there is one."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


FP32 = MixedPrecision("fp32")
