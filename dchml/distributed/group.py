"""The process group as dchml's collectives see it: this rank's place, the device the collectives
use, and failure agreement (a step that fails on one rank raises on every rank, so that no rank is
left waiting in a collective). Shared by sharded evaluation and multi-process training."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

_MESSAGE_BYTES = 1024  # the longest failure message one rank sends the others


class Group:
    """The process group, this rank's place in it, and the device its collectives use."""

    def __init__(self, group, data_device: torch.device):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialized: call torch.distributed.init_process_group "
                "(or launch with torchrun) before dchml.distributed; for one process use "
                "dchml.mean_average_precision / dchml.hamming_topk"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        if self.rank < 0:
            raise RuntimeError("this process is not a member of the given process group")
        backend = str(dist.get_backend(group)).lower()
        # NCCL only moves CUDA tensors and Gloo is at home with CPU ones; a group with both
        # backends ("cpu:gloo,cuda:nccl") takes the tensors where they already are.
        if "nccl" in backend and "gloo" not in backend:
            self.device = torch.device("cuda", torch.cuda.current_device())
        elif "nccl" in backend and data_device.type == "cuda":
            self.device = data_device
        else:
            self.device = torch.device("cpu")

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """(world, *t.shape) with every rank's t, in rank order (t must have one shape on all ranks)."""
        src = t.to(self.device).contiguous()
        out = [torch.empty_like(src) for _ in range(self.world)]
        dist.all_gather(out, src, group=self.group)
        return torch.stack(out)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        buf = t.to(self.device).contiguous()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        return buf

    def raise_if_any_failed(self, error: Optional[BaseException], what: str) -> None:
        """Collective: every rank calls it after a local step. If any rank's step failed, every
        rank raises (the failing rank its own exception, the others one that names it)."""
        flags = self.all_gather(torch.tensor([0 if error is None else 1], dtype=torch.int64))
        failed = [r for r in range(self.world) if int(flags[r, 0]) != 0]
        if not failed:
            return
        text = b"" if error is None else f"{type(error).__name__}: {error}".encode()[:_MESSAGE_BYTES]
        msg = torch.zeros(_MESSAGE_BYTES, dtype=torch.uint8)
        msg[: len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8) if text else msg[:0]
        messages = self.all_gather(msg).cpu()
        if error is not None:
            raise error
        first = failed[0]
        detail = bytes(messages[first].tolist()).rstrip(b"\0").decode(errors="replace")
        raise ValueError(f"{what}: rank {first} of {self.world} failed: {detail}")


def run_on_every_rank(group: Group, what: str, step: Callable[[], object]):
    """Run a local step; if it fails on any rank, raise on every rank (no rank is left waiting)."""
    result, error = None, None
    try:
        result = step()
    except Exception as exc:  # noqa: BLE001  (re-raised below, on every rank)
        error = exc
    group.raise_if_any_failed(error, what)
    return result


