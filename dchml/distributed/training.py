"""Algorithm 1 (dchml.train) on several processes: torch.distributed + DistributedDataParallel.

Three ways in, one code path (`train`):
- `dchml train --nproc N` / `train(..., nproc=N)`: spawns N local processes (Gloo on the CPU, or
  NCCL when training on CUDA with one GPU per process), rendezvous on 127.0.0.1 through a store on a
  free port that this process holds; rank 0 writes the checkpoint, this process reads it back.
- under `torchrun` (RANK / WORLD_SIZE in the environment): joins the group torchrun describes.
- inside an already initialised process group: uses it.

What is distributed, and why it matches one process up to floating-point reduction order:
- Every rank draws the SAME shuffle (same seed, same generator) and takes a contiguous 1/N slice of
  each global mini-batch. The loss has no term that couples samples of a batch, so the gradient of
  the global batch mean is the sum over ranks of (rank's mean x its share of the batch); DDP
  averages gradients over N, so each rank scales its loss by b_rank * N / b_batch. This stays
  exact for batches that do not split evenly, and a rank with an empty slice still joins the
  all-reduce (with a zero loss). Gradients are averaged by DDP (bucketed, overlapped with the
  backward pass) rather than a hand-written all_reduce: same arithmetic, less code, faster.
- The stored outputs B^v / B^t: each rank writes the outputs of its own samples, then the pass's
  outputs are all-gathered, so after every pass all ranks hold the same complete B^v, B^t and hence
  the same C = sgn(B^v + B^t). (Within a pass only the OTHER modality's stored outputs are read,
  so one gather per pass suffices.)
- Evaluation: every rank encodes the queries and a 1/N slice of the database (slices aligned to the
  encoder's batch size, so each code is computed exactly as one process computes it), and MAP
  comes from dchml.distributed.mean_average_precision (exact).
Dropout (AlexNet on pixels) draws its masks from each rank's own generator, so with dropout the
runs agree only in distribution; the feature MLPs and the text net have no dropout.
"""
from __future__ import annotations

import atexit
import datetime
import gc
import json
import os
import sys
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..io.atomic import USER_ERRORS
from ..method import train as single_process
from ..method.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ..method.config import TrainConfig, resolve_device
from ..method.encoding import hash_codes
from ..method.methods import query_and_database, tasks_of
from ..method.passes import check_finite, set_learning_rate
from ..method.train import TrainResult
from .evaluation import mean_average_precision as _sharded_map
from .group import Group

__all__ = ["train", "launched_by_torchrun", "is_main_process"]

_ENCODE_BATCH = 1024  # dchml.train.evaluate's encoder batch; database slices are aligned to it
_TIMEOUT = datetime.timedelta(minutes=10)


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0 (or no process group at all): the process that should write outputs and reports."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def train(data, config: TrainConfig | None = None, *, nproc: int | None = None,
          checkpoint_path: str | None = None, resume: bool = False, progress: bool | None = None,
          log=single_process.log_to_stderr, on_epoch_end=None) -> TrainResult:
    """Algorithm 1 over several processes; same arguments and result as `dchml.train.train`.

    nproc: processes to spawn on this machine (None or 1: one process, unless a process group
    exists or torchrun launched us, in which case that group is used and nproc must be None or
    match it). Returns the TrainResult on every rank of an existing / torchrun group, and in this
    process when it spawned the workers (model, history, diagnostics and state read back from
    rank 0's checkpoint). on_epoch_end is called on every rank; it cannot cross into spawned
    workers, so it is refused with nproc > 1; spawned workers log to stderr (rank 0 only) when
    `log` is not None, whatever callable it is.
    """
    cfg = config or TrainConfig()
    if nproc is not None and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    if resume and not checkpoint_path:
        raise ValueError("resume=True needs checkpoint_path")
    several = (dist.is_available() and dist.is_initialized()) or launched_by_torchrun() or (nproc or 1) > 1
    if several and (cfg.augment or cfg.precision != "fp32"):
        # The sharded pass reads each rank's slice of a batch directly, without the loader's
        # augmentation or autocast: refuse rather than silently train without them.
        raise ValueError("augment and mixed precision are supported in single-process training only; "
                         "drop --nproc (or --augment / --precision)")
    if dist.is_available() and dist.is_initialized():
        _check_nproc(nproc, dist.get_world_size())
        return _train_in_group(data, cfg, checkpoint_path, resume, progress, log, on_epoch_end)
    if launched_by_torchrun():
        _check_nproc(nproc, int(os.environ["WORLD_SIZE"]))
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # The group stays up for the rest of the process (later calls reuse it): destroying and
        # re-creating the default group on torchrun's store can meet stale rendezvous keys.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=_TIMEOUT)
        atexit.register(_destroy_group)
        return _train_in_group(data, cfg, checkpoint_path, resume, progress, log, on_epoch_end)
    if nproc is None or nproc == 1:
        return single_process.train(data, cfg, checkpoint_path=checkpoint_path, resume=resume, progress=progress,
                             log=log, on_epoch_end=on_epoch_end)
    if on_epoch_end is not None:
        raise ValueError("on_epoch_end cannot be called inside spawned workers; run under torchrun instead")
    return _spawn(data, cfg, nproc, checkpoint_path, resume, progress, log)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _check_nproc(nproc, world: int) -> None:
    if nproc is not None and nproc != world:
        raise ValueError(f"nproc={nproc} but this process group already has {world} processes")


