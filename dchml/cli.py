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


# --- defaults of the demo [choice, measured: see docs/method.md] ------------------------------------
# Plain SGD at the paper's lr (1e-3) needs ~100+ epochs; the demo must finish in 5 minutes on 2
# cores, so it uses momentum 0.9 and lr 0.01, which reach a converged MAP in DEMO_EPOCHS epochs.
DEMO_EPOCHS = 50
DEMO_LR = 0.01
DEMO_MOMENTUM = 0.9
DEMO_EVAL_EVERY = 10
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


def _add_data_args(p, required=False):
    p.add_argument("--data", default=None if required else "synthetic", required=required,
                   help="'synthetic' (built-in set) or a path: .mat (v5 / v7.3), .npz, a text-list folder, "
                        "or an index.mat / caption.mat / label.mat folder")
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
    from .train import TrainConfig

    d = TrainConfig()
    p.add_argument("--bits", type=_positive_int, default=None, help=f"code length (default {d.bits})")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"outer iterations of Algorithm 1 (default {DEMO_EPOCHS if demo else d.epochs})")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="seed of the data split, init and shuffles (default 0)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=_nonneg_float, default=None, help=f"SGD learning rate (default {DEMO_LR if demo else d.lr})")
    p.add_argument("--momentum", type=_nonneg_float, default=None,
                   help=f"SGD momentum (default {DEMO_MOMENTUM if demo else d.momentum})")
    p.add_argument("--weight-decay", type=_nonneg_float, default=None, help=f"default {d.weight_decay}")
    for flag, attr in (("--eta", "eta"), ("--mu", "mu"), ("--lambda", "lam"), ("--gamma", "gamma"),
                       ("--alpha", "alpha"), ("--beta", "beta")):
        p.add_argument(flag, dest=attr, type=_nonneg_float, default=None, help=f"default {getattr(d, attr)}")
    p.add_argument("--proxy-steps", type=_positive_int, default=None, help=f"PHNet step limit (default {d.proxy_steps})")
    p.add_argument("--eval-every", type=_positive_int, default=None, help=f"MAP every N epochs (default {d.eval_every})")
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


_CONFIG_FLAGS = ("bits", "epochs", "seed", "batch_size", "lr", "momentum", "weight_decay", "eta", "mu", "lam",
                 "gamma", "alpha", "beta", "proxy_steps", "eval_every", "topk", "device", "image_backbone",
                 "image_size", "backbone_lr_scale", "precision", "augment")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dchml", description="Deep cross-modal hashing (DCHML) with the margin-dynamic-softmax loss.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (Algorithm 1), evaluate it and write a report")
    _add_data_args(p)
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
    _add_data_args(p)
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the data split (default 0)")
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
    _add_data_args(p)
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the data split (default 0)")
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


def _load_data(args, seed, image_size=224):
    from .data import load_dataset

    if args.data != "synthetic" and not os.path.exists(args.data):
        raise UsageError(f"--data {args.data}: no such file or directory")
    return load_dataset(args.data, args.format, seed=seed, drop_unlabeled=args.drop_unlabeled,
                        image_size=image_size, image_workers=args.workers, skip_bad_images=args.skip_bad_images,
                        vocab_size=args.vocab_size, text_weighting=args.text_weighting)


def _config_from_args(args, base: dict):
    from .train import TrainConfig

    values = dict(base)
    for name in _CONFIG_FLAGS + ("method",):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if getattr(args, "image_weights", None):
        if args.image_weights != "random" and not os.path.isfile(args.image_weights):
            raise UsageError(f"--image-weights {args.image_weights}: no such file")
        values["image_weights"] = args.image_weights
    return TrainConfig.from_dict(values)


def _command_line(argv) -> str:
    return "dchml " + " ".join(shlex.quote(a) for a in argv)


def cmd_train(args, argv):
    from .checkpoint import load_checkpoint
    from .experiment import CHECKPOINT, prepare_out_dir, run_experiment
    from .report import write_report
    from .train import TrainConfig

    base = {}
    if args.resume:
        prepare_out_dir(args.out, resume=True)
        # Flags not given on the command line keep the interrupted run's values.
        base = load_checkpoint(os.path.join(args.out, CHECKPOINT))["config"]
    cfg = _config_from_args(args, base)
    if args.resume:
        # A field the checkpoint predates has its default value in the resumed run.
        saved = {**TrainConfig.from_dict({}).to_dict(), **base}
        changed = sorted(k for k, v in cfg.to_dict().items()
                         if k not in ("epochs", "eval_every", "device") and saved.get(k) != v)
        if changed:
            raise UsageError(f"--resume continues the run as it was configured; cannot change {', '.join(changed)} "
                             "(only --epochs, --eval-every and --device may differ)")
    data = _load_data(args, cfg.seed, cfg.image_size)
    metrics, _ = run_experiment(data, cfg, args.out, resume=args.resume, force=args.force,
                                progress=None if not args.quiet else False, log=_log(args),
                                command=_command_line(argv), nproc=args.nproc)
    if metrics is None:  # a rank > 0 of a torchrun job: rank 0 writes the outputs
        return
    write_report(args.out, {cfg.method: metrics}, title=f"dchml: {cfg.method.upper()} at {cfg.bits} bits on {data.name}")
    print(f"{cfg.method} {cfg.bits} bits: MAP@{cfg.topk} I->T {metrics['i2t_map']:.4f}  T->I {metrics['t2i_map']:.4f}"
          f"  ({metrics['epochs']} epochs, {metrics['seconds_per_epoch']:.2f} s/epoch); report: "
          f"{os.path.join(args.out, 'report.md')}")


