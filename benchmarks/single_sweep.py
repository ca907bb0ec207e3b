"""Sweep single-modality settings (PSLDH's, CSQ's and the peers' of benchmarks/peers_single.py)
over the generated panel (benchmarks/panel_single.py), one JSON line per run: MAP@5000 of the
within-modality task, the kept epoch, the category codes' Hamming distances, and optionally the
shallow hashers (linear and kernel) and chance.

    python benchmarks/single_sweep.py --sets all --settings "psldh;csq;dpsh;hashnet;dsh" --bits 64 \
        --seeds 0,1 --shallow
    python benchmarks/single_sweep.py --sets tags --settings "g0.5=method:psldh,gamma:0.5" --bits 64
    python benchmarks/single_sweep.py --summarize bench_out/single_sweep-*/runs.jsonl

A setting is a method name (its defaults: dchml's shared recipe and the method's parameters), a
method name with ":paper" (its paper recipe), or `label=field:value,...` (TrainConfig fields;
`method:` picks the method, default psldh). Runs are single-threaded (--threads).

Where results go: a new folder ./bench_out/single_sweep-<UTC time>/ by default, --out DIR, or
--record (benchmarks/results/panel_single.jsonl, the recorded rows); runs.jsonl is appended to.
"""
from __future__ import annotations

import datetime
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from harness import (append_jsonl, command_line, config_value, git_commit, output_folder, read_jsonl,  # noqa: E402
                     sweep_parser)
from panel_single import PANEL_SINGLE, make_single_set  # noqa: E402
from peers_single import kernel_hasher, register_peers  # noqa: E402

from dchml.app.experiment import describe_device  # noqa: E402
from dchml.method.baselines import chance_map, kernel_hasher as dchml_kernel_hasher, linear_hasher  # noqa: E402
from dchml.method.evaluate import validation_split  # noqa: E402
from dchml.method.methods import get_method  # noqa: E402
from dchml.method.train import build_model, fit_normalizers, resolve_modality  # noqa: E402
from dchml.method.config import recipe_settings  # noqa: E402
from dchml.method.methods import tasks_of  # noqa: E402
from dchml.train import TrainConfig, evaluate, train  # noqa: E402

RECORDED = "panel_single.jsonl"


def output_file(args) -> str:
    """Where this run's rows go: the recorded file with --record, else DIR/runs.jsonl in --out or a
    new folder under ./bench_out/ (benchmarks/harness.py)."""
    folder = output_folder(args, "single_sweep")
    return os.path.join(folder, RECORDED if args.record else "runs.jsonl")


def parse_setting(spec: str) -> tuple[str, dict]:
    spec = spec.strip()
    if "=" not in spec:
        method, _, recipe = spec.partition(":")
        return spec, {"method": method, **recipe_settings(recipe or "default", method)}
    label, fields = spec.split("=", 1)
    values = {"method": "psldh"}
    for item in filter(None, fields.split(",")):
        key, raw = item.split(":", 1)
        if key == "recipe":
            continue
        values[key] = config_value(key, raw)
    recipe = dict(item.split(":", 1) for item in fields.split(",") if item.startswith("recipe:"))
    if recipe:
        values = {**recipe_settings(recipe["recipe"], values["method"]), **values}
    return label, values


def run_one(data, name, label, values, bits, seed, shallow, chance) -> dict:
    cfg = TrainConfig(**{**values, "bits": bits, "seed": seed})
    began = time.perf_counter()
    result = train(data, cfg, progress=False, log=None)
    seconds = time.perf_counter() - began
    (task,) = tasks_of(result.model.modalities)
    score = evaluate(result.model, data, topk=cfg.topk)[f"{task}_map"]
    diag = result.proxy_diagnostics
    row = {"set": name, "bits": bits, "seed": seed, "setting": label, "method": cfg.method,
           "overrides": {k: v for k, v in values.items() if k != "method"},
           "params": cfg.method_params, "task": task, "map": score,
           "val_map": result.selection.get("validation_map"), "kept_epoch": result.selection["kept_epoch"],
           "last_epoch": result.selection["last_epoch"],
           "code_min_hamming": diag.get("min_hamming"), "code_mean_hamming": diag.get("mean_hamming"),
           "code_steps": diag.get("steps"), "code_loss": diag.get("loss"),
           "chance_map": chance, "seconds": round(seconds, 1), "n_train": int(data.train_idx.numel())}
    if shallow:
        split = result.state["split"]
        row.update(shallow_scores(result.model, data, split["fit_idx"], split["val_idx"], cfg))
    return row


