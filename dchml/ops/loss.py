"""The loss operators (margin-dynamic-softmax, PSLDH partial softmax): label normalisation, the
per-step fast path, thin wrappers around `torch.ops.dchml.*`, and their fake kernels."""
from __future__ import annotations

import math

import torch

from .checks import check_codes, check_scalar, check_scale, require_same_device


# --- Margin-dynamic-softmax loss ops ------------------------------------------------------------
# Labels reach the kernels as a pair (labels, indices):
# - (dense, None): the (n, c) 0/1 tensor as the user gave it (bool, integer or floating); the
#   kernels read it row by row in place, checking values and empty rows as they go (at the
#   paper's scale a conversion to CSR cost more than the loss itself, measured);
# - (offsets, indices): CSR of the positives, offsets (n+1,) int64, indices (nnz,) int64, sorted
#   and distinct within a row, every row non-empty.
# Accepted from users: a dense (n, c) tensor; a torch.sparse_csr tensor of shape (n, c) whose
# stored entries are the positives (value 1); a tuple (offsets, indices) of int64 tensors
# (positives of row i: indices[offsets[i]:offsets[i+1]]). Unsorted sparse rows are sorted;
# duplicate positives are an error (a duplicated label is a data bug).

def _prepare_proxies(proxies, codes):
    """Proxies in a kernel dtype: int8 as given, any float converted to the codes' dtype."""
    if not isinstance(proxies, torch.Tensor):
        raise TypeError(f"proxies must be a tensor, got {type(proxies).__name__}")
    if proxies.dim() != 2 or proxies.shape[1] != codes.shape[1]:
        raise ValueError(f"proxies must be (c, k) with k = {codes.shape[1]} (the code length), got shape {tuple(proxies.shape)}")
    if proxies.dtype == torch.int8:
        return proxies
    if proxies.is_floating_point():
        return proxies if proxies.dtype == codes.dtype else proxies.to(codes.dtype)
    raise TypeError(f"proxies must be ±1 as int8 or a floating dtype, got {proxies.dtype}")


def _normalise_sparse_rows(offsets, indices, n, c, device):
    """Validate a user CSR of positives; return it sorted within rows, as int64 on `device`."""
    for name, t in (("labels offsets", offsets), ("labels indices", indices)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, codes on {device}")
    offsets, indices = offsets.long(), indices.long()
    if offsets.numel() != n + 1:
        raise ValueError(f"labels offsets must have n + 1 = {n + 1} entries, got {offsets.numel()}")
    nnz = indices.numel()
    counts = offsets.diff()
    if int(offsets[0]) != 0 or int(offsets[-1]) != nnz or bool((counts < 0).any()):
        raise ValueError(
            f"labels offsets must start at 0, not decrease and end at len(indices) = {nnz}, "
            f"got first {int(offsets[0])}, last {int(offsets[-1])}"
        )
    empty = (counts == 0).nonzero()
    if empty.numel():
        raise ValueError(
            f"labels: {empty.numel()} row(s) have no positive label (first: row {int(empty[0])}); "
            "every sample needs at least one label (docs/spec.md §3)"
        )
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= c):
        raise ValueError(f"labels indices must lie in [0, {c}) (c = number of proxies), got range "
                         f"[{int(indices.min())}, {int(indices.max())}]")
    rows = torch.repeat_interleave(torch.arange(n, device=device), counts)
    key = rows * c + indices
    if nnz > 1 and not bool((key.diff() > 0).all()):
        key = key.sort().values
        dup = (key.diff() == 0).nonzero()
        if dup.numel():
            raise ValueError(f"labels: row {int(key[int(dup[0])] // c)} lists positive "
                             f"{int(key[int(dup[0])] % c)} more than once")
        indices = key % c
    return offsets.contiguous(), indices.contiguous()


def normalise_labels(labels, n: int, c: int, device):
    """Normalise any accepted label form to the kernels' (labels, indices) pair; see above."""
    if type(labels) is torch.Tensor and labels.layout == torch.strided:  # the usual case, first
        if labels.device != device:  # (not device.type: that getter costs ~2 us per call, measured)
            raise ValueError(f"labels is on {labels.device}, codes on {device}")
        if labels.shape != (n, c):
            raise ValueError(f"labels must have shape (n, c) = ({n}, {c}), got {tuple(labels.shape)}")
        if labels.is_complex():
            raise TypeError(f"labels must be 0/1 as bool, integer or float, got {labels.dtype}")
        return labels, None  # values and empty rows are checked by the kernels
    if isinstance(labels, (tuple, list)):
        if len(labels) != 2:
            raise ValueError(f"sparse labels must be a tuple (offsets, indices), got {len(labels)} items")
        return _normalise_sparse_rows(labels[0], labels[1], n, c, device)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor or an (offsets, indices) tuple, got {type(labels).__name__}")
    if labels.device != device:
        raise ValueError(f"labels is on {labels.device}, codes on {device}")
    if tuple(labels.shape) != (n, c):
        raise ValueError(f"labels must have shape (n, c) = ({n}, {c}), got {tuple(labels.shape)}")
    if labels.layout == torch.sparse_csr:
        values = labels.values()
        if values.numel() and not bool((values == 1).all()):
            raise ValueError("sparse labels must store only the positives, with value 1")
        return _normalise_sparse_rows(labels.crow_indices(), labels.col_indices(), n, c, device)
    if labels.layout != torch.strided:
        raise ValueError(f"labels must be dense or torch.sparse_csr, got layout {labels.layout}")
    return normalise_labels(labels.as_subclass(torch.Tensor), n, c, device)  # a Tensor subclass


