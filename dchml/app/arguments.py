"""The `dchml` command line's arguments: the parser, its value types, and what commands
make of parsed arguments (the data, the TrainConfig, the log, the recorded command line)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

import numpy as np


class UsageError(Exception):
    """A mistake on the command line, reported as one line with exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the whole usage block: keep it to one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# One CPU thread by default for the demo: on a shared 2-core machine, OpenMP's spin-waiting makes
# two threads 5-20x slower per epoch as soon as another process is busy (measured 5-25 s/epoch vs
# 1.2-1.8 s/epoch on one thread); unloaded, two threads are only ~30% faster (0.8 vs ~1.1 s).
DEMO_THREADS = 1
# One torch thread per search by default: a server's parallelism is its concurrent requests (one
# worker thread per core), and two OpenMP threads per search on a busy 2-core machine made a
# 1M-code search 13x slower (15.8 ms vs 1.2 ms measured).
SERVE_THREADS = 1


def _integer(text, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text):
    return _integer(text, 1, "a positive integer")


def _nonneg_int(text):
    return _integer(text, 0, "an integer >= 0")


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
    from ..data import FORMATS, PROTOCOLS

    p.add_argument("--data", default=None, required=required,
                   help="'synthetic' (built-in set) or a path: .mat (v5 / v7.3), .npz, a text-list folder, "
                        "an index.mat / caption.mat / label.mat folder, list files (test.txt, database.txt, "
                        "train.txt) or a CIFAR-10 python folder"
                        + (f" (default: {default_help})" if default_help else ""))
    p.add_argument("--format", default="auto", choices=list(FORMATS), help="data format (default: auto)")
    p.add_argument("--protocol", default=None, metavar="NAME",
                   help=f"a named split and MAP@K protocol: {', '.join(PROTOCOLS)} (default: cifar10-1 for a "
                        "CIFAR-10 folder, else the file's own split or dchml's split rule)")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="list files: the folder their image paths are relative to (default: the lists' folder)")
    p.add_argument("--drop-unlabeled", action="store_true",
                   help="drop items without any label (the paper's protocol) instead of refusing the file")
    _add_image_data_args(p)


def _add_image_data_args(p):
    from ..data.images import DEFAULT_WORKERS
    from ..data.vocab import DEFAULT_MAX_TERMS, WEIGHTINGS

    p.add_argument("--workers", type=_nonneg_int, default=DEFAULT_WORKERS,
                   help=f"processes that decode image files (default {DEFAULT_WORKERS}; 0: decode in this process)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="decode every image file once at load and drop the items whose image is missing or "
                        "unreadable (counted in the report) instead of stopping with an error")
    p.add_argument("--vocab-size", type=_positive_int, default=DEFAULT_MAX_TERMS,
                   help=f"raw captions: keep this many most frequent words of the training items (default {DEFAULT_MAX_TERMS})")
    p.add_argument("--text-weighting", choices=WEIGHTINGS, default="binary",
                   help="raw captions: bag-of-words values (default binary)")


def _add_train_args(p, *, demo=False, threads=None):
    from ..method.normalize import KINDS
    from ..method.config import OPTIMIZERS, PAPER_RECIPE, RECIPES, SCHEDULES, SELECTIONS, TrainConfig

    d = TrainConfig()
    paper = lambda name: f"; --recipe paper: {PAPER_RECIPE[name]}" if name in PAPER_RECIPE else ""  # noqa: E731
    p.add_argument("--recipe", choices=list(RECIPES), default="default",
                   help="training recipe: dchml's default (chosen on a panel of data sets, docs/method.md) or the "
                        "method's paper settings (DCHML: plain SGD, lr 1e-3, 120 epochs, features as given, last "
                        "epoch; PSLDH, CSQ: their public code's, docs/spec.md §6.4, §12)")
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
    _add_method_params(p)
    p.add_argument("--proxy-steps", type=_positive_int, default=None, help=f"PHNet step limit (default {d.proxy_steps})")
    p.add_argument("--eval-every", type=_positive_int, default=None,
                   help=f"validation MAP every N epochs (default {d.eval_every})")
    p.add_argument("--topk", type=_positive_int, default=None, help=f"MAP@K cut-off (default {d.topk})")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    if not demo:
        p.add_argument("--modality", choices=["image", "text"], default=None,
                       help="single-modality methods (psldh, csq): the modality trained and searched (default: "
                            "image when the data has it)")
        _add_finetune_args(p)
    _add_threads_arg(p, DEMO_THREADS if demo else threads)
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out directory")