def shallow_scores(model, data, fit_idx, val_idx, cfg) -> dict:
    """The shallow hashers on `model`'s normalisers and its method's item targets (PSLDH's mean
    category codes, CSQ's centres; the peers use CSQ's): the linear hasher, the benchmark's plain
    RBF ridge hasher (`kernel_map`) and dchml's kernel hasher (`dchml_kernel_map`)."""
    (task,) = tasks_of(model.modalities)
    targets = cfg.method if cfg.method in ("psldh", "csq") else "csq"
    linear = linear_hasher(model, data, fit_idx, val_idx, topk=cfg.topk, method=targets)
    rbf = kernel_hasher(model, data, fit_idx, val_idx, topk=cfg.topk,
                        targets="model" if targets == "psldh" else "centers", seed=cfg.seed)
    kernel = dchml_kernel_hasher(model, data, fit_idx, val_idx, topk=cfg.topk, seed=cfg.seed, method=targets)
    return {"linear_map": linear[f"{task}_map"], "kernel_map": rbf["map"],
            "kernel": {k: v for k, v in rbf.items() if k != "map"}, "dchml_kernel_map": kernel[f"{task}_map"],
            "dchml_kernel": {k: v for k, v in kernel.items() if not k.endswith("_map")}}


def shallow_only(data, name, method, bits, seed, chance) -> dict:
    """The shallow hashers alone (no hashing network is trained: they need only the normalisers,
    fitted on the same items, and the category codes or centres of `method` at this seed)."""
    cfg = resolve_modality(data, TrainConfig(method=method, bits=bits, seed=seed))
    began = time.perf_counter()
    torch.manual_seed(seed)  # the category network's init, as in a run
    fit_idx, val_idx = validation_split(data.train_idx.to(torch.int64), cfg)
    model = build_model(data, cfg)
    fit_normalizers(model, data, fit_idx, cfg)
    get_method(method).make_category_codes(model, cfg)
    (task,) = tasks_of(model.modalities)
    row = {"set": name, "bits": bits, "seed": seed, "setting": f"shallow-{method}", "method": method,
           "overrides": {}, "params": cfg.method_params, "task": task, "map": None, "chance_map": chance,
           "n_train": int(data.train_idx.numel())}
    row.update(shallow_scores(model, data, fit_idx, val_idx, cfg))
    row["seconds"] = round(time.perf_counter() - began, 1)
    return row


# --- summaries ---------------------------------------------------------------------------------------


def _stat(values) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    spread = (max(values) - min(values)) / 2
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def summarize(rows: list[dict]) -> str:
    """One table per code length: mean MAP (± half the range over seeds) of every setting per set."""
    latest = {}
    for r in rows:  # a rerun of the same (set, bits, seed, setting) replaces the earlier row
        if r["map"] is not None:
            latest[(r["set"], r["bits"], r["seed"], r["setting"])] = r
    rows = list(latest.values())
    out = []
    for bits in sorted({r["bits"] for r in rows}):
        sets = [s for s in PANEL_SINGLE if any(r["set"] == s and r["bits"] == bits for r in rows)]
        settings = list(dict.fromkeys(r["setting"] for r in rows if r["bits"] == bits))
        out += [f"### {bits} bits", "", "| setting | " + " | ".join(sets) + " | mean | seeds |",
                "|---|" + "---|" * (len(sets) + 2)]
        for label in settings:
            cells, means, seeds = [], [], set()
            for s in sets:
                vals = [r["map"] for r in rows if r["set"] == s and r["bits"] == bits and r["setting"] == label]
                seeds |= {r["seed"] for r in rows if r["set"] == s and r["bits"] == bits and r["setting"] == label}
                cells.append(_stat(vals))
                means.append(statistics.fmean(vals) if vals else None)
            mean = statistics.fmean(means) if all(m is not None for m in means) else None
            out.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.4f} |" if mean is not None else
                       f"| {label} | " + " | ".join(cells) + " | - |")
            out[-1] += f" {','.join(map(str, sorted(seeds)))} |"
        out.append("")
    return "\n".join(out)


PEER_SETTINGS = ("csq", "dpsh", "hashnet", "dsh")