def prepare_loss_inputs(codes, proxies, labels, other):
    # Runs on every training step: at the paper's scale each microsecond here is ~1.5% of a step,
    # so the all-on-the-CPU case reads is_cpu (an attribute) instead of building torch.device
    # objects; the kernels re-check every shape, dtype and device in C++ anyway.
    check_codes(codes)
    if not isinstance(proxies, torch.Tensor):
        raise TypeError(f"proxies must be a tensor, got {type(proxies).__name__}")
    if not (codes.is_cpu and proxies.is_cpu and (other is None or other.is_cpu)):
        require_same_device(codes=codes, proxies=proxies, other=other)
    if other is not None:
        check_codes(other, "other")
        if other.shape != codes.shape or other.dtype != codes.dtype:
            raise ValueError(f"other must match codes: shape {tuple(codes.shape)} and dtype {codes.dtype}, "
                             f"got {tuple(other.shape)} and {other.dtype}")
    proxies = _prepare_proxies(proxies, codes)
    labels, indices = normalise_labels(labels, codes.shape[0], proxies.shape[0], codes.device)
    return proxies, labels, indices


# The per-step fast path. Every loss operator checks all of its inputs in C++ (shapes, dtypes,
# devices, ±1 proxies, 0/1 labels, empty rows), so with dense labels and plain float parameters a
# call that succeeds needs no Python checks: they cost 4 us of a 58 us step at the paper's scale
# (measured, interleaved A/B). A call that fails is repeated on the checked path, which raises the specific error,
# or converts an input the kernels take only in another form (float proxies of another dtype).


def _unchecked_loss(op, codes, labels, a, b, *args):
    """The op's loss for args, or None when the fast path does not apply or the op refused them."""
    # (is_cpu / is_cuda: a meta or other device's tensor would run the fake kernel instead of failing)
    if not (type(labels) is torch.Tensor and labels.layout == torch.strided and (codes.is_cpu or codes.is_cuda)
            and type(a) is float and type(b) is float and 0.0 <= a < math.inf and math.isfinite(b)
            and not torch.compiler.is_compiling()):
        return None
    try:
        return op(*args)[0]
    except (RuntimeError, ValueError, TypeError, NotImplementedError, IndexError):
        return None


def mds_loss_rows(codes, proxies, labels, *, eta=0.3, mu=0.3, other=None):
    """Per-row margin-dynamic-softmax loss (eq. 13; eq. 14's inter-modal term with `other`)."""
    loss = _unchecked_loss(torch.ops.dchml.mds_loss.default, codes, labels, eta, mu,
                           codes, other, proxies, labels, None, eta, mu)
    if loss is not None:
        return loss
    proxies, labels, indices = prepare_loss_inputs(codes, proxies, labels, other)
    loss, _ = torch.ops.dchml.mds_loss.default(codes, other, proxies, labels, indices,
                                       check_scale("eta", eta), check_scalar("mu", mu))
    return loss


# reduction codes of the *_reduced ops (as at::Reduction): the reduction runs inside the op, so
# loss.backward() is one autograd node (a separate mean() and its node cost ~35 us per step at the
# paper's scale, more than the kernels; measured, benchmarks/results/loss.md)
_REDUCTION_CODES = {"mean": 1, "sum": 2}


def mds_loss_reduced(codes, proxies, labels, reduction, *, eta=0.3, mu=0.3, other=None):
    """Margin-dynamic-softmax loss reduced over rows ("mean" or "sum") in the op itself."""
    code = _REDUCTION_CODES[reduction]
    loss = _unchecked_loss(torch.ops.dchml.mds_loss_reduced.default, codes, labels, eta, mu,
                           codes, other, proxies, labels, None, eta, mu, code)
    if loss is not None:
        return loss
    proxies, labels, indices = prepare_loss_inputs(codes, proxies, labels, other)
    loss, _ = torch.ops.dchml.mds_loss_reduced.default(codes, other, proxies, labels, indices,
                                                       check_scale("eta", eta), check_scalar("mu", mu), code)
    return loss


