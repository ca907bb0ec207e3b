"""The one training loop of every method: Algorithm 1 of docs/spec.md §5 for DCHML (PHNet first,
then alternating image / text passes and the C update) and its single-modality form for PSLDH and
CSQ (category codes first, then one pass per epoch, §6, §12), with model selection on a validation
slice, per-epoch atomic checkpoints and exact resume. What differs between methods comes from the
method object (dchml.method.methods): the model's modalities, step 1, a batch's loss, the logged
objective and what follows the passes.

One loop (`run_epochs`) drives every way of training; what differs between one process and
several is a `Passes` object: how one modality's pass runs over the training positions, how a
checkpoint is committed, and how ranks agree. `SingleProcess` is the plain one;
dchml.distributed.training plugs in its DDP passes; benchmarks plug in their own.

Model selection [choice]: a seeded validation slice of the training items (`val_fraction`, at
most `val_max` items) is held out of training. Every `eval_every` epochs its items are ranked
against the remaining training items, and the epoch with the best mean validation MAP is kept;
training stops early after `patience` evaluations without improvement. The query set is never
looked at during training.

Determinism [choice]: everything random comes from the seed: the model init and dropout from
torch's global CPU generator (forked, so the caller's RNG state is untouched and restored on
exit), the shuffles and C's random init from a dedicated torch.Generator, the validation slice
from numpy's default_rng. Both torch states are saved in every checkpoint, so a resumed run equals
an uninterrupted one bit for bit on the CPU.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import torch

from ..data.fingerprint import difference, identity
from ..data.images import ImageSource
from .backbones import find_weights, load_backbone_weights, weights_record
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import PAPER_RECIPE, RECIPES, TrainConfig, resolve_device  # noqa: F401  (also dchml.train's names)
from .evaluate import evaluate, retrieval_scores, validation_split  # noqa: F401  (also dchml.train.evaluate)
from .methods import get_method
from .models import HashModel, sgn
from .passes import PassInputs, learning_rate, make_optimizer, train_pass
from .precision import MixedPrecision

@dataclass
class TrainResult:
    model: HashModel
    history: list = field(default_factory=list)
    proxy_diagnostics: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # the last checkpoint dict (tensors on the CPU)
    selection: dict = field(default_factory=dict)  # which epoch was kept, and why


# --- Algorithm 1 -----------------------------------------------------------------------------------


def model_kwargs(data, cfg: TrainConfig) -> dict:
    """The HashModel arguments of a run of `cfg` on `data` (also used to size it before training)."""
    method = get_method(cfg.method)
    modalities = method.modalities(cfg, data)
    pixels = "image" in modalities and data.image_is_pixels
    return dict(bits=cfg.bits, n_labels=data.n_labels, text_dim=data.text_dim if "text" in modalities else None,
                image_dim=data.image_dim if "image" in modalities and not pixels else None,
                proxy_hidden=cfg.proxy_hidden, image_hidden=cfg.image_hidden, text_hidden=cfg.text_hidden,
                image_size=cfg.image_size, image_backbone=cfg.image_backbone, modalities=modalities,
                category_net=method.category_net)


def resolve_modality(data, cfg: TrainConfig) -> TrainConfig:
    """cfg with the modality a single-modality method trains on this data (the image side when
    the data has both and none was asked for)."""
    method = get_method(cfg.method)
    if method.cross_modal:
        method.modalities(cfg, data)  # refuses data without both modalities
        return cfg
    return dataclasses.replace(cfg, modality=method.modalities(cfg, data)[0])


def build_model(data, cfg: TrainConfig, log=None) -> HashModel:
    """The untrained model of a run; a pixel model's backbone loads its weights, and
    `model.backbone_record` says which (dchml.method.backbones.weights_record)."""
    kwargs = model_kwargs(data, cfg)
    pixels = "image" in kwargs["modalities"] and kwargs["image_dim"] is None
    if not pixels:
        default_backbone = get_method(cfg.method).default_backbone
        for name, default in (("image_weights", None), ("image_backbone", default_backbone), ("augment", False)):
            if getattr(cfg, name) != default:
                raise ValueError(f"{name} is only for pixel images; this data set has "
                                 + (f"{data.image_dim}-d image features" if "image" in kwargs["modalities"]
                                    else "no images"))
    elif cfg.augment and not isinstance(data.image, ImageSource):
        raise ValueError("augment applies to images streamed from files; these pixels are in memory")
    model = HashModel(**kwargs)
    model.backbone_record = {}
    if pixels:
        weights = find_weights(cfg.image_backbone, cfg.image_weights)
        if weights:
            load_backbone_weights(cfg.image_backbone, model.image_net.backbone, weights)
        model.backbone_record = weights_record(cfg.image_backbone, cfg.image_weights, weights)
        if log:
            log(f"image backbone {cfg.image_backbone}: " + (f"weights from {weights}" if weights else
                                                            f"RANDOM weights ({model.backbone_record['why']})"))
    return model


def training_images(data, cfg: TrainConfig):
    """The image input of the training passes: data.image, with the augmentation switched on
    for images streamed from files when cfg.augment asks for it."""
    if isinstance(data.image, ImageSource):
        return data.image.with_options(augment=cfg.augment)
    return data.image


def fit_normalizers(model: HashModel, data, fit_idx: torch.Tensor, cfg: TrainConfig) -> None:
    """Fit the input normalisers of the feature nets on the fitted training items only."""
    if "image" in model.modalities and not model.image_net.uses_pixels:
        model.image_net.normalizer.fit(data.image[fit_idx], cfg.image_norm, clip=cfg.norm_clip)
    if "text" in model.modalities:
        model.text_net.normalizer.fit(data.text[fit_idx], cfg.text_norm, clip=cfg.norm_clip)


def pass_inputs(data, cfg: TrainConfig, modality: str):
    """The input rows of one modality's training passes."""
    return training_images(data, cfg) if modality == "image" else data.text


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class RunState:
    """What Algorithm 1 carries from one epoch to the next, fresh or restored from a checkpoint."""

    cfg: TrainConfig
    model: HashModel
    optimizers: dict              # modality -> its network's optimiser
    codes_c: torch.Tensor | None  # DCHML's shared targets C (None for single-modality methods)
    stored: dict                  # modality -> its stored outputs B̂ (n_fit, k)
    generator: torch.Generator
    train_idx: torch.Tensor
    fit_idx: torch.Tensor
    val_idx: torch.Tensor
    labels: torch.Tensor          # (n_fit, c) float32 on the device
    history: list
    diag: dict
    epoch: int                    # completed epochs
    best: dict                    # {"epoch", "score", "model" (state dict on the CPU)} or {}
    identity: dict = field(default_factory=dict)  # the data's fingerprint (dchml.data.fingerprint)
    stale: int = 0                # evaluations since the best one
    stopped_early: bool = False
    backbone: dict = field(default_factory=dict)  # what a pixel model's backbone started from
    runtime: dict = field(default_factory=dict)   # a resumed run: the threads and processes it ran with


