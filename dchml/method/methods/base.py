"""What a hashing method is to the shared training loop (docs/spec.md §5, §6.3, §12).

A method says what it trains and how: which modalities its model has, how its category codes G
come about (a trained category network, or constructed centres), the loss of one mini-batch of
one modality's pass, the objective logged after each epoch, what happens after the passes of an
epoch (DCHML's C update), and which retrieval tasks select the kept epoch. Everything else (data,
the loop, selection, checkpoints, evaluation, baselines, the report) is shared.
"""
from __future__ import annotations

import torch

# Every method hyper-parameter TrainConfig carries; a method reads a subset (Method.params) and the
# others stay None. The same name may mean different things in two methods (docs/spec.md §12).
METHOD_PARAMS = ("eta", "mu", "lam", "gamma", "sigma", "alpha", "beta")
FLAG_OF = {"lam": "lambda"}  # the command-line spelling where it differs from the field's name
TASK_NAMES = {"i2t": "I->T", "t2i": "T->I", "i2i": "I->I", "t2t": "T->T"}


def data_modalities(data) -> tuple:
    """The modalities a data set holds, ("image", "text") or one of them."""
    return tuple(m for m in ("image", "text") if getattr(data, m, None) is not None)


def tasks_of(modalities) -> tuple:
    """Every retrieval task a model with these modalities serves: both directions across
    modalities, and within each modality."""
    modalities = tuple(modalities)
    cross = ("i2t", "t2i") if len(modalities) == 2 else ()
    within = tuple({"image": "i2i", "text": "t2t"}[m] for m in modalities)
    return cross + within


def query_and_database(task: str) -> tuple[str, str]:
    """('image' | 'text', 'image' | 'text'): the modality of a task's queries and of its database."""
    side = {"i": "image", "t": "text"}
    return side[task[0]], side[task[2]]


class Method:
    """Base of every method. Subclasses set the class attributes and implement the hooks."""

    name = ""
    title = ""
    cross_modal = True
    params: dict = {}           # hyper-parameters read, with their default values
    terms: tuple = ()           # names of the per-step loss terms reported by a pass
    category_net = True         # G comes from a trained category network (model.phnet)
    default_backbone = "alexnet"
    paper_recipe: dict = {}     # TrainConfig overrides for the paper's literal settings
    summary = ""

    # --- what the model holds ---------------------------------------------------------------------

    def modalities(self, cfg, data) -> tuple:
        """The modalities this method's model encodes on `data` (refuses data it cannot train on)."""
        have = data_modalities(data)
        if self.cross_modal:
            if len(have) < 2:
                raise ValueError(f"{self.title} is a cross-modal method and needs images and texts; {data.name} holds "
                                 f"{' and '.join(have) or 'neither'} only: use --method psldh (or csq) for "
                                 "single-modality hashing")
            return ("image", "text")
        if cfg.modality is not None:
            if cfg.modality not in have:
                raise ValueError(f"--modality {cfg.modality}: {data.name} holds {' and '.join(have)} only")
            return (cfg.modality,)
        return (have[0],)  # the image side when both are present

    def selection_tasks(self, modalities) -> tuple:
        """The tasks whose mean validation MAP picks the kept epoch."""
        return tasks_of(modalities)[:2] if self.cross_modal else tasks_of(modalities)

    # --- step 1: the category codes ------------------------------------------------------------------

    def make_category_codes(self, model, cfg, log=None) -> dict:
        """Fill model.proxies (and model.center_fill) with the frozen ±1 codes; return diagnostics."""
        raise NotImplementedError

    def item_targets(self, model, labels: torch.Tensor) -> torch.Tensor:
        """The code each item should have, as a real (n, k) target: the mean category code of its
        labels (the shallow baselines regress onto it)."""
        proxies = model.proxies.detach().to(labels.device, torch.float64)
        labels = labels.to(torch.float64)
        return (labels @ proxies) / labels.sum(1, keepdim=True).clamp_min(1)

    # --- step 2: the passes ---------------------------------------------------------------------------

    def pass_loss(self, run, modality: str):
        """loss(out, pos) -> (scalar, {term: float}) of one mini-batch of `modality`'s pass, with
        `pos` the batch's positions among the fitted training items (on the run's device)."""
        raise NotImplementedError

    def after_passes(self, run) -> None:
        """What follows the passes of an epoch (DCHML: C = sgn(B^v + B^t))."""

    def objective(self, run) -> dict:
        """The logged objective on the stored outputs of the whole training set: {"objective": ..., parts}."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<method {self.name}>"
