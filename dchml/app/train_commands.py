"""`dchml train`: train one model (or one per code length) into an output folder."""
from __future__ import annotations

import os
import sys

from .arguments import UsageError, command_line, config_from_args, load_data, log_for


def cmd_train(args, argv):
    from ..distributed import training as distributed_train
    from ..io.run_dir import CHECKPOINT, check_output_dir, claim, refuse_if_in_use
    from ..method.config import recipe_settings

    bits_list = args.bits or [None]
    several = len(bits_list) > 1
    if distributed_train.is_main_process():  # other torchrun ranks share rank 0's folder
        refuse_if_in_use(args.out)
    if args.resume:
        check_output_dir(args.out, resume=True, several=several)
    plans, recorded = [], None
    for bits in bits_list:
        out_dir = os.path.join(args.out, f"bits{bits}") if several else args.out
        resume = args.resume and os.path.isfile(os.path.join(out_dir, CHECKPOINT))
        fixed = {} if bits is None else {"bits": bits}
        if resume:
            base, source, runtime = _resumed(out_dir)
            recorded = recorded or source
            _restore_threads(args, runtime)
            cfg = config_from_args(args, base, **fixed)
            _check_resume_unchanged(cfg, base)
        else:
            cfg = config_from_args(args, {**recipe_settings(args.recipe, args.method or "dchml"),
                                          **_protocol_topk(args)}, **fixed)
        plans.append((cfg, out_dir, resume))
    check_before_training(plans[0][0], args.out)
    if not distributed_train.is_main_process():  # another rank of a torchrun job: rank 0 holds --out
        return _train_into(args, argv, plans, recorded, several)
    with claim(args.out, resume=args.resume, force=args.force, several=several):
        return _train_into(args, argv, plans, recorded, several)


def _protocol_topk(args) -> dict:
    """MAP@K's K of the data's protocol (--protocol, or the one its format implies), unless --topk is given."""
    from ..data.protocols import default_protocol, get_protocol

    name = getattr(args, "protocol", None) or default_protocol(args.data, args.format)
    if name is None:
        return {}
    try:
        return {"topk": get_protocol(name).topk}
    except ValueError as exc:
        raise UsageError(f"--protocol {name}: {exc}") from None


def _resumed(out_dir: str):
    """The interrupted run's config and data record: flags not given on the command line keep
    its values."""
    from ..method.checkpoint import load_checkpoint
    from ..io.run_dir import CHECKPOINT

    saved = load_checkpoint(os.path.join(out_dir, CHECKPOINT))
    return saved["config"], saved["data"].get("source"), saved.get("runtime") or {}


def _restore_threads(args, runtime: dict) -> None:
    """A resume runs on the torch thread count the run used (it changes the order of float sums),
    unless --threads says otherwise (then the training log says what that means)."""
    import torch

    saved = runtime.get("threads")
    if args.threads is None and saved and saved != torch.get_num_threads():
        torch.set_num_threads(saved)
        if log_for(args):
            log_for(args)(f"resuming with the run's {saved} torch thread(s), so it continues bit for bit")


def _check_resume_unchanged(cfg, base: dict) -> None:
    from ..method.config import TrainConfig

    saved = TrainConfig.from_dict(base).to_dict()  # a field the checkpoint predates has its default value
    changed = sorted(k for k, v in cfg.to_dict().items()
                     if k not in ("epochs", "eval_every", "device") and saved.get(k) != v)
    if changed:
        raise UsageError(f"--resume continues the run as it was configured; cannot change {', '.join(changed)} "
                         "(only --epochs, --eval-every and --device may differ)")


def check_before_training(cfg, out):
    """Checks that need no data: the device and that --out can be written (the arguments'
    ranges were checked by TrainConfig)."""
    from ..io.run_dir import check_writable
    from ..method.config import resolve_device

    resolve_device(cfg.device)
    check_writable(out)


