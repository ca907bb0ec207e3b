"""Reference points trained and scored beside DCHML in every run, so a report tells a useful run
from a useless one:

- the linear hasher: ridge regression from each modality's normalised features (the model's own
  input normalisers) to the code each training item should have, the mean proxy code of its
  labels, then sign. Its ridge strength is chosen on the validation slice (never the queries).
- chance: the MAP of a uniformly random ranking, computed exactly (every code equal and
  tie-aware AP, i.e. the expectation over all orders), not by sampling.
"""
from __future__ import annotations

import torch

from ..retrieval.metrics import mean_average_precision
from .models import CrossModalHashModel, sgn

RIDGE_STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # times the mean eigenvalue of X^T X / n


def chance_map(data, *, topk: int = 5000) -> dict:
    """Expected MAP@topk of a random ranking of the database for the query set (both directions
    are the same number: relevance does not depend on the modality)."""
    q, db = data.query_idx, data.retrieval_idx
    same_q = torch.ones(q.numel(), 8)
    same_d = torch.ones(db.numel(), 8)
    value = float(mean_average_precision(same_q, same_d, data.labels[q], data.labels[db], topk=topk,
                                         ties="expected"))
    return {"i2t_map": value, "t2i_map": value}


class _Ridge:
    """Ridge regression X -> T with a bias, solved for several strengths from one eigendecomposition."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor):
        x, targets = x.to(torch.float64), targets.to(torch.float64)
        self.x_mean, self.t_mean = x.mean(0), targets.mean(0)
        xc = x - self.x_mean
        n, d = xc.shape
        self.dual = d > n  # fewer items than dimensions: solve in the n x n form
        gram = xc @ xc.T if self.dual else xc.T @ xc
        self.evals, self.evecs = torch.linalg.eigh(gram)
        self.evals = self.evals.clamp_min(0)
        self.scale = float(self.evals.mean()) or 1.0
        self.xc, self.tc = xc, targets - self.t_mean

    def weights(self, strength: float) -> torch.Tensor:
        inv = 1.0 / (self.evals + strength * self.scale)
        if self.dual:  # W = X^T (X X^T + a I)^-1 T
            return self.xc.T @ (self.evecs @ (inv[:, None] * (self.evecs.T @ self.tc)))
        return self.evecs @ (inv[:, None] * (self.evecs.T @ (self.xc.T @ self.tc)))

    def predict(self, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float64) - self.x_mean) @ weights + self.t_mean


def _features(model: CrossModalHashModel, data, modality: str, idx: torch.Tensor) -> torch.Tensor:
    net = model.net(modality)
    x = (data.image if modality == "image" else data.text)[idx]
    with torch.no_grad():
        return net.normalizer(x.float().to(net.normalizer.mean.device)).cpu()


def linear_hasher(model: CrossModalHashModel, data, fit_idx: torch.Tensor, val_idx: torch.Tensor, *,
                  topk: int = 5000) -> dict:
    """Train the linear hasher on the fitted training items with `model`'s proxies and
    normalisers; score it on the query set. Returns MAP for both directions and the chosen ridge
    strength, or {"skipped": reason} when an image modality is raw pixels."""
    if data.image_is_pixels:
        return {"skipped": "image pixels: a linear map of raw pixels is no meaningful baseline"}
    proxies = model.proxies.detach().cpu().to(torch.float64)
    labels = data.labels[fit_idx].to(torch.float64)
    targets = (labels @ proxies) / labels.sum(1, keepdim=True)
    sets = {"fit": fit_idx, "val": val_idx, "query": data.query_idx, "database": data.retrieval_idx}
    features = {}  # (modality, set name) -> normalised features, computed once per run

    def feats(modality, name):
        if (modality, name) not in features:
            features[modality, name] = _features(model, data, modality, sets[name])
        return features[modality, name]

    ridges = {m: _Ridge(feats(m, "fit"), targets) for m in ("image", "text")}

    def scores(strength, queries, database):
        weights = {m: ridges[m].weights(strength) for m in ridges}
        code = lambda m, name: sgn(ridges[m].predict(weights[m], feats(m, name)).float())  # noqa: E731
        ql, dl = data.labels[sets[queries]], data.labels[sets[database]]
        k = min(topk, sets[database].numel())
        return (float(mean_average_precision(code("image", queries), code("text", database), ql, dl, topk=k)),
                float(mean_average_precision(code("text", queries), code("image", database), ql, dl, topk=k)))

    if val_idx.numel():
        chosen = max(RIDGE_STRENGTHS, key=lambda a: sum(scores(a, "val", "fit")))
    else:
        chosen = 1.0
    i2t, t2i = scores(chosen, "query", "database")
    return {"i2t_map": i2t, "t2i_map": t2i, "ridge_strength": chosen,
            "chosen_on": "validation slice" if val_idx.numel() else "fixed (no validation slice)"}


def kernel_hasher(model: CrossModalHashModel, data, fit_idx: torch.Tensor, val_idx: torch.Tensor, *,
                  topk: int = 5000, seed: int = 0) -> dict:
    """The kernel hasher (dchml.method.kernel_hasher) of each modality, fitted like the linear
    hasher (the model's normalisers, the mean proxy codes as targets) and scored on the query set.
    Returns MAP for both directions and each modality's chosen width and strength."""
    from .kernel_hasher import fit_kernel_hasher

    if data.image_is_pixels:
        return {"skipped": "image pixels: RBF features of raw pixels are no meaningful baseline"}
    proxies = model.proxies.detach().cpu().to(torch.float64)
    labels = data.labels[fit_idx].to(torch.float64)
    targets = (labels @ proxies) / labels.sum(1, keepdim=True)
    choosing = val_idx.numel() > 0
    codes, chosen = {}, {}
    for modality in ("image", "text"):
        hasher, chosen[modality] = fit_kernel_hasher(
            _features(model, data, modality, fit_idx), targets,
            val_x=_features(model, data, modality, val_idx) if choosing else None,
            val_labels=data.labels[val_idx], fit_labels=data.labels[fit_idx], topk=topk, seed=seed)
        codes[modality] = {name: hasher.encode(_features(model, data, modality, idx))
                           for name, idx in (("query", data.query_idx), ("database", data.retrieval_idx))}
    ql, dl = data.labels[data.query_idx], data.labels[data.retrieval_idx]
    k = min(topk, data.retrieval_idx.numel())
    i2t = float(mean_average_precision(codes["image"]["query"], codes["text"]["database"], ql, dl, topk=k))
    t2i = float(mean_average_precision(codes["text"]["query"], codes["image"]["database"], ql, dl, topk=k))
    return {"i2t_map": i2t, "t2i_map": t2i,
            **{key: {m: c[key] for m, c in chosen.items()} for key in ("space", "bandwidth", "ridge_strength")},
            "anchors": chosen["image"]["anchors"],
            "chosen_on": "validation slice" if choosing else "fixed (no validation slice)"}