def _check_output_file(path, force, what="--out"):
    if os.path.exists(path) and not force:
        raise UsageError(f"{what} {path} already exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{what} {path}: directory {directory} does not exist")


def _load_model(args):
    from .checkpoint import model_from_checkpoint

    import torch

    from .train import _resolve_device

    device = _resolve_device(args.device)
    return model_from_checkpoint(args.checkpoint).to(device), device, torch


def cmd_eval(args, argv):
    from .experiment import write_json
    from .train import evaluate

    if args.out:
        _check_output_file(args.out, args.force)
    model, device, _ = _load_model(args)
    data = _load_data(args, args.seed, model.spec()["image_size"])
    _check_model_fits_data(model, data)
    scores = evaluate(model, data, topk=args.topk, curves=bool(args.out), device=device)
    print(f"MAP@{args.topk} I->T {scores['i2t_map']:.4f}  T->I {scores['t2i_map']:.4f}")
    if args.out:
        write_json({"bits": model.bits, **scores, "checkpoint": args.checkpoint, "data": data.name}, args.out)


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
    from .checkpoint import atomic_write, load_checkpoint, model_from_checkpoint
    from .encoding import encode
    from .train import _resolve_device

    _check_output_file(args.out, args.force)
    device = _resolve_device(args.device)
    state = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(state).to(device)
    if args.input.lower().endswith(".txt"):
        batch = _raw_input(args, model, state.get("data", {}).get("encoders") or {}, device)
    else:
        batch = _as_model_input(_load_npy(args.input, "--input"), model, args.modality, f"--input {args.input}")
    codes = encode(model, batch, args.modality, device=device).numpy()

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, codes)

    atomic_write(args.out, write)
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
    data = _load_data(args, args.seed, args.image_size)
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
    from . import HammingIndex
    from .encoding import encode

    if args.out:
        _check_output_file(args.out, args.force)
    model, device, torch = _load_model(args)
    data = _load_data(args, args.seed, model.spec()["image_size"])
    _check_model_fits_data(model, data)
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
        source = data.image if args.query_modality == "image" else data.text
        queries = source[rows]
    else:
        rows = None
        queries = _as_model_input(_load_npy(args.input, "--input"), model, args.query_modality, f"--input {args.input}")
    index = HammingIndex(model.bits)
    index.add(encode(model, db_source[data.retrieval_idx], db_modality, device=device))
    k = min(args.k, data.retrieval_idx.numel())
    distances, positions_db = index.search(encode(model, queries, args.query_modality, device=device), k)
    distances, positions_db = torch.as_tensor(distances), torch.as_tensor(positions_db)
    results = []
    for qi in range(distances.shape[0]):
        item_rows = data.retrieval_idx[positions_db[qi]]
        entry = {"query": qi if rows is None else int(rows[qi]),
                 "results": [{"row": int(r), "distance": int(dist)} for r, dist in zip(item_rows, distances[qi])]}
        if rows is not None:
            shared = (data.labels[item_rows] @ data.labels[rows[qi]]) > 0
            for res, rel in zip(entry["results"], shared.tolist()):
                res["relevant"] = bool(rel)
        results.append(entry)
    if args.out:
        from .experiment import write_json

        write_json({"query_modality": args.query_modality, "database_modality": db_modality, "k": k,
                    "results": results}, args.out)
        print(f"wrote {len(results)} result lists to {args.out}")
        return
    for entry in results:
        items = "  ".join(f"{r['row']}(d={r['distance']}{'' if 'relevant' not in r else ', rel' if r['relevant'] else ''})"
                          for r in entry["results"])
        print(f"{args.query_modality} query {entry['query']} -> {db_modality} rows: {items}")


def cmd_demo(args, argv):
    from .data import make_synthetic
    from .experiment import prepare_out_dir, run_experiment
    from .report import write_report

    prepare_out_dir(args.out, force=args.force)
    base = {"bits": 64, "epochs": DEMO_EPOCHS, "lr": DEMO_LR, "momentum": DEMO_MOMENTUM, "eval_every": DEMO_EVAL_EVERY}
    cfg = _config_from_args(args, base)
    data = make_synthetic(seed=cfg.seed)
    log = _log(args)
    runs = {}
    for method in ("dchml", "dchml_p"):
        method_cfg = _config_from_args(args, {**cfg.to_dict(), "method": method})
        if log:
            log(f"[demo] training {method} at {cfg.bits} bits for {cfg.epochs} epochs")
        runs[method], _ = run_experiment(data, method_cfg, os.path.join(args.out, method), force=args.force,
                                         progress=None if not args.quiet else False, log=log,
                                         command=_command_line(argv))
    notes = [f"Demo setting: SGD with momentum {cfg.momentum} and lr {cfg.lr} for {cfg.epochs} epochs (the paper's "
             "plain SGD at lr 1e-3 needs far more epochs than a 5-minute demo allows: measured MAP@5000 0.57 / 0.53 "
             "after 60 epochs; `dchml train` keeps the paper's defaults).",
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
        print(f"{prog}: interrupted; the last completed epoch is in the checkpoint (resume with --resume)",
              file=sys.stderr)
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


def _is_user_error(exc) -> bool:
    from .checkpoint import CheckpointError
    from .data import DataError

    return isinstance(exc, (UsageError, DataError, CheckpointError, ValueError, FileNotFoundError,
                            PermissionError, FloatingPointError, json.JSONDecodeError))


if __name__ == "__main__":
    sys.exit(main())