# --- spawning local workers ---------------------------------------------------------------------


def _spawn(data, cfg, nproc, checkpoint_path, resume, progress, log) -> TrainResult:
    device = resolve_device(cfg.device)  # a clear error here, before any process starts
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise ValueError(f"nproc={nproc} CUDA processes need {nproc} GPUs, found {torch.cuda.device_count()}")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=_TIMEOUT)
    with tempfile.TemporaryDirectory(prefix="dchml-ddp-") as tmp:
        # rank 0 writes every epoch's checkpoint; without a user path it goes to a temporary file
        path = checkpoint_path or os.path.join(tmp, "checkpoint.pt")
        threads = max(1, (os.cpu_count() or 1) // nproc)  # the cores shared, not oversubscribed
        job = SpawnedJob(world=nproc, port=store.port, data=data, cfg=cfg, checkpoint_path=path, resume=resume,
                         progress=progress, logging=log is not None, threads=threads, failures=tmp)
        try:
            torch.multiprocessing.start_processes(_worker, args=(job,), nprocs=nproc, join=True,
                                                  start_method="spawn")
        except torch.multiprocessing.ProcessRaisedException as exc:
            # Every rank records its failure; the lowest rank's is usually the cause (the others
            # name it), when it got to write it before the workers were stopped.
            failures = [(rank, f) for rank in range(nproc) if (f := _recorded_failure(tmp, rank))]
            rank, failure = failures[0] if failures else (exc.error_index, None)
            if failure and failure["user_error"]:
                raise WorkerError(f"rank {rank} of {nproc}: {failure['message']}") from None
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise RuntimeError(f"distributed training failed: {lines[-1] if lines else exc}") from None
        except torch.multiprocessing.ProcessExitedException as exc:
            raise RuntimeError(f"distributed training failed: a worker exited ({exc})") from None
        state = load_checkpoint(path)
    model = model_from_checkpoint(state).to(device)
    state = {k: v for k, v in state.items() if k not in ("format", "version")}
    return TrainResult(model=model, history=list(state["history"]), proxy_diagnostics=dict(state["phnet"]),
                       state=state, selection=dict(state["selection"]["summary"]))


class WorkerError(ValueError):
    """A spawned worker stopped on a mistake the user can act on (bad data or arguments, a full
    disk...): its one-line message, named by rank, without the worker's traceback."""


def _record_failure(folder: str, rank: int, exc: BaseException) -> None:
    try:
        with open(os.path.join(folder, f"failure.{rank}.json"), "w") as f:
            json.dump({"user_error": isinstance(exc, USER_ERRORS),
                       "message": " ".join(str(exc).split()) or type(exc).__name__}, f)
    except OSError:
        pass  # the parent then reports the traceback's last line instead


def _recorded_failure(folder: str, rank: int) -> dict | None:
    try:
        with open(os.path.join(folder, f"failure.{rank}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@dataclass
class SpawnedJob:
    """What every spawned worker receives: the rendezvous, the run, and where failures are recorded."""

    world: int
    port: int
    data: object
    cfg: TrainConfig
    checkpoint_path: str
    resume: bool
    progress: bool | None
    logging: bool
    threads: int
    failures: str  # a folder: each failing rank writes failure.<rank>.json there


def _worker(rank: int, job: SpawnedJob):
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(job.threads)
    device = resolve_device(job.cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(rank)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # all ranks are on this machine
    store = dist.TCPStore("127.0.0.1", job.port, is_master=False, timeout=_TIMEOUT)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=job.world, timeout=_TIMEOUT)
    try:
        log = single_process.log_to_stderr if job.logging else None
        _train_in_group(job.data, job.cfg, job.checkpoint_path, job.resume, job.progress, log, None)
    except Exception as exc:
        _record_failure(job.failures, rank, exc)
        raise
    finally:
        dist.destroy_process_group()


# --- Algorithm 1 on every rank --------------------------------------------------------------------


def _train_in_group(data, cfg, checkpoint_path, resume, progress, log, on_epoch_end) -> TrainResult:
    rank, world = dist.get_rank(), dist.get_world_size()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    main = rank == 0
    if progress is None:
        progress = sys.stderr.isatty()
    log = log if (log is not None and main) else (lambda message: None)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # Every rank reads the same checkpoint, or runs the same seeded start.
        run = single_process.start_run(data, cfg, device, checkpoint_path, resume, log)
        return single_process.run_epochs(data, run, device, DistributedPasses(rank, world, device),
                                         checkpoint_path=checkpoint_path, progress=progress and main, log=log,
                                         on_epoch_end=on_epoch_end, resumed=resume)


class DistributedPasses:
    """The passes of one rank: DDP-wrapped nets, each rank training on its slice of every batch,
    the checkpoint written by rank 0, and decisions (selection, early stopping) taken by rank 0."""

    def __init__(self, rank: int, world: int, device):
        self.rank, self.world, self.device = rank, world, device
        self.main = rank == 0
        self.label = f" x{world}"
        self.processes = world
        self.group = Group(None, device)  # rank agreement helpers of dchml.distributed
        self.nets = {}

    def prepare(self, run, log) -> None:
        if run.epoch == 0:
            # One source of truth for the frozen category codes and their network (identical already on the CPU).
            network = list(run.model.phnet.parameters()) if hasattr(run.model, "phnet") else []
            for tensor in network + [run.model.proxies, run.model.center_fill]:
                dist.broadcast(tensor.data, src=0)
            log(f"training {run.cfg.method} on {self.world} processes ({dist.get_backend()}), "
                f"{run.fit_idx.numel()} training pairs split across them")
        ddp_kw = dict(device_ids=[self.device.index]) if self.device.type == "cuda" else {}
        self.nets = {m: DistributedDataParallel(run.model.net(m), **ddp_kw) for m in run.model.modalities}

    def net(self, run, modality: str):
        return self.nets[modality]

    def run_pass(self, p) -> dict:
        return _sharded_pass(p, self.rank, self.world)

    def epoch_seconds(self, seconds: float) -> float:
        return _slowest(seconds, self.device)

    def commit(self, state: dict, path) -> None:
        error = None
        if self.main and path:
            try:
                save_checkpoint(state, path)
            except Exception as exc:  # noqa: BLE001  (raised on every rank just below)
                error = exc
        # Also a barrier: when any rank moves on (or returns), the checkpoint is on disk, so a
        # resume right after this call reads the finished file on every rank.
        self.group.raise_if_any_failed(error, f"saving the checkpoint {path}")

    def agree(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int64,
                         device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(t, src=0)
        return bool(t[0])

    def finish(self, run) -> None:
        # Unwrap now: DDP's reducer keeps autograd hooks on the parameters (a later backward pass on
        # the returned model would start all-reduces) and must not outlive the process group.
        self.nets = {}
        gc.collect()


def _slowest(seconds: float, device) -> float:
    t = torch.tensor([seconds], dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])


def _rank_slices(positions: torch.Tensor, batch_size: int, world: int) -> list[torch.Tensor]:
    """The positions each rank trains on in one pass: a contiguous 1/world slice of every batch."""
    batches = positions.split(batch_size)
    return [torch.cat([b.tensor_split(world)[r] for b in batches]) if batches else positions[:0]
            for r in range(world)]


def _sharded_pass(p, rank: int, world: int) -> dict:
    """One pass of the DDP-wrapped `p.net` over `p.positions` (shuffled identically on every rank),
    this rank taking its slice of each batch; then the pass's outputs are shared so every rank's
    stored_self is complete. Returns the pass's mean step loss and terms, over all ranks."""
    p.net.train()
    sums = {"loss": 0.0}  # sample-weighted sums of the loss and the method's terms
    samples = 0
    outputs = []
    for step, start in enumerate(range(0, p.positions.numel(), p.batch_size)):
        batch = p.positions[start:start + p.batch_size]
        pos = batch.tensor_split(world)[rank]
        x = p.inputs[p.rows[pos]].to(p.device, non_blocking=True)
        pos_d = pos.to(p.device)
        out = p.net(x)
        b = pos.numel()
        if b:
            loss, terms = p.loss(out, pos_d)
            # DDP divides the summed gradients by `world`: weigh this rank's batch mean by its share
            # so the step is that of the mean over the WHOLE batch, as in one process.
            scaled = loss * (b * world / batch.numel())
            for key, value in {"loss": float(loss.detach()), **terms}.items():
                sums[key] = sums.get(key, 0.0) + value * b
            samples += b
        else:
            scaled = out.sum() * 0.0  # nothing here this step, but the gradient all-reduce needs us
        set_learning_rate(p.optimizer, p.lr_at(step))
        p.optimizer.zero_grad(set_to_none=True)
        scaled.backward()
        p.optimizer.step()
        outputs.append(out.detach())
        if p.progress is not None:
            p.progress.update(1)
    _share_outputs(p.stored_self, p.positions, p.batch_size, outputs, rank, world)
    names = ["loss", *p.terms]  # known on every rank, also one whose slices were all empty
    comm = p.device if dist.get_backend() == "nccl" else torch.device("cpu")
    totals = torch.tensor([sums.get(k, 0.0) for k in names] + [samples], dtype=torch.float64, device=comm)
    dist.all_reduce(totals)
    totals = totals.cpu()
    for value in totals:
        check_finite(float(value))
    seen = max(float(totals[-1]), 1.0)
    return {name: float(total) / seen for name, total in zip(names, totals)}


def _share_outputs(stored: torch.Tensor, positions, batch_size, outputs, rank, world) -> None:
    """All-gather this pass's outputs and write every rank's rows into `stored`."""
    slices = _rank_slices(positions, batch_size, world)  # known on every rank: no need to send them
    mine = torch.cat(outputs) if outputs else stored[:0]
    longest = max(s.numel() for s in slices)
    comm = stored.device if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros(longest, stored.shape[1], dtype=stored.dtype, device=comm)
    padded[: mine.shape[0]] = mine.to(comm)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    for r, pos in enumerate(slices):
        stored[pos.to(stored.device)] = gathered[r][: pos.numel()].to(stored.device)


# --- evaluation with the database sharded ----------------------------------------------------------


def _aligned_slice(n: int, rank: int, world: int, unit: int = _ENCODE_BATCH) -> tuple[int, int]:
    blocks = -(-n // unit)
    lo, hi = blocks * rank // world, blocks * (rank + 1) // world
    return min(n, lo * unit), min(n, hi * unit)


def evaluate_sharded(model, data, *, topk: int = 5000, device=None) -> dict:
    """MAP@topk of every task of the model like dchml.train.evaluate, with the retrieval set split
    across the ranks of the default group: each rank encodes all queries and its slice of the
    database, and dchml.distributed.mean_average_precision merges the slices exactly. Collective."""
    rank, world = dist.get_rank(), dist.get_world_size()
    kw = dict(batch_size=_ENCODE_BATCH, device=device)
    lo, hi = _aligned_slice(data.retrieval_idx.numel(), rank, world)
    mine = data.retrieval_idx[lo:hi]
    codes = {}
    for modality in model.modalities:
        rows = data.image if modality == "image" else data.text
        for which, idx in (("query", data.query_idx), ("database", mine)):
            c = hash_codes(model, rows[idx], modality, **kw)
            codes[modality, which] = c.to(device) if device is not None else c  # the GPU kernels under NCCL
    ql, dl = data.labels[data.query_idx], data.labels[mine]
    out = {"topk": topk}
    for task in tasks_of(model.modalities):
        q_side, d_side = query_and_database(task)
        out[f"{task}_map"] = float(_sharded_map(codes[q_side, "query"], codes[d_side, "database"], ql, dl, topk=topk))
    return out