class SingleProcess:
    """The passes of one process: the plain pass, checkpoints written directly."""

    main = True
    label = ""
    processes = 1

    def prepare(self, run: RunState, log) -> None:
        pass

    def net(self, run: RunState, modality: str):
        return run.model.net(modality)

    def run_pass(self, p: PassInputs) -> dict:
        return train_pass(p)

    def epoch_seconds(self, seconds: float) -> float:
        return seconds

    def commit(self, state: dict, path: str | None) -> None:
        if path:
            save_checkpoint(state, path)

    def agree(self, flag: bool) -> bool:
        return flag

    def finish(self, run: RunState) -> None:
        pass


def train(data, config: TrainConfig | None = None, *, checkpoint_path: str | None = None,
          resume: bool = False, progress: bool | None = None, log=log_to_stderr, on_epoch_end=None,
          passes=None) -> TrainResult:
    """Run Algorithm 1 on `data` (a dchml.data.CrossModalData).

    checkpoint_path: written atomically after every epoch. resume=True continues from that file
    (its config wins, except `epochs` and `eval_every`, which may be raised/changed to extend a run).
    progress: tqdm bars (default: when stderr is a TTY). log: callable for one-line messages or None.
    on_epoch_end(epoch, record): called after each epoch's checkpoint (tests use it to interrupt).
    passes: how each pass runs (default SingleProcess(); dchml.distributed.training plugs in DDP).
    """
    cfg = config or TrainConfig()
    if resume and not checkpoint_path:
        raise ValueError("resume=True needs checkpoint_path")
    if progress is None:
        progress = sys.stderr.isatty()
    log = log or (lambda message: None)
    device = resolve_device(cfg.device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        run = start_run(data, cfg, device, checkpoint_path, resume, log)
        return run_epochs(data, run, device, passes or SingleProcess(), checkpoint_path=checkpoint_path,
                          progress=progress, log=log, on_epoch_end=on_epoch_end, resumed=resume)


def start_run(data, cfg: TrainConfig, device, checkpoint_path, resume: bool, log) -> RunState:
    """Step 1 (the category codes), the normalisers, the validation slice and the initial C and
    stored outputs, or all of it from a checkpoint. Every rank of a distributed run calls it
    identically."""
    train_idx = data.train_idx.to(torch.int64)
    generator = torch.Generator()
    if resume:
        state = load_checkpoint(checkpoint_path)
        cfg = _resumed_config(state, cfg)
        _check_same_data(state, data, checkpoint_path)
        if "split" not in state:
            raise CheckpointError(f"checkpoint {checkpoint_path} was written by an older dchml (version "
                                  f"{state.get('version')}): it can be evaluated and encoded with, not resumed")
        fit_idx, val_idx = state["split"]["fit_idx"], state["split"]["val_idx"]
        model = model_from_checkpoint(state, weights="last").to(device)
        optimizers = {}
        for m in model.modalities:
            optimizers[m] = make_optimizer(model.net(m), cfg)
            optimizers[m].load_state_dict(state[f"optim_{m}"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        sel = state["selection"]
        best = {"epoch": sel["epoch"], "score": sel["score"], "model": state["model"]} if sel["epoch"] else {}
        codes_c = state["codes_c"].to(device) if state.get("codes_c") is not None else None
        return RunState(cfg, model, optimizers, codes_c, {m: state[f"stored_{m}"].to(device) for m in model.modalities},
                        generator, train_idx, fit_idx, val_idx, data.labels[fit_idx].to(device, torch.float32),
                        list(state["history"]), dict(state["phnet"]), int(state["epoch"]), best,
                        {k: v for k, v in state["data"].items() if k not in ("name", "n", "train_idx")},
                        int(sel["stale"]), bool(sel["stopped_early"]), dict(state.get("backbone") or {}),
                        dict(state.get("runtime") or {}))
    cfg = resolve_modality(data, cfg)
    method = get_method(cfg.method)
    torch.manual_seed(cfg.seed)
    generator.manual_seed(cfg.seed)
    fit_idx, val_idx = validation_split(train_idx, cfg)
    model = build_model(data, cfg, log).to(device)
    fit_normalizers(model, data, fit_idx, cfg)
    diag = method.make_category_codes(model, cfg, log)
    optimizers = {m: make_optimizer(model.net(m), cfg) for m in model.modalities}
    codes_c = None
    if method.cross_modal:
        codes_c = sgn(torch.randn(fit_idx.numel(), cfg.bits, generator=generator)).to(device)
    # Stored outputs start as the untrained nets' outputs, so l_I has a real partner from step 1.
    from .encoding import continuous_codes

    stored = {m: continuous_codes(model, (data.image if m == "image" else data.text)[fit_idx], m,
                                  device=device).to(device) for m in model.modalities}
    return RunState(cfg, model, optimizers, codes_c, stored, generator, train_idx, fit_idx, val_idx,
                    data.labels[fit_idx].to(device, torch.float32), [], diag, 0, {}, identity(data, train_idx),
                    backbone=model.backbone_record)


def run_epochs(data, run: RunState, device, passes, *, checkpoint_path=None, progress=False, log=None,
               on_epoch_end=None, resumed=False) -> TrainResult:
    """Steps 2a-2c of Algorithm 1 for every remaining epoch, with validation, selection, early
    stopping and a checkpoint committed after each epoch (the epoch line is logged after it)."""
    log = log or (lambda message: None)
    cfg = run.cfg
    if resumed:
        log(f"resuming {cfg.method} from {checkpoint_path} after epoch {run.epoch} of {cfg.epochs}")
        for line in runtime_differences(run.runtime, passes.processes):
            log(f"warning: {line}")
    passes.prepare(run, log)
    method = get_method(cfg.method)
    n_fit = run.fit_idx.numel()
    steps = math.ceil(n_fit / cfg.batch_size)
    precision = MixedPrecision(cfg.precision, device)
    state = checkpoint_state(run, data, device, passes.processes) if run.epoch else {}
    modalities = run.model.modalities
    while run.epoch < cfg.epochs and not run.stopped_early:
        epoch = run.epoch + 1
        began = time.perf_counter()
        bar = progress_bar(len(modalities) * steps, f"{cfg.method} epoch {epoch}/{cfg.epochs}{passes.label}", progress)
        stats = {}
        try:
            # DCHML: 2a the image net (text side from the stored text outputs), 2b the reverse;
            # a single-modality method: its one pass.
            for modality in modalities:
                order = torch.randperm(n_fit, generator=run.generator)
                stats[modality] = passes.run_pass(PassInputs(
                    modality, passes.net(run, modality), run.optimizers[modality], pass_inputs(data, cfg, modality),
                    run.fit_idx, order, run.stored[modality], method.pass_loss(run, modality), cfg.batch_size,
                    device, lambda step, e=epoch: learning_rate(cfg, e, step, steps), bar, precision,
                    method.terms))
        finally:
            if bar is not None:
                bar.close()
        method.after_passes(run)  # DCHML: 2c
        run.epoch = epoch
        record = {"epoch": epoch, "seconds": passes.epoch_seconds(time.perf_counter() - began),
                  **{f"loss_{m}": stats[m]["loss"] for m in modalities},
                  "lr": learning_rate(cfg, epoch, steps, steps), **method.objective(run),
                  **{f"val_{task}_map": None for task in method.selection_tasks(modalities)}}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            _validate(data, run, record, device, passes)
        run.history.append(record)
        state = checkpoint_state(run, data, device, passes.processes)
        passes.commit(state, checkpoint_path)
        log(epoch_line(cfg, record))
        if run.stopped_early:
            log(f"stopping early: no better validation MAP in {run.stale} evaluations since epoch "
                f"{run.best['epoch']}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    passes.finish(run)
    selection = selection_summary(run)
    if run.best and cfg.select == "best":
        run.model.load_state_dict(run.best["model"])
    log(selection["reason"])
    run.model.eval()
    return TrainResult(model=run.model, history=run.history, proxy_diagnostics=run.diag, state=state,
                       selection=selection)


def _validate(data, run: RunState, record: dict, device, passes) -> None:
    """Validation MAP of this epoch; updates the best epoch and the early-stopping count."""
    if run.val_idx.numel() == 0:
        return
    cfg = run.cfg
    tasks = get_method(cfg.method).selection_tasks(run.model.modalities)
    scores = retrieval_scores(run.model, data, run.val_idx, run.fit_idx, topk=min(cfg.topk, run.fit_idx.numel()),
                              device=device, tasks=tasks)
    for task in tasks:
        record[f"val_{task}_map"] = scores[f"{task}_map"]
    score = sum(scores[f"{task}_map"] for task in tasks) / len(tasks)
    better = passes.agree(not run.best or score > run.best["score"])
    if better:
        run.best = {"epoch": run.epoch, "score": score,
                    "model": {k: v.detach().to("cpu").clone() for k, v in run.model.state_dict().items()}}
        run.stale = 0
    else:
        run.stale += 1
    run.stopped_early = cfg.patience > 0 and run.stale >= cfg.patience and run.epoch < cfg.epochs


def runtime_differences(saved: dict, processes: int) -> list[str]:
    """Why a resumed run will not equal an uninterrupted one bit for bit: the settings outside the
    config that change floating-point results and differ from the ones it ran with."""
    out = []
    threads = torch.get_num_threads()
    if saved.get("threads") not in (None, threads):
        out.append(f"the run used {saved['threads']} torch thread(s), this process has {threads}: sums are reduced "
                   "in another order, so from here on it differs from an uninterrupted run in the last bits (resume "
                   f"with --threads {saved['threads']} to match)")
    if saved.get("processes") not in (None, processes):
        out.append(f"the run trained on {saved['processes']} process(es), this resume on {processes}: gradients "
                   "are summed in another order, so results differ from an uninterrupted run in the last bits")
    return out


def selection_summary(run: RunState) -> dict:
    """Which epoch's model is kept and why, in words for the log and the report."""
    cfg, last = run.cfg, run.epoch
    n_val = int(run.val_idx.numel())
    if not run.best or cfg.select == "last":
        why = ("no validation slice (val_fraction 0 or too few training items)" if not n_val
               else "select='last'")
        return {"kept_epoch": last, "last_epoch": last, "rule": "last", "validation_items": n_val,
                "validation_map": None, "stopped_early": False,
                "reason": f"kept the last epoch ({last}): {why}"}
    best = run.best["epoch"]
    reason = (f"kept epoch {best} of {last}: best mean validation MAP {run.best['score']:.4f} on {n_val} held-out "
              f"training items")
    if run.stopped_early:
        reason += f"; stopped early after {run.stale} evaluations without improvement"
    return {"kept_epoch": best, "last_epoch": last, "rule": "best validation MAP", "validation_items": n_val,
            "validation_map": run.best["score"], "stopped_early": run.stopped_early, "reason": reason}


def epoch_line(cfg, record) -> str:
    from .methods import TASK_NAMES

    passes = ", ".join(f"{key[5:]} pass {value:.4f}" for key, value in record.items() if key.startswith("loss_"))
    line = (f"{cfg.method} epoch {record['epoch']}/{cfg.epochs}: objective {record['objective']:.4f} "
            f"({passes}), {record['seconds']:.1f}s")
    validated = [(TASK_NAMES[key[4:-4]], value) for key, value in record.items()
                 if key.startswith("val_") and key.endswith("_map") and value is not None]
    if validated:
        line += ", validation MAP " + " ".join(f"{name} {value:.4f}" for name, value in validated)
    return line


def checkpoint_state(run: RunState, data, device, processes: int = 1) -> dict:
    """The checkpoint of the run after its latest epoch. `model` holds the weights to use (the
    selected epoch's), `model_last` the latest weights when they differ (what a resume continues)."""
    rng = {"generator": run.generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    cpu = torch.device("cpu")
    latest = {k: v.detach().to(cpu).clone() for k, v in run.model.state_dict().items()}
    keep_best = run.best and run.cfg.select == "best" and run.best["epoch"] != run.epoch
    state = {
        "epoch": run.epoch,
        "config": run.cfg.to_dict(),
        "model_spec": run.model.spec(),
        "model": run.best["model"] if keep_best else latest,
        **{f"optim_{m}": _to_cpu(opt.state_dict()) for m, opt in run.optimizers.items()},
        **({"codes_c": run.codes_c.to(cpu).clone()} if run.codes_c is not None else {}),
        **{f"stored_{m}": stored.to(cpu).clone() for m, stored in run.stored.items()},
        "rng": rng,
        # Settings outside the config that change numbers: a resume restores or reports them.
        "runtime": {"threads": torch.get_num_threads(), "processes": processes},
        "backbone": dict(run.backbone),
        "history": [dict(r) for r in run.history],
        "phnet": dict(run.diag),
        "data": {"name": data.name, "n": int(data.n), "train_idx": run.train_idx.clone(), **run.identity,
                 "encoders": dict(data.encoders or {})},
        "split": {"fit_idx": run.fit_idx.clone(), "val_idx": run.val_idx.clone()},
        "selection": {"epoch": run.best.get("epoch", 0), "score": run.best.get("score"), "stale": run.stale,
                      "stopped_early": run.stopped_early, "summary": selection_summary(run)},
    }
    if keep_best:
        state["model_last"] = latest
    return state


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _resumed_config(state: dict, requested: TrainConfig) -> TrainConfig:
    saved = TrainConfig.from_dict(state["config"])
    if requested.epochs < int(state["epoch"]):
        raise ValueError(f"epochs={requested.epochs} but the checkpoint already completed {state['epoch']} epochs")
    return dataclasses.replace(saved, epochs=requested.epochs, eval_every=requested.eval_every,
                               device=requested.device)


def _check_same_data(state: dict, data, path: str) -> None:
    why = difference(state.get("data", {}), data)
    if why:
        raise CheckpointError(f"checkpoint {path} cannot be resumed on this data: {why}; "
                              "resume with the data and --seed it was trained with")