def partial_softmax_reduced(codes, proxies, labels, reduction, *, gamma=0.2, sigma=0.2):
    """PSLDH partial-softmax loss reduced over rows ("mean" or "sum") in the op itself."""
    code = _REDUCTION_CODES[reduction]
    loss = _unchecked_loss(torch.ops.dchml.partial_softmax_loss_reduced.default, codes, labels, gamma, sigma,
                           codes, proxies, labels, None, gamma, sigma, code)
    if loss is not None:
        return loss
    proxies, labels, indices = prepare_loss_inputs(codes, proxies, labels, None)
    loss, _ = torch.ops.dchml.partial_softmax_loss_reduced.default(
        codes, proxies, labels, indices, check_scale("gamma", gamma), check_scalar("sigma", sigma), code)
    return loss


def mds_loss_rows_for_backward(codes, proxies, labels, *, eta=0.3, mu=0.3, other=None):
    """Per-row margin-dynamic-softmax loss without the registered autograd, for a caller that runs
    its own backward (dchml.ops.autograd): returns (loss, saved), saved to pass to mds_loss_backward."""
    proxies, labels, indices = prepare_loss_inputs(codes, proxies, labels, other)
    eta, mu = check_scale("eta", eta), check_scalar("mu", mu)
    with torch.no_grad():
        loss, lse = torch.ops.dchml.mds_loss.default(codes, other, proxies, labels, indices, eta, mu)
    return loss, (proxies, labels, indices, lse, eta, mu)


def mds_loss_backward(grad_loss, codes, other, saved):
    """(grad_codes, grad_other or None) of mds_loss_rows_for_backward's loss; saved: its second output."""
    proxies, labels, indices, lse, eta, mu = saved
    grad_codes, grad_other = torch.ops.dchml.mds_loss_backward.default(
        grad_loss, codes, other, proxies, labels, indices, lse, eta, mu)
    return grad_codes, (grad_other if other is not None else None)


def partial_softmax_rows(codes, proxies, labels, *, gamma=0.2, sigma=0.2):
    """Per-row PSLDH partial-softmax loss (§6)."""
    loss = _unchecked_loss(torch.ops.dchml.partial_softmax_loss.default, codes, labels, gamma, sigma,
                           codes, proxies, labels, None, gamma, sigma)
    if loss is not None:
        return loss
    proxies, labels, indices = prepare_loss_inputs(codes, proxies, labels, None)
    loss, _ = torch.ops.dchml.partial_softmax_loss.default(codes, proxies, labels, indices,
                                                   check_scale("gamma", gamma), check_scalar("sigma", sigma))
    return loss


def loss_tables(enable: bool | None = None) -> bool:
    """Whether the CPU loss kernels run float32 products through their AVX-512 lookup tables;
    True/False switches them on (where the CPU supports it) or off. For tests and benchmarks."""
    return torch.ops.dchml._loss_tables(-1 if enable is None else int(bool(enable)))


@torch.library.register_fake("dchml::labels_to_csr")
def _labels_to_csr_fake(labels):
    nnz = torch.library.get_ctx().new_dynamic_size()
    return labels.new_empty(labels.shape[0] + 1, dtype=torch.int64), labels.new_empty(nnz, dtype=torch.int64)


@torch.library.register_fake("dchml::mds_loss")
def _mds_loss_fake(codes, other, proxies, labels, indices, eta, mu):
    return codes.new_empty(codes.shape[0]), codes.new_empty(codes.shape[0])


@torch.library.register_fake("dchml::mds_loss_backward")
def _mds_loss_backward_fake(grad_loss, codes, other, proxies, labels, indices, lse, eta, mu):
    return torch.empty_like(codes), codes.new_empty((codes.shape[0] if other is not None else 0, codes.shape[1]))


@torch.library.register_fake("dchml::partial_softmax_loss")
def _partial_softmax_loss_fake(codes, proxies, labels, indices, gamma, sigma):
    return codes.new_empty(codes.shape[0]), codes.new_empty(codes.shape[0])


@torch.library.register_fake("dchml::mds_loss_reduced")
def _mds_loss_reduced_fake(codes, other, proxies, labels, indices, eta, mu, reduction):
    return codes.new_empty(()), codes.new_empty(codes.shape[0])


@torch.library.register_fake("dchml::partial_softmax_loss_reduced")
def _partial_softmax_loss_reduced_fake(codes, proxies, labels, indices, gamma, sigma, reduction):
    return codes.new_empty(()), codes.new_empty(codes.shape[0])


@torch.library.register_fake("dchml::partial_softmax_loss_backward")
def _partial_softmax_loss_backward_fake(grad_loss, codes, proxies, labels, indices, lse_neg, gamma, sigma):
    return torch.empty_like(codes)


# Autograd of the loss operators is registered in C++ (csrc/ops/mds_loss.cpp, a plain autograd
# Node on the Autograd key): at the paper's scale the Python autograd hop of
# torch.library.register_autograd cost more than the kernels themselves.
