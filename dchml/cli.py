"""The `dchml` command line: train, eval, encode, search, demo, features.

A user's mistake (bad path, bad flag value, corrupt file, existing output) prints ONE line
`dchml <command>: error: ...` on stderr and exits with status 2, no traceback (set DCHML_DEBUG=1
to see the traceback). Ctrl-C exits with 130 and says how to resume.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import numpy as np

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake on the command line, reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the whole usage block: keep it to one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# One CPU thread by default for the demo: on a shared 2-core machine, OpenMP's spin-waiting makes
# two threads 5-20x slower per epoch as soon as another process is busy (measured 5-25 s/epoch vs
# 1.2-1.8 s/epoch on one thread); unloaded, two threads are only ~30% faster (0.8 vs ~1.1 s).
DEMO_THREADS = 1


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _bits_list(text):
    """One code length or a comma-separated list of them, e.g. 16,32,64."""
    values = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected code lengths like 64 or 16,32,64, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"code lengths repeat in {text!r}")
    return values


def _fraction(text):
    value = _nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _add_data_args(p, default_help=None, required=False):
    p.add_argument("--data", default=None, required=required,
                   help="'synthetic' (built-in set) or a path: .mat (v5 / v7.3), .npz, a text-list folder, "
                        "or an index.mat / caption.mat / label.mat folder"
                        + (f" (default: {default_help})" if default_help else ""))
    p.add_argument("--format", default="auto", choices=["auto", "mat", "txt", "npz", "indexmat"],
                   help="data format (default: auto)")
    p.add_argument("--drop-unlabeled", action="store_true",
                   help="drop items without any label (the paper's protocol) instead of refusing the file")
    _add_image_data_args(p)


def _add_image_data_args(p):
    from .data.images import DEFAULT_WORKERS
    from .data.vocab import DEFAULT_MAX_TERMS, WEIGHTINGS

    p.add_argument("--workers", type=_nonneg_int, default=DEFAULT_WORKERS,
                   help=f"processes that decode image files (default {DEFAULT_WORKERS}; 0: decode in this process)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="decode every image file once at load and drop the items whose image is missing or "
                        "unreadable (counted in the report) instead of stopping with an error")
    p.add_argument("--vocab-size", type=_positive_int, default=DEFAULT_MAX_TERMS,
                   help=f"raw captions: keep this many most frequent words of the training items (default {DEFAULT_MAX_TERMS})")
    p.add_argument("--text-weighting", choices=WEIGHTINGS, default="binary",
                   help="raw captions: bag-of-words values (default binary)")


def _add_train_args(p, *, demo=False):
    from .normalize import KINDS
    from .train import OPTIMIZERS, PAPER_RECIPE, RECIPES, SCHEDULES, SELECTIONS, TrainConfig

    d = TrainConfig()
    paper = lambda name: f"; --recipe paper: {PAPER_RECIPE[name]}" if name in PAPER_RECIPE else ""  # noqa: E731
    p.add_argument("--recipe", choices=list(RECIPES), default="default",
                   help="training recipe: dchml's default (chosen on a panel of data sets, docs/method.md) or the "
                        "paper's literal settings (plain SGD, lr 1e-3, 120 epochs, features as given, last epoch)")
    p.add_argument("--bits", type=_positive_int if demo else _bits_list, default=None,
                   help=f"code length (default {d.bits})" + ("" if demo else "; several, e.g. 16,32,64, train one "
                                                            "model each into DIR/bitsN and write one report"))
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"at most this many outer iterations of Algorithm 1 (default {d.epochs}{paper('epochs')})")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="seed of the data split, init and shuffles (default 0)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"default {d.batch_size}")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"default {d.optimizer}{paper('optimizer')}")
    p.add_argument("--lr", type=_nonneg_float, default=None, help=f"peak learning rate (default {d.lr}{paper('lr')})")
    p.add_argument("--momentum", type=_nonneg_float, default=None, help=f"SGD momentum (default {d.momentum}"
                                                                          f"{paper('momentum')})")
    p.add_argument("--weight-decay", type=_nonneg_float, default=None, help=f"default {d.weight_decay}")
    p.add_argument("--warmup-epochs", type=_nonneg_int, default=None, help=f"linear warm-up (default {d.warmup_epochs})")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=f"learning-rate schedule after the warm-up (default {d.schedule}{paper('schedule')})")
    p.add_argument("--image-norm", choices=KINDS, default=None,
                   help=f"input normalisation of image features (default {d.image_norm}{paper('image_norm')})")
    p.add_argument("--text-norm", choices=KINDS, default=None,
                   help=f"input normalisation of text (default {d.text_norm}{paper('text_norm')})")
    p.add_argument("--val-fraction", type=_fraction, default=None,
                   help=f"validation slice of the training items that picks the kept epoch (default {d.val_fraction}, "
                        f"at most {d.val_max} items; 0: keep the last epoch)")
    p.add_argument("--patience", type=_nonneg_int, default=None,
                   help=f"stop after this many validations without improvement (default {d.patience}; 0: never)")
    p.add_argument("--select", choices=SELECTIONS, default=None, help=f"kept epoch (default {d.select})")
    for flag, attr in (("--eta", "eta"), ("--mu", "mu"), ("--lambda", "lam"), ("--gamma", "gamma"),
                       ("--alpha", "alpha"), ("--beta", "beta")):
        p.add_argument(flag, dest=attr, type=_nonneg_float, default=None, help=f"default {getattr(d, attr)}")
    p.add_argument("--proxy-steps", type=_positive_int, default=None, help=f"PHNet step limit (default {d.proxy_steps})")
    p.add_argument("--eval-every", type=_positive_int, default=None,
                   help=f"validation MAP every N epochs (default {d.eval_every})")
    p.add_argument("--topk", type=_positive_int, default=None, help=f"MAP@K cut-off (default {d.topk})")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    if not demo:
        _add_finetune_args(p)
    _add_threads_arg(p, DEMO_THREADS if demo else None)
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out directory")


def _add_finetune_args(p):
    from .backbones import BACKBONES
    from .precision import PRECISIONS

    p.add_argument("--image-backbone", choices=list(BACKBONES), default=None,
                   help="network on image pixels (default alexnet, the paper's); pixel data only")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="side of the square image input (default 224); image files are resized to it")
    p.add_argument("--backbone-lr-scale", type=_nonneg_float, default=None,
                   help="the backbone's learning rate = --lr x this (default 1; 0 freezes the backbone)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 (default), or mixed precision on CUDA: auto (bf16 where supported), bf16, fp16")
    p.add_argument("--augment", action="store_true", default=None,
                   help="random crop + horizontal flip of training images streamed from files")


def _add_threads_arg(p, default=None):
    p.add_argument("--threads", type=_positive_int, default=default,
                   help="CPU threads for torch (default: " + (str(default) if default else "torch's default, all cores") + ")")


_CONFIG_FLAGS = ("bits", "epochs", "seed", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                 "warmup_epochs", "schedule", "image_norm", "text_norm", "val_fraction", "patience", "select",
                 "eta", "mu", "lam", "gamma", "alpha", "beta", "proxy_steps", "eval_every", "topk", "device",
                 "image_backbone", "image_size", "backbone_lr_scale", "precision", "augment")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dchml", description="Deep cross-modal hashing (DCHML) with the margin-dynamic-softmax loss.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (Algorithm 1), evaluate it and write a report")
    _add_data_args(p, "synthetic; with --resume, the data the run was started on")
    p.add_argument("--method", choices=["dchml", "dchml_q", "dchml_p"], default=None, help="default dchml")
    _add_train_args(p)
    p.add_argument("--image-weights", default=None,
                   help="local state dict of the image backbone, or 'random' (pixel data only; default: the "
                        "weights cache, $DCHML_CACHE or ~/.cache/dchml, else random)")
    p.add_argument("--out", required=True, help="output directory (metrics.json, checkpoint.pt, report.md, PNGs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument("--nproc", type=_positive_int, default=None,
                   help="train on N local processes (torch.distributed: Gloo on CPU, NCCL with --device cuda); "
                        "under torchrun the launcher's processes are used instead")

    p = sub.add_parser("eval", help="MAP@K of a checkpoint on a data set")
    p.add_argument("--checkpoint", required=True)
    _add_data_args(p, "the data the checkpoint was trained on")
    p.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed of the data split (default: the seed the checkpoint was trained with)")
    p.add_argument("--topk", type=_positive_int, default=5000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the scores (and curves) to this JSON file")
    _add_threads_arg(p)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    p = sub.add_parser("encode", help="encode images, image features or texts (.npy, or raw .txt) to packed codes")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--modality", required=True, choices=["image", "text"])
    p.add_argument("--input", required=True,
                   help=".npy: (n, 3, H, W) uint8 pixels, (n, d) image features or (n, d) BoW; or .txt: one raw "
                        "caption per line (text), one image file per line (image)")
    p.add_argument("--workers", type=_nonneg_int, default=2, help="processes that decode image files (default 2)")
    p.add_argument("--out", required=True, help="output .npy of packed uint8 codes (n, ceil(bits/8))")
    _add_threads_arg(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    p = sub.add_parser("search", help="top-k cross-modal search of a data set's database with the Hamming index")
    p.add_argument("--checkpoint", required=True)
    _add_data_args(p, "the data the checkpoint was trained on")
    p.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed of the data split (default: the seed the checkpoint was trained with)")
    p.add_argument("--query-modality", required=True, choices=["image", "text"],
                   help="modality of the queries; the database is the other modality")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--queries", help="comma-separated positions in the data set's query split, e.g. 0,1,2")
    group.add_argument("--input", help=".npy of raw query items of --query-modality")
    p.add_argument("-k", "--k", type=_positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the results as JSON here instead of printing them")
    _add_threads_arg(p)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    p = sub.add_parser("features", help="run frozen backbones once over a data set and write a features .npz "
                                        "for `dchml train --data`")
    _add_data_args(p, required=True)
    from .backbones import BACKBONES
    from .features import DEFAULT_CHUNK_ROWS, TEXT_BACKBONES
    from .precision import PRECISIONS

    p.add_argument("--image-backbone", choices=list(BACKBONES), default="alexnet", help="default alexnet")
    p.add_argument("--image-weights", default=None,
                   help="local state dict of the backbone, or 'random' (tests only); default: the weights cache")
    p.add_argument("--image-size", type=_positive_int, default=224, help="side of the square image input (default 224)")
    p.add_argument("--text-backbone", choices=TEXT_BACKBONES, default="bow",
                   help="bow: the data set's bag-of-words rows (captions through the vocabulary); clip: CLIP's "
                        "text tower on the raw captions (default bow)")
    p.add_argument("--text-weights", default=None, help="open_clip state dict for --text-backbone clip")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the data split (default 0)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--chunk-rows", type=_positive_int, default=DEFAULT_CHUNK_ROWS,
                   help=f"items per saved chunk: the unit of resuming (default {DEFAULT_CHUNK_ROWS})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="mixed precision on CUDA (default fp32)")
    p.add_argument("--out", required=True, help="output .npz features file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads_arg(p)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    p = sub.add_parser("demo", help="DCHML vs DCHML_P on the synthetic set at 64 bits, one comparison report")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    _add_train_args(p, demo=True)
    return parser


# --- commands ------------------------------------------------------------------------------------


def _log(args):
    return None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))


def _load_data(args, seed, recorded=None, image_size=224):
    """--data (default: `recorded`, a checkpoint's record of its data, else the synthetic set)."""
    from .data import UnlabeledItemsError, load_dataset, load_recorded

    try:
        if args.data is None and recorded is not None:
            path = recorded["path"] if recorded.get("abspath") is None else recorded["abspath"]
            if recorded.get("format") != "synthetic" and not os.path.exists(path):
                raise UsageError(f"the checkpoint's data {recorded['path']} ({path}) no longer exists; pass --data")
            print(f"using the checkpoint's data: {path} ({recorded.get('format')}, seed {seed}"
                  f"{', drop unlabeled' if recorded.get('drop_unlabeled') else ''}); --data overrides",
                  file=sys.stderr, flush=True)
            return load_recorded({**recorded, "seed": seed})
        source = "synthetic" if args.data is None else args.data
        if source != "synthetic" and not os.path.exists(source):
            raise UsageError(f"--data {source}: no such file or directory")
        return load_dataset(source, args.format, seed=seed, drop_unlabeled=args.drop_unlabeled,
                            image_size=image_size, image_workers=args.workers,
                            skip_bad_images=args.skip_bad_images, vocab_size=args.vocab_size,
                            text_weighting=args.text_weighting)
    except UnlabeledItemsError as exc:
        raise exc.with_option("--drop-unlabeled") from None


def _config_from_args(args, base: dict, **fixed):
    from .train import TrainConfig

    values = dict(base)
    for name in _CONFIG_FLAGS + ("method",):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    values.update(fixed)
    if getattr(args, "image_weights", None):
        if args.image_weights != "random" and not os.path.isfile(args.image_weights):
            raise UsageError(f"--image-weights {args.image_weights}: no such file")
        values["image_weights"] = args.image_weights
    return TrainConfig.from_dict(values)


def _command_line(argv) -> str:
    return "dchml " + " ".join(shlex.quote(a) for a in argv)


def _resumed(out_dir: str):
    """The interrupted run's config and data record: flags not given on the command line keep
    its values."""
    from .checkpoint import load_checkpoint
    from .run_dir import CHECKPOINT

    saved = load_checkpoint(os.path.join(out_dir, CHECKPOINT))
    return saved["config"], saved["data"].get("source")


def _check_resume_unchanged(cfg, base: dict) -> None:
    from .train import TrainConfig

    saved = {**TrainConfig().to_dict(), **base}  # a field the checkpoint predates has its default value
    changed = sorted(k for k, v in cfg.to_dict().items()
                     if k not in ("epochs", "eval_every", "device") and saved.get(k) != v)
    if changed:
        raise UsageError(f"--resume continues the run as it was configured; cannot change {', '.join(changed)} "
                         "(only --epochs, --eval-every and --device may differ)")


def cmd_train(args, argv):
    from . import distributed_train
    from .run_dir import CHECKPOINT, check_output_dir, claim, refuse_if_in_use
    from .train import RECIPES

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
            base, source = _resumed(out_dir)
            recorded = recorded or source
            cfg = _config_from_args(args, base, **fixed)
            _check_resume_unchanged(cfg, base)
        else:
            cfg = _config_from_args(args, RECIPES[args.recipe], **fixed)
        plans.append((cfg, out_dir, resume))
    _preflight(plans[0][0], args.out)
    if not distributed_train.is_main_process():  # another rank of a torchrun job: rank 0 holds --out
        return _train_into(args, argv, plans, recorded, several)
    with claim(args.out, resume=args.resume, force=args.force, several=several):
        return _train_into(args, argv, plans, recorded, several)


def _preflight(cfg, out):
    """Checks that need no data: the device and that --out can be written (the arguments'
    ranges were checked by TrainConfig)."""
    from .run_dir import check_writable
    from .train import resolve_device

    resolve_device(cfg.device)
    check_writable(out)


def _train_into(args, argv, plans, recorded, several):
    from .experiment import run_experiment, write_json
    from .report import write_report

    data = _load_data(args, plans[0][0].seed, recorded, plans[0][0].image_size)
    runs = {}
    for cfg, out_dir, resume in plans:
        if several and _log(args):
            _log(args)(f"[{cfg.bits} bits] training {cfg.method} into {out_dir}")
        metrics, _ = run_experiment(data, cfg, out_dir, resume=resume, force=args.force,
                                    progress=None if not args.quiet else False, log=_log(args),
                                    command=_command_line(argv), nproc=args.nproc, lock=several)
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
        linear = metrics["baselines"].get("linear", {})
        versus = (f"; linear hasher {linear['i2t_map']:.4f} / {linear['t2i_map']:.4f}" if "i2t_map" in linear else "")
        print(f"{metrics['method']} {metrics['bits']} bits: MAP@{metrics['topk']} I->T {metrics['i2t_map']:.4f}  "
              f"T->I {metrics['t2i_map']:.4f}{versus} (kept epoch {metrics['selection']['kept_epoch']} of "
              f"{metrics['epochs']}, {metrics['seconds_per_epoch']:.2f} s/epoch)")
    print(f"report: {os.path.join(args.out, 'report.md')}")


def _check_output_file(path, force, what="--out"):
    if os.path.exists(path) and not force:
        raise UsageError(f"{what} {path} already exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: directory {directory} is not writable")


def _load_model(args):
    """(checkpoint dict, model on --device, device)."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .train import resolve_device

    device = resolve_device(args.device)
    state = load_checkpoint(args.checkpoint)
    return state, model_from_checkpoint(state).to(device), device


def _checkpoint_data(args, state):
    """--data, or the data the checkpoint was trained on; split seed --seed or the training seed."""
    recorded = state["data"].get("source")
    if args.data is None and recorded is None:
        raise UsageError(f"checkpoint {args.checkpoint} does not record where its data came from (it was "
                         "trained on data built in memory); pass --data")
    seed = args.seed
    if seed is None:
        seed = recorded["seed"] if recorded is not None else int(state["config"]["seed"])
    return _load_data(args, seed, recorded, state["model_spec"].get("image_size", 224)), seed


def _refuse_trained_queries(state, data, rows, seed, what):
    """Queries that are training items of the checkpoint inflate every score: refuse them."""
    from .data.fingerprint import data_fingerprint, trained_items

    if "fingerprint" not in state["data"]:
        return  # written before data fingerprints existed: the overlap cannot be known
    count = trained_items(state["data"], data, rows)
    if count:
        saved = state["data"]
        if saved["fingerprint"]["content"] == data_fingerprint(data)["content"]:
            trained_seed = (saved.get("source") or {}).get("seed", state["config"]["seed"])
            hint = f"use the split it was trained with (--seed {trained_seed})"
        else:
            hint = f"this file holds items of its training data {saved.get('name')!r} (matched by content)"
        raise UsageError(f"{count} of the {len(rows)} {what} ({data.name}, split seed {seed}) are items the "
                         f"checkpoint was trained on, which would inflate the scores; {hint}")


def _checkpoint_model_and_data(args):
    """eval and search: --out checked, the checkpoint's model and the data it is scored on."""
    if args.out:
        _check_output_file(args.out, args.force)
    state, model, device = _load_model(args)
    data, seed = _checkpoint_data(args, state)
    _check_model_fits_data(model, data)
    return state, model, device, data, seed


def cmd_eval(args, argv):
    from .data.fingerprint import data_fingerprint
    from .outputs import write_json
    from .train import evaluate

    state, model, device, data, seed = _checkpoint_model_and_data(args)
    _refuse_trained_queries(state, data, data.query_idx, seed, "queries")
    scores = evaluate(model, data, topk=args.topk, curves=bool(args.out), device=device)
    print(f"MAP@{args.topk} I->T {scores['i2t_map']:.4f}  T->I {scores['t2i_map']:.4f}")
    if args.out:
        write_json({"bits": model.bits, **scores, "checkpoint": args.checkpoint, "data": data.name, "seed": seed,
                    "data_fingerprint": data_fingerprint(data)}, args.out)


def _check_model_fits_data(model, data):
    spec = model.spec()
    problems = []
    if spec["n_labels"] != data.n_labels:
        problems.append(f"{data.n_labels} labels (model: {spec['n_labels']})")
    if spec["text_dim"] != data.text_dim:
        problems.append(f"{data.text_dim}-d text (model: {spec['text_dim']})")
    if (spec["image_dim"] is None) != bool(data.image_is_pixels) or (
            spec["image_dim"] is not None and spec["image_dim"] != data.image_dim):
        problems.append(f"image {'pixels' if data.image_is_pixels else data.image_dim} "
                        f"(model: {'pixels' if spec['image_dim'] is None else spec['image_dim']})")
    if problems:
        raise UsageError(f"the checkpoint does not fit --data {data.name}: it has " + ", ".join(problems))


def _load_npy(path, what):
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UsageError(f"{what} {path} is not a readable .npy file ({type(exc).__name__})") from None
    if not isinstance(array, np.ndarray):
        raise UsageError(f"{what} {path} holds several arrays (.npz); give one .npy array")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.number):
        raise UsageError(f"{what} {path} has dtype {array.dtype}; expected numbers")
    if array.ndim == 1 or (array.ndim == 3):
        array = array[None]  # one item
    return array


