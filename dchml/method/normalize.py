"""Input normalisation of feature vectors, fitted on the training items and stored in the model.

Public feature files ship at very different scales (L1-normalised visual-word histograms around
0.01, ReLU CNN activations up to ~50, raw term counts in the hundreds); an MLP trained with one
learning rate cannot cope with all of them. `FeatureNormalizer` maps every file to the same
well-conditioned range before the first layer, and it is a module of the network, so training,
evaluation, encoding, search, the Python API and the distributed driver all apply exactly the
same transform, and it travels inside every checkpoint.

Transforms (per modality, chosen by `kind`):
- "standardize": x -> (x - mean_j) / std_j per dimension j;
- "log": for sparse non-negative data (counts, tf-idf, histograms, ReLU activations):
  x -> log1p((x - min_j) / s) with s the mean of the training set's non-zero shifted entries,
  then per-dimension standardisation; the log tames heavy tails and rare large counts;
- "none": the identity (the paper's literal setting);
- "auto" (the default) picks "log" when at least half of the training entries sit at their
  dimension's minimum (sparse data), else "standardize".
Every fitted statistic is a location or a scale of the training data, so a model trained on x
gives the same codes for x as one trained on a*x + b (a > 0) gives for a*x + b, up to rounding.
Constant dimensions map to 0, and standardised values are clipped to +-`clip` so that a rare
feature (seen in a handful of training items, hence a tiny std) cannot dominate a query's input.
"""
from __future__ import annotations

import torch
from torch import nn

KINDS = ("auto", "standardize", "log", "none")
FITTED_KINDS = ("none", "standardize", "log")  # indexed by the kind_code buffer
DEFAULT_CLIP = 5.0
SPARSE_FRACTION = 0.5  # share of entries at their dimension's minimum above which data counts as sparse
_CHUNK = 4096          # rows per step when fitting, to bound the float64 working memory


def check_kind(kind: str, what: str = "normalisation") -> str:
    if kind not in KINDS:
        raise ValueError(f"{what} must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


class FeatureNormalizer(nn.Module):
    """A fitted per-dimension transform of (n, d) features; unfitted it is the identity.

    Buffers (saved in the state dict): kind_code (0 none, 1 standardize, 2 log), offset (d,),
    log_scale (), mean (d,), inv_std (d,), clip ().
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("kind_code", torch.zeros((), dtype=torch.int64))
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("log_scale", torch.ones(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("inv_std", torch.ones(dim))
        self.register_buffer("clip", torch.full((), float("inf")))

    @property
    def kind(self) -> str:
        return FITTED_KINDS[int(self.kind_code)]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kind={self.kind}, clip={float(self.clip):g}"

    @torch.no_grad()
    def fit(self, x: torch.Tensor, kind: str = "auto", *, clip: float = DEFAULT_CLIP) -> "FeatureNormalizer":
        """Fit on training features x (n, d); returns self. Statistics in float64."""
        check_kind(kind)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"normaliser for {self.dim}-d features got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("cannot fit a normaliser on zero training items")
        if not (clip > 0):
            raise ValueError(f"clip must be > 0, got {clip}")
        if kind == "auto":
            kind = choose_kind(x)
        self.kind_code.fill_(FITTED_KINDS.index(kind))
        device = self.offset.device
        if kind == "none":
            self.offset.zero_(), self.mean.zero_(), self.inv_std.fill_(1.0), self.log_scale.fill_(1.0)
            self.clip.fill_(float("inf"))
            return self
        self.clip.fill_(float(clip))
        low = _column_min(x)
        self.offset.copy_(low.to(device) if kind == "log" else torch.zeros_like(low))
        if kind == "log":
            self.log_scale.copy_(_mean_positive(x, low))
        mean, std = _column_moments(x, lambda chunk: self._pre(chunk))
        constant = std <= 0
        self.mean.copy_(mean.to(device))
        self.inv_std.copy_(torch.where(constant, torch.zeros_like(std), 1.0 / torch.where(constant, torch.ones_like(std), std)))
        return self

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        """The part of the transform before standardisation, in float64 while fitting."""
        if int(self.kind_code) == 2:
            shifted = (x - self.offset.to(x.dtype)).clamp_min(0)
            return torch.log1p(shifted / self.log_scale.to(x.dtype))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = int(self.kind_code)
        if code == 0:
            return x
        x = self._pre(x.to(self.mean.dtype))
        return ((x - self.mean) * self.inv_std).clamp(-self.clip, self.clip)

    def describe(self) -> dict:
        return {"kind": self.kind, "clip": float(self.clip), "dim": self.dim,
                "constant_dims": int((self.inv_std == 0).sum()) if self.kind != "none" else 0}


def choose_kind(x: torch.Tensor) -> str:
    """'log' for sparse data (at least half the entries at their dimension's minimum), else
    'standardize'. Invariant to x -> a*x + b (a > 0): it counts ties with the minimum."""
    low = _column_min(x)
    at_min = 0
    for start in range(0, x.shape[0], _CHUNK):
        chunk = x[start:start + _CHUNK].to(torch.float64)
        at_min += int((chunk == low.to(chunk.dtype)).sum())
    return "log" if at_min >= SPARSE_FRACTION * x.numel() else "standardize"


def _column_min(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64).amin(0) if x.shape[0] <= _CHUNK else torch.stack(
        [x[s:s + _CHUNK].to(torch.float64).amin(0) for s in range(0, x.shape[0], _CHUNK)]).amin(0)


def _mean_positive(x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    total, count = torch.zeros((), dtype=torch.float64), 0
    for start in range(0, x.shape[0], _CHUNK):
        shifted = x[start:start + _CHUNK].to(torch.float64) - low
        positive = shifted > 0
        total += shifted[positive].sum()
        count += int(positive.sum())
    return total / count if count else torch.ones((), dtype=torch.float64)


def _column_moments(x: torch.Tensor, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and population std of transform(x), two passes in float64."""
    n = x.shape[0]
    chunks = range(0, n, _CHUNK)
    total = sum(transform(x[s:s + _CHUNK].to(torch.float64)).sum(0) for s in chunks)
    mean = total / n
    sq = sum(((transform(x[s:s + _CHUNK].to(torch.float64)) - mean) ** 2).sum(0) for s in chunks)
    std = (sq / n).sqrt()
    # A dimension constant up to rounding has a std many orders below its magnitude.
    scale = transform(x[:_CHUNK].to(torch.float64)).abs().amax(0)
    std = torch.where(std <= 1e-9 * scale.clamp_min(1e-300), torch.zeros_like(std), std)
    return mean, std
