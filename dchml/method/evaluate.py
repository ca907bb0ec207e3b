"""Retrieval scores of a model (MAP@K for each task it serves, optional curves) and the validation slice that
model selection scores on."""
from __future__ import annotations

import numpy as np
import torch

from ..retrieval.metrics import mean_average_precision, pr_curve, precision_at_n
from .config import TrainConfig
from .encoding import hash_codes
from .methods import query_and_database, tasks_of
from .models import HashModel


# --- evaluation ------------------------------------------------------------------------------------

PRECISION_AT_N = (1, 10, 50, 100, 200, 500, 1000, 1500, 2000, 3000, 4000, 5000)


def evaluate(model: HashModel, data, *, topk: int = 5000, curves: bool = False, device=None,
             batch_size: int = 1024, tasks=None) -> dict:
    """MAP@topk of the query set against the database for every task the model serves (I->T and
    T->I for a cross-modal model, with I->I and T->T; I->I or T->T for a single-modality one), with
    the ranker's metrics. With curves=True also precision@N and the precision-recall curve by
    Hamming radius."""
    return retrieval_scores(model, data, data.query_idx, data.retrieval_idx, topk=topk, curves=curves,
                            device=device, batch_size=batch_size, tasks=tasks)


def retrieval_scores(model: HashModel, data, query_idx, db_idx, *, topk: int = 5000, curves: bool = False,
                     device=None, batch_size: int = 1024, tasks=None) -> dict:
    """MAP@topk of `query_idx` items ranked against `db_idx` items, for `tasks` (default: every
    task of the model's modalities). Each modality's codes are computed once."""
    tasks = tuple(tasks or tasks_of(model.modalities))
    kw = dict(batch_size=batch_size, device=device)
    codes = {}

    def codes_of(modality, which, idx):
        if (modality, which) not in codes:
            codes[modality, which] = hash_codes(model, (data.image if modality == "image" else data.text)[idx],
                                                modality, **kw)
        return codes[modality, which]

    ql, dl = data.labels[query_idx], data.labels[db_idx]
    pairs = {}
    for task in tasks:
        q_side, d_side = query_and_database(task)
        pairs[task] = (codes_of(q_side, "query", query_idx), codes_of(d_side, "database", db_idx))
    out = {"topk": topk}
    for task, (q, d) in pairs.items():
        out[f"{task}_map"] = float(mean_average_precision(q, d, ql, dl, topk=topk))
    if curves:
        ns = [n for n in PRECISION_AT_N if n <= len(db_idx)]
        out["curves"] = {}
        for task, (q, d) in pairs.items():
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