def _as_model_input(array, model, modality, what):
    import torch

    spec = model.spec()
    if modality == "image" and spec["image_dim"] is None:
        if array.ndim != 4 or array.shape[1] != 3 or array.dtype != np.uint8:
            raise UsageError(f"{what}: the model takes uint8 images (n, 3, H, W), got {array.dtype} {array.shape}")
        return torch.from_numpy(np.ascontiguousarray(array))
    dim = spec["image_dim"] if modality == "image" else spec["text_dim"]
    if array.ndim != 2 or array.shape[1] != dim:
        raise UsageError(f"{what}: the model's {modality} net takes (n, {dim}) arrays, got shape {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UsageError(f"{what} holds NaN or infinite values")
    return torch.from_numpy(array)


def cmd_encode(args, argv):
    from .encoding import encode
    from .outputs import write_atomic

    _check_output_file(args.out, args.force)
    state, model, device = _load_model(args)
    if args.input.lower().endswith(".txt"):
        batch = _raw_input(args, model, state.get("data", {}).get("encoders") or {}, device)
    else:
        batch = _as_model_input(_load_npy(args.input, "--input"), model, args.modality, f"--input {args.input}")
    codes = encode(model, batch, args.modality, device=device).numpy()
    write_atomic(args.out, lambda f: np.save(f, codes))
    print(f"wrote {codes.shape[0]} {model.bits}-bit {args.modality} codes, packed uint8 {codes.shape}, to {args.out}")


def _raw_input(args, model, encoders, device):
    from . import raw_inputs

    if not os.path.isfile(args.input):
        raise UsageError(f"--input {args.input}: no such file")
    if args.modality == "text":
        return raw_inputs.text_rows(encoders, args.input, device=device,
                                    log=lambda message: print(message, file=sys.stderr))
    return raw_inputs.image_rows(encoders, model.spec(), args.input, device=device, workers=args.workers)


def cmd_features(args, argv):
    from .features import extract_features

    _check_output_file(args.out, args.force)
    if args.image_weights not in (None, "random") and not os.path.isfile(args.image_weights):
        raise UsageError(f"--image-weights {args.image_weights}: no such file")
    data = _load_data(args, args.seed, image_size=args.image_size)
    if not data.image_is_pixels:
        raise UsageError(f"--data {args.data} holds {data.image_dim}-d image features already; "
                         "`dchml features` needs image files or pixels")
    partial = args.out + ".partial"
    try:
        summary = extract_features(data, args.out, image_backbone=args.image_backbone, image_weights=args.image_weights,
                                   text_backbone=args.text_backbone, text_weights=args.text_weights,
                                   device=args.device, batch_size=args.batch_size, chunk_rows=args.chunk_rows,
                                   precision=args.precision, image_size=args.image_size, progress=not args.quiet,
                                   log=None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    except KeyboardInterrupt:
        print(f"dchml features: interrupted; the finished chunks are kept in {partial}: run the same command again "
              "to continue", file=sys.stderr)
        raise SystemExit(130) from None
    skipped = len(summary["encoders"]["image"]["skipped"])
    print(f"wrote {summary['n']} items ({summary['image_dim']}-d {args.image_backbone} image features, "
          f"{summary['text_dim']}-d text) to {args.out}" + (f"; {skipped} unreadable images skipped" if skipped else ""))


def cmd_search(args, argv):
    import torch

    from . import HammingIndex
    from .encoding import encode

    state, model, device, data, seed = _checkpoint_model_and_data(args)
    db_modality = "text" if args.query_modality == "image" else "image"
    db_source = data.text if db_modality == "text" else data.image
    if args.queries is not None:
        try:
            positions = [int(p) for p in args.queries.split(",") if p.strip()]
        except ValueError:
            raise UsageError(f"--queries must be comma-separated integers, got {args.queries!r}") from None
        n_query = data.query_idx.numel()
        bad = [p for p in positions if not 0 <= p < n_query]
        if bad or not positions:
            raise UsageError(f"--queries must be positions in 0..{n_query - 1} of the query split, got {args.queries!r}")
        rows = data.query_idx[positions]
        _refuse_trained_queries(state, data, rows, seed, "queries asked for")
        source = data.image if args.query_modality == "image" else data.text
        queries = source[rows]
    else:
        # Items the user brings: one modality cannot identify an item (tag vectors repeat), so
        # they are not compared with the training items.
        positions = rows = None
        queries = _as_model_input(_load_npy(args.input, "--input"), model, args.query_modality, f"--input {args.input}")
    index = HammingIndex(model.bits)
    index.add(encode(model, db_source[data.retrieval_idx], db_modality, device=device))
    k = min(args.k, data.retrieval_idx.numel())
    if k < args.k:
        print(f"dchml search: warning: -k {args.k} is more than the {k} items of the database; "
              f"showing {k} per query", file=sys.stderr, flush=True)
    distances, positions_db = index.search(encode(model, queries, args.query_modality, device=device), k)
    distances, positions_db = torch.as_tensor(distances), torch.as_tensor(positions_db)
    results = []
    for qi in range(distances.shape[0]):
        item_rows = data.retrieval_idx[positions_db[qi]]
        # "query": the position asked for (--queries) or the --input row; "row": its data row
        entry = {"query": qi if positions is None else positions[qi],
                 "results": [{"row": int(r), "distance": int(dist)} for r, dist in zip(item_rows, distances[qi])]}
        if rows is not None:
            entry["row"] = int(rows[qi])
            shared = (data.labels[item_rows] @ data.labels[rows[qi]]) > 0
            for res, rel in zip(entry["results"], shared.tolist()):
                res["relevant"] = bool(rel)
        results.append(entry)
    if args.out:
        from .outputs import write_json

        write_json({"query_modality": args.query_modality, "database_modality": db_modality, "k": k,
                    "results": results}, args.out)
        print(f"wrote {len(results)} result lists to {args.out}")
        return
    for entry in results:
        items = "  ".join(f"{r['row']}(d={r['distance']}{'' if 'relevant' not in r else ', rel' if r['relevant'] else ''})"
                          for r in entry["results"])
        where = f"query {entry['query']}" if rows is None else f"query position {entry['query']} (row {entry['row']})"
        print(f"{args.query_modality} {where} -> {db_modality} rows: {items}")


def cmd_demo(args, argv):
    from .run_dir import claim
    from .train import RECIPES

    cfg = _config_from_args(args, RECIPES[args.recipe])  # exactly `dchml train`'s defaults
    _preflight(cfg, args.out)
    with claim(args.out, force=args.force):
        _demo_into(args, argv, cfg)


def _demo_into(args, argv, cfg):
    from .data import load_dataset
    from .experiment import run_experiment
    from .report import write_report

    data = load_dataset("synthetic", seed=cfg.seed)
    log = _log(args)
    runs = {}
    for method in ("dchml", "dchml_p"):
        method_cfg = _config_from_args(args, {**cfg.to_dict(), "method": method})
        if log:
            log(f"[demo] training {method} at {cfg.bits} bits for at most {cfg.epochs} epochs")
        runs[method], _ = run_experiment(data, method_cfg, os.path.join(args.out, method), force=args.force,
                                         progress=None if not args.quiet else False, log=log,
                                         command=_command_line(argv))
    notes = [f"Recipe: {args.recipe} ({cfg.optimizer}, lr {cfg.lr}, {cfg.schedule} schedule, at most {cfg.epochs} "
             "epochs, the epoch kept by validation MAP), the same defaults as `dchml train`.",
             f"torch threads: {__import__('torch').get_num_threads()} (the demo defaults to one: on a shared 2-core "
             "machine two threads are 5-20x slower as soon as another process is busy).",
             "Per-run outputs (checkpoint.pt, metrics.json) are in the dchml/ and dchml_p/ subdirectories."]
    path = write_report(args.out, runs, title="dchml demo: DCHML vs DCHML_P on the synthetic set", notes=notes)
    for method, m in runs.items():
        print(f"{method:8s} {m['bits']} bits: MAP@{m['topk']} I->T {m['i2t_map']:.4f}  T->I {m['t2i_map']:.4f}")
    print(f"report: {path}")


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "encode": cmd_encode, "search": cmd_search, "demo": cmd_demo,
            "features": cmd_features}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    prog = "dchml"
    import torch

    threads = torch.get_num_threads()
    try:
        args = parser.parse_args(argv)
        prog = f"dchml {args.command}"
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        COMMANDS[args.command](args, argv)
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{_after_interrupt(args if prog != 'dchml' else None)}", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:
        if os.environ.get("DCHML_DEBUG") == "1" or not _is_user_error(exc):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests, notebooks)


def _after_interrupt(args) -> str:
    """What the user can do after Ctrl-C: only `train` can resume."""
    if args is None or args.command not in ("train", "demo"):
        return ""
    from .run_dir import CHECKPOINT

    if args.command == "demo":
        return f"; the demo cannot resume: run `dchml demo --out {shlex.quote(args.out)} --force` to start it again"
    if os.path.isfile(os.path.join(args.out, CHECKPOINT)):
        return (f"; the last completed epoch is in {os.path.join(args.out, CHECKPOINT)} "
                f"(continue with `dchml train --out {shlex.quote(args.out)} --resume`)")
    return "; no epoch was completed"


def _is_user_error(exc) -> bool:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .outputs import OutputError

    return isinstance(exc, (UsageError, DataError, CheckpointError, OutputError, ValueError, FileNotFoundError,
                            PermissionError, FloatingPointError, json.JSONDecodeError))


if __name__ == "__main__":
    sys.exit(main())