def _train_into(args, argv, plans, recorded, several):
    from .experiment import run_experiment, write_json
    from .report import write_report

    data = load_data(args, plans[0][0].seed, recorded, plans[0][0].image_size)
    plans = [(_check_fits_data(cfg, data, args, resume), out_dir, resume) for cfg, out_dir, resume in plans]
    _warn_constant_features(data)
    runs = {}
    for cfg, out_dir, resume in plans:
        if several and log_for(args):
            log_for(args)(f"[{cfg.bits} bits] training {cfg.method} into {out_dir}")
        metrics, _ = run_experiment(data, cfg, out_dir, resume=resume, force=args.force,
                                    progress=None if not args.quiet else False, log=log_for(args),
                                    command=command_line(argv), nproc=args.nproc, lock=several)
        if metrics is None:  # a rank > 0 of a torchrun job: rank 0 writes the outputs
            return
        runs[f"{cfg.method} {cfg.bits}"] = metrics
        if not several:
            write_report(out_dir, {cfg.method: metrics},
                         title=f"dchml: {cfg.method.upper()} at {cfg.bits} bits on {data.name}")
    if several:
        write_json({"bits": [m["bits"] for m in runs.values()], "runs": runs}, os.path.join(args.out, "metrics.json"))
        method = plans[0][0].method.upper()
        write_report(args.out, runs, title=f"dchml: {method} at " + ", ".join(str(m["bits"]) for m in runs.values())
                     + f" bits on {data.name}")
    for metrics in runs.values():
        print(summary_line(metrics))
    print(f"report: {os.path.join(args.out, 'report.md')}")


def summary_line(metrics: dict) -> str:
    """One line per run: its MAP on the tasks it is judged on, the linear hasher's, the kept epoch."""
    from ..method.methods import TASK_NAMES
    from .report import main_tasks

    tasks = main_tasks(metrics)
    linear = metrics["baselines"].get("linear", {})
    scores = "  ".join(f"{TASK_NAMES[t]} {metrics[f'{t}_map']:.4f}" for t in tasks)
    versus = ("; linear hasher " + " / ".join(f"{linear[f'{t}_map']:.4f}" for t in tasks)
              if all(f"{t}_map" in linear for t in tasks) else "")
    return (f"{metrics['method']} {metrics['bits']} bits: MAP@{metrics['topk']} {scores}{versus} (kept epoch "
            f"{metrics['selection']['kept_epoch']} of {metrics['epochs']}, {metrics['seconds_per_epoch']:.2f} s/epoch)")


def _warn_constant_features(data) -> None:
    from ..data.dataset import constant_modalities

    same = constant_modalities(data, data.train_idx)
    if same:
        print(f"dchml train: warning: {' and '.join(same)} features are the same for every training item: the codes "
              "cannot tell items apart, so any MAP is chance's", file=sys.stderr, flush=True)


def _warn_random_backbone(cfg, data, resume) -> None:
    """A pixel run whose backbone would start from random weights because none were found says so
    before training, also under --quiet (asking for them with --image-weights random is quiet)."""
    from ..method.backbones import find_weights, get_spec

    if resume or cfg.image_weights == "random" or not data.image_is_pixels:
        return
    if cfg.modality not in (None, "image") or find_weights(cfg.image_backbone, cfg.image_weights):
        return
    print(f"dchml train: warning: no {get_spec(cfg.image_backbone).title} weights found (--image-weights PATH, or "
          f"the weights cache): the backbone starts from RANDOM weights, which the report and metrics.json record",
          file=sys.stderr, flush=True)


def _check_fits_data(cfg, data, args, resume):
    """Refuse a method the data cannot serve before anything is trained; say which side a
    single-modality method trains when the data has both."""
    from ..method.methods import data_modalities, get_method
    from ..method.train import resolve_modality

    resolved = resolve_modality(data, cfg)
    method = get_method(cfg.method)
    _warn_random_backbone(resolved, data, resume)
    if not method.cross_modal and cfg.modality is None and len(data_modalities(data)) > 1 and not resume:
        other = "text" if resolved.modality == "image" else "image"
        print(f"{method.title} trains on the {resolved.modality} side of {data.name}, which has both; --modality "
              f"{other} trains on its {other} side", file=sys.stderr, flush=True)
    return resolved