def _add_method_params(p):
    """--eta, --mu, --lambda, --gamma, --sigma, --alpha, --beta: each method reads some of them, with
    its own defaults (a name can mean another thing in another method: docs/spec.md §12)."""
    from ..method.methods import FLAG_OF, METHOD_PARAMS, METHODS

    for attr in METHOD_PARAMS:
        uses = [f"{m.title} {m.params[attr]:g}" for m in METHODS.values() if attr in m.params and m.name != "dchml_q"
                and m.name != "dchml_p"]
        p.add_argument(f"--{FLAG_OF.get(attr, attr)}", dest=attr, type=_nonneg_float, default=None,
                       help=f"{_PARAM_MEANING[attr]} (default: " + ", ".join(uses) + ")")


_PARAM_MEANING = {
    "eta": "DCHML's softmax scale",
    "mu": "DCHML's margin",
    "lam": "DCHML: weight of the inter-modal loss; PSLDH, CSQ: weight of the quantization term",
    "gamma": "DCHML: weight of the quantization term; PSLDH: the softmax scale",
    "sigma": "PSLDH's margin",
    "alpha": "category network: weight of the bit balance",
    "beta": "category network: weight of its quantization",
}


def _add_finetune_args(p):
    from ..method.backbones import BACKBONES
    from ..method.precision import PRECISIONS

    p.add_argument("--image-backbone", choices=list(BACKBONES), default=None,
                   help="network on image pixels (default: the method's, alexnet for DCHML and CSQ, vgg11 for "
                        "PSLDH); pixel data only")
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
                 "eta", "mu", "lam", "gamma", "sigma", "alpha", "beta", "proxy_steps", "eval_every", "topk",
                 "device", "image_backbone", "image_size", "backbone_lr_scale", "precision", "augment", "modality")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dchml", description="Deep cross-modal hashing (DCHML) with the margin-dynamic-softmax loss.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train a model (Algorithm 1), evaluate it and write a report")
    _add_data_args(p, "synthetic; with --resume, the data the run was started on")
    from ..method.methods import METHODS

    p.add_argument("--method", choices=list(METHODS), default=None,
                   help="default dchml; " + "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items()))

    _add_train_args(p)
    p.add_argument("--image-weights", default=None,
                   help="local state dict of the image backbone (pixel data only; default: the weights cache, "
                        "$DCHML_CACHE or ~/.cache/dchml, else random with a warning), or 'random': start the backbone "
                        "from random weights on purpose (offline, or to train from scratch); the report says so")
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
    p.add_argument("--topk", type=_positive_int, default=None,
                   help="MAP@K cut-off (default: the one the checkpoint was trained with)")
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

    p = sub.add_parser("search", help="top-k search of a data set's database with the Hamming index")
    p.add_argument("--checkpoint", required=True)
    _add_data_args(p, "the data the checkpoint was trained on")
    p.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed of the data split (default: the seed the checkpoint was trained with)")
    p.add_argument("--query-modality", required=True, choices=["image", "text"],
                   help="modality of the queries")
    p.add_argument("--database-modality", choices=["image", "text"], default=None,
                   help="modality of the database (default: the other modality for a cross-modal model, the "
                        "same one for a single-modality model)")
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
    from ..method.backbones import BACKBONES
    from ..method.features import DEFAULT_CHUNK_ROWS, TEXT_BACKBONES
    from ..method.precision import PRECISIONS

    p.add_argument("--image-backbone", choices=list(BACKBONES), default="alexnet", help="default alexnet")
    p.add_argument("--image-weights", default=None,
                   help="local state dict of the backbone (default: the weights cache), or 'random': random weights "
                        "on purpose (features of an untrained network: for pipelines and tests, not retrieval)")
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

    _add_serve_parser(sub)

    p = sub.add_parser("demo", help="DCHML vs DCHML_P on the synthetic set at 64 bits, one comparison report")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    _add_train_args(p, demo=True)
    p.add_argument("--jobs", type=_positive_int, default=None,
                   help="methods trained at once, one process each (default: 2 on a CPU with a core per run, else 1)")
    _add_comparison_parsers(sub)
    return parser


def _port(text):
    value = _integer(text, 0, "a port number in 0..65535")
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0..65535, got {text!r}")
    return value


def _add_serve_parser(sub):
    p = sub.add_parser("serve", help="a search API and web page over a trained model (docs/serve.md)")
    p.add_argument("--checkpoint", required=True)
    _add_data_args(p, "the data the checkpoint was trained on")
    p.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed of the data split (default: the seed the checkpoint was trained with)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the API has no authentication)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")
    _add_threads_arg(p, SERVE_THREADS)


