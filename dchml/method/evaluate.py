"""Retrieval scores of a model (MAP@K both ways, optional curves) and the validation slice that
model selection scores on."""
from __future__ import annotations

import numpy as np
import torch

from ..retrieval.metrics import mean_average_precision, pr_curve, precision_at_n
from .config import TrainConfig
from .encoding import hash_codes
from .models import CrossModalHashModel


# --- evaluation ------------------------------------------------------------------------------------

PRECISION_AT_N = (1, 10, 50, 100, 200, 500, 1000, 1500, 2000, 3000, 4000, 5000)


def evaluate(model: CrossModalHashModel, data, *, topk: int = 5000, curves: bool = False, device=None,
             batch_size: int = 1024) -> dict:
    """MAP@topk for I->T (image queries vs the text database) and T->I, with the ranker's metrics.
    With curves=True also precision@N and the precision-recall curve by Hamming radius."""
    return retrieval_scores(model, data, data.query_idx, data.retrieval_idx, topk=topk, curves=curves,
                            device=device, batch_size=batch_size)


def retrieval_scores(model: CrossModalHashModel, data, query_idx, db_idx, *, topk: int = 5000,
                     curves: bool = False, device=None, batch_size: int = 1024) -> dict:
    """MAP@topk of `query_idx` items ranked against `db_idx` items, both directions."""
    kw = dict(batch_size=batch_size, device=device)
    q_img = hash_codes(model, data.image[query_idx], "image", **kw)
    q_txt = hash_codes(model, data.text[query_idx], "text", **kw)
    d_img = hash_codes(model, data.image[db_idx], "image", **kw)
    d_txt = hash_codes(model, data.text[db_idx], "text", **kw)
    ql, dl = data.labels[query_idx], data.labels[db_idx]
    tasks = {"i2t": (q_img, d_txt), "t2i": (q_txt, d_img)}
    out = {"topk": topk}
    for task, (q, d) in tasks.items():
        out[f"{task}_map"] = float(mean_average_precision(q, d, ql, dl, topk=topk))
    if curves:
        ns = [n for n in PRECISION_AT_N if n <= d_img.shape[0]]
        out["curves"] = {}
        for task, (q, d) in tasks.items():
            precision, recall = pr_curve(q, d, ql, dl)
            out["curves"][task] = {
                "precision_at_n": {"n": ns, "precision": [float(v) for v in precision_at_n(q, d, ql, dl, ns)]},
                "pr": {"precision": [float(v) for v in precision], "recall": [float(v) for v in recall]},
            }
    return out


# --- the validation slice ------------------------------------------------------------------------------

MIN_VALIDATION = 20  # fewer validation items than this give too noisy a MAP to select on


def validation_split(train_idx: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit_idx, val_idx): the training items trained on and the held-out validation slice, both
    sorted data rows. Deterministic from cfg.seed; val_idx is empty when selection is off or the
    training set is too small to spare a slice."""
    n = train_idx.numel()
    n_val = min(cfg.val_max, int(round(cfg.val_fraction * n)))
    if n_val < MIN_VALIDATION or n - n_val < MIN_VALIDATION:
        return train_idx, train_idx[:0]
    perm = torch.from_numpy(np.random.default_rng([cfg.seed, 0x5A1]).permutation(n))
    val = perm[:n_val].sort().values
    fit = perm[n_val:].sort().values
    return train_idx[fit], train_idx[val]