def compare(rows: list[dict], method_setting: str = "psldh") -> str:
    """PSLDH (`method_setting`) against the peers' losses, the shallow hashers and chance, per set
    and code length: mean ± half-range over seeds; the margin is PSLDH's mean minus the best mean
    of the others (peers and shallow hashers)."""
    latest = {}
    for r in rows:
        latest[(r["set"], r["bits"], r["seed"], r["setting"])] = r
    rows = list(latest.values())
    out = ["| set | bits | PSLDH | CSQ | DPSH | HashNet | DSH | linear | kernel | chance | PSLDH - best other |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in PANEL_SINGLE:
        for bits in sorted({r["bits"] for r in rows if r["set"] == s}):
            pick = lambda label: [r for r in rows if r["set"] == s and r["bits"] == bits and r["setting"] == label]  # noqa: E731
            mine = [r["map"] for r in pick(method_setting)]
            if not mine:
                continue
            cells, others = [_stat(mine)], []
            for label in PEER_SETTINGS:
                vals = [r["map"] for r in pick(label)]
                cells.append(_stat(vals))
                if vals:
                    others.append(statistics.fmean(vals))
            shallow = [r for r in rows if r["set"] == s and r["bits"] == bits and "linear_map" in r]
            for keys in (("linear_map",), ("kernel_map", "dchml_kernel_map")):
                # each run's shallow hashers use that run's normaliser and targets (PSLDH's mean
                # category codes, CSQ's centres): per seed, the best of the runs that scored them,
                # and for the kernel column the better of the plain RBF and dchml's kernel hasher
                by_seed = {}
                for r in shallow:
                    for key in keys:
                        if r.get(key) is not None:
                            by_seed[r["seed"]] = max(by_seed.get(r["seed"], 0.0), r[key])
                vals = list(by_seed.values())
                cells.append(_stat(vals))
                if vals:
                    others.append(statistics.fmean(vals))
            chance = pick(method_setting)[0]["chance_map"]
            margin = statistics.fmean(mine) - max(others) if others else float("nan")
            out.append(f"| {s} | {bits} | " + " | ".join(cells) + f" | {chance:.4f} | {margin:+.4f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = sweep_parser(__doc__, PANEL_SINGLE, "64")  # rows: DIR/runs.jsonl, or appended to the recorded file
    ap.add_argument("--settings", default="psldh", help="';'-separated settings")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (the data set's seed is --data-seed)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--shallow", action="store_true", help="also train and score the linear and kernel hashers")
    ap.add_argument("--shallow-only", default=None, metavar="METHODS",
                    help="score only the shallow hashers on these methods' targets (e.g. psldh,csq), no training")
    ap.add_argument("--compare", default=None, metavar="SETTING",
                    help="with --summarize: the table of SETTING (e.g. psldh) against peers and shallow hashers")
    args = ap.parse_args(argv)
    if args.summarize:
        rows = read_jsonl(args.summarize)
        print(compare(rows, args.compare) if args.compare else summarize(rows), end="")
        return
    torch.set_num_threads(args.threads)
    register_peers()
    path = output_file(args)
    print(f"writing to {path}", flush=True)
    sets = PANEL_SINGLE if args.sets == "all" else args.sets.split(",")
    settings = [parse_setting(s) for s in args.settings.split(";") if s.strip()]
    device, commit, command = describe_device("cpu"), git_commit(), command_line()
    for name in sets:
        data = make_single_set(name, seed=args.data_seed)
        (chance,) = chance_map(data, tasks=("x",)).values()
        for bits in (int(b) for b in args.bits.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                for method in (args.shallow_only.split(",") if args.shallow_only else ()):
                    row = shallow_only(data, name, method, bits, seed, chance)
                    row.update(data_seed=args.data_seed, device=device, commit=commit, command=command,
                               threads=args.threads,
                               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
                    print(f"{name:7s} {bits:3d} s{seed} {row['setting']:18s} linear {row['linear_map']:.4f} rbf "
                          f"{row['kernel_map']:.4f} dchml kernel {row['dchml_kernel_map']:.4f} {row['seconds']:.0f}s",
                          flush=True)
                    append_jsonl(path, row)
                for label, values in (settings if not args.shallow_only else ()):
                    row = run_one(data, name, label, values, bits, seed, args.shallow, chance)
                    row.update(data_seed=args.data_seed, device=device, commit=commit, command=command,
                               threads=args.threads,
                               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
                    extra = (f" linear {row['linear_map']:.4f} kernel {row['kernel_map']:.4f}" if args.shallow else "")
                    print(f"{name:7s} {bits:3d} s{seed} {label:18s} MAP {row['map']:.4f} (val {row['val_map'] or 0:.4f}, "
                          f"epoch {row['kept_epoch']}/{row['last_epoch']}, codes min {row['code_min_hamming']}"
                          f"){extra} chance {chance:.4f} {row['seconds']:.0f}s", flush=True)
                    append_jsonl(path, row)


if __name__ == "__main__":
    main()