def _add_comparison_parsers(sub):
    """`dchml compare` and `dchml sweep` (dchml/app/compare.py, sweep.py): many ordinary runs in
    DIR/runs/, one table; every train flag applies to all of them."""
    from .run_grid import available_methods

    for name, text in (("compare", "train methods x code lengths x seeds on one split, one table of MAP mean ± std"),
                       ("sweep", "one-at-a-time sensitivity of numeric training parameters over seeds")):
        p = sub.add_parser(name, help=text)
        _add_data_args(p, "synthetic")
        if name == "compare":
            p.add_argument("--methods", default=None,
                           help=f"comma-separated methods (default: all of {','.join(available_methods())})")
            p.add_argument("--curves-bits", type=_positive_int, default=None,
                           help="code length of the precision@N / precision-recall figures (default 64 if compared, "
                                "else the longest)")
        else:
            p.add_argument("--param", action="append", required=True, metavar="NAME=V1,V2,...",
                           help="a numeric training parameter and its values, e.g. eta=0.1,0.3,0.5 (repeat for more "
                                "parameters; each is varied with the others at their defaults)")
            p.add_argument("--method", default=None, help="the method trained (default dchml)")
        p.add_argument("--seeds", type=_positive_int, default=3,
                       help="seeds 0..N-1 of every cell: initialisation, shuffles, validation slice (default 3)")
        p.add_argument("--split-seed", type=_nonneg_int, default=0,
                       help="seed of the data split, the same for every run (data with its own split keep it; "
                            "default 0)")
        p.add_argument("--jobs", type=_positive_int, default=None,
                       help="runs trained at once, one process each (default: one per --threads cores on a CPU, "
                            "1 on a GPU)")
        p.add_argument("--out", required=True,
                       help=f"output directory: runs/, {name}.md, {name}.csv, figures; rerun the same command to "
                            "continue it (finished runs are kept, interrupted ones resume); --force also retrains "
                            "runs made with other settings")
        _add_train_args(p, threads=DEMO_THREADS)


def log_for(args):
    """The command's progress log on stderr (None under --quiet); its warnings and notes carry the
    same `dchml <command>:` prefix as its errors."""
    if getattr(args, "quiet", False):
        return None
    prefix = f"dchml {args.command}: "

    def log(message):
        print(prefix + message if message.startswith(("warning:", "note:")) else message, file=sys.stderr,
              flush=True)
    return log


def load_data(args, seed, recorded=None, image_size=224):
    """--data (default: `recorded`, a checkpoint's record of its data, else the synthetic set)."""
    from ..data import UnlabeledItemsError, load_dataset, load_recorded

    try:
        if args.data is None and recorded is not None:
            path = recorded["path"] if recorded.get("abspath") is None else recorded["abspath"]
            if recorded.get("format") != "synthetic" and not os.path.exists(path):
                raise UsageError(f"the checkpoint's data {recorded['path']} ({path}) no longer exists; pass --data")
            print(f"using the checkpoint's data: {path} ({recorded.get('format')}, seed {seed}"
                  f"{', drop unlabeled' if recorded.get('drop_unlabeled') else ''}); --data overrides",
                  file=sys.stderr, flush=True)
            protocol = getattr(args, "protocol", None)
            return load_recorded({**recorded, "seed": seed, **({"protocol": protocol} if protocol else {})})
        source = "synthetic" if args.data is None else args.data
        if source != "synthetic" and not os.path.exists(source):
            raise UsageError(f"--data {source}: no such file or directory")
        return load_dataset(source, args.format, seed=seed, drop_unlabeled=args.drop_unlabeled,
                            image_size=image_size, image_workers=args.workers,
                            skip_bad_images=args.skip_bad_images, vocab_size=args.vocab_size,
                            text_weighting=args.text_weighting, protocol=getattr(args, "protocol", None),
                            image_root=getattr(args, "image_root", None))
    except UnlabeledItemsError as exc:
        raise exc.with_option("--drop-unlabeled") from None


def config_from_args(args, base: dict, **fixed):
    from ..method.config import TrainConfig

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


def command_line(argv) -> str:
    return "dchml " + " ".join(shlex.quote(a) for a in argv)


def check_output_file(path, force, what="--out"):
    if os.path.exists(path) and not force:
        raise UsageError(f"{what} {path} already exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: directory {directory} is not writable")
