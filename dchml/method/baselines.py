"""Reference points trained and scored beside the method in every run, so a report tells a useful run
from a useless one:

- the linear hasher: ridge regression from each modality's normalised features (the model's own
  input normalisers) to the code each training item should have (the mean category code of its
  labels; CSQ: the item's hash centre), then sign. Its ridge strength is chosen on the
  validation slice (never the queries).
- chance: the MAP of a uniformly random ranking, computed exactly (every code equal and
  tie-aware AP, i.e. the expectation over all orders), not by sampling.
"""
from __future__ import annotations

import torch

from ..retrieval.metrics import mean_average_precision
from .kernel_hasher import Ridge
from .methods import get_method, query_and_database, tasks_of
from .models import HashModel, sgn

RIDGE_STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # times the mean eigenvalue of X^T X / n


def chance_map(data, *, topk: int = 5000, tasks=("i2t", "t2i")) -> dict:
    """Expected MAP@topk of a random ranking of the database for the query set (the same number
    for every task: relevance does not depend on the modality)."""
    q, db = data.query_idx, data.retrieval_idx
    same_q = torch.ones(q.numel(), 8)
    same_d = torch.ones(db.numel(), 8)
    value = float(mean_average_precision(same_q, same_d, data.labels[q], data.labels[db], topk=topk,
                                         ties="expected"))
    return {f"{task}_map": value for task in tasks}


def _features(model: HashModel, data, modality: str, idx: torch.Tensor) -> torch.Tensor:
    net = model.net(modality)
    x = (data.image if modality == "image" else data.text)[idx]
    with torch.no_grad():
        return net.normalizer(x.float().to(net.normalizer.mean.device)).cpu()


def linear_hasher(model: HashModel, data, fit_idx: torch.Tensor, val_idx: torch.Tensor, *,
                  topk: int = 5000, method: str | None = None) -> dict:
    """Train the linear hasher on the fitted training items with `model`'s category codes and
    normalisers; score it on the query set for every task of the model's modalities. Its targets
    are what `method` wants an item's code to be (default: the mean category code of its labels).
    Returns `<task>_map` for each task and the chosen ridge strength, or {"skipped": reason} when
    an image modality is raw pixels."""
    modalities = model.modalities
    if "image" in modalities and model.image_net.uses_pixels:
        return {"skipped": "image pixels: a linear map of raw pixels is no meaningful baseline"}
    chooser = get_method(method or ("dchml" if model.cross_modal else "psldh"))
    targets = chooser.item_targets(model, data.labels[fit_idx])
    sets = {"fit": fit_idx, "val": val_idx, "query": data.query_idx, "database": data.retrieval_idx}
    features = {}  # (modality, set name) -> normalised features, computed once per run

    def feats(modality, name):
        if (modality, name) not in features:
            features[modality, name] = _features(model, data, modality, sets[name])
        return features[modality, name]

    ridges = {m: Ridge(feats(m, "fit"), targets) for m in modalities}
    maps = {}  # strength -> {modality: the fitted map}, each solved once

    def scores(strength, tasks, queries, database):
        if strength not in maps:
            maps[strength] = {m: ridges[m].affine(strength) for m in ridges}
        code = lambda m, name: sgn(maps[strength][m](feats(m, name)).float())  # noqa: E731
        ql, dl = data.labels[sets[queries]], data.labels[sets[database]]
        k = min(topk, sets[database].numel())
        out = {}
        for task in tasks:
            q_side, d_side = query_and_database(task)
            out[task] = float(mean_average_precision(code(q_side, queries), code(d_side, database), ql, dl, topk=k))
        return out

    if val_idx.numel():
        selecting = chooser.selection_tasks(modalities)
        chosen = max(RIDGE_STRENGTHS, key=lambda a: sum(scores(a, selecting, "val", "fit").values()))
    else:
        chosen = 1.0
    result = {f"{task}_map": value for task, value in scores(chosen, tasks_of(modalities), "query", "database").items()}
    return {**result, "ridge_strength": chosen,
            "chosen_on": "validation slice" if val_idx.numel() else "fixed (no validation slice)"}


def kernel_hasher(model: HashModel, data, fit_idx: torch.Tensor, val_idx: torch.Tensor, *,
                  topk: int = 5000, seed: int = 0, method: str | None = None) -> dict:
    """The kernel hasher (dchml.method.kernel_hasher) of each modality of the model, fitted like the
    linear hasher (the model's normalisers, the method's item targets) and scored on the query set
    for every task. Returns `<task>_map` and each modality's chosen space, width and strength."""
    from .kernel_hasher import fit_kernel_hasher

    modalities = model.modalities
    if "image" in modalities and model.image_net.uses_pixels:
        return {"skipped": "image pixels: RBF features of raw pixels are no meaningful baseline"}
    chooser = get_method(method or ("dchml" if model.cross_modal else "psldh"))
    targets = chooser.item_targets(model, data.labels[fit_idx])
    choosing = val_idx.numel() > 0
    codes, chosen = {}, {}
    for modality in modalities:
        hasher, chosen[modality] = fit_kernel_hasher(
            _features(model, data, modality, fit_idx), targets,
            val_x=_features(model, data, modality, val_idx) if choosing else None,
            val_labels=data.labels[val_idx], fit_labels=data.labels[fit_idx], topk=topk, seed=seed)
        codes[modality] = {name: hasher.encode(_features(model, data, modality, idx))
                           for name, idx in (("query", data.query_idx), ("database", data.retrieval_idx))}
    ql, dl = data.labels[data.query_idx], data.labels[data.retrieval_idx]
    k = min(topk, data.retrieval_idx.numel())
    result = {}
    for task in tasks_of(modalities):
        q_side, d_side = query_and_database(task)
        result[f"{task}_map"] = float(mean_average_precision(codes[q_side]["query"], codes[d_side]["database"], ql, dl,
                                                             topk=k))
    return {**result,
            **{key: {m: c[key] for m, c in chosen.items()} for key in ("space", "bandwidth", "ridge_strength")},
            "anchors": chosen[modalities[0]]["anchors"],
            "chosen_on": "validation slice" if choosing else "fixed (no validation slice)"}
