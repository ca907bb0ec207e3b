"""Sweep training recipes over the panel of generated data sets (benchmarks/panel.py) and record
DCHML's MAP beside the linear hasher and chance, one JSON line per run.

    python benchmarks/recipe_sweep.py --sets all --recipes default,paper --bits 16,32,64 --record
    python benchmarks/recipe_sweep.py --sets bovw-l1 --recipes "adam3e-4=optimizer:adam,lr:3e-4" --bits 32

The lines are appended to <out>/panel.jsonl: <out> is a new folder under ./bench_out/ unless
--out DIR is given, and benchmarks/results/ (the recorded panel) only with --record.

A recipe is `name` (a named recipe of dchml.train: default, paper) or `label=field:value,...` (the
defaults with those TrainConfig fields changed). `--scale image:1000,text:0.001` multiplies the
features first (the scale-robustness check). Runs are single-threaded by default (--threads).
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from panel import PANEL, make_panel_set, scaled  # noqa: E402

from dchml.method.baselines import chance_map, linear_hasher  # noqa: E402
from dchml.app.experiment import describe_device  # noqa: E402
from dchml.train import RECIPES, TrainConfig, evaluate, train  # noqa: E402


def parse_recipe(spec: str) -> tuple[str, dict]:
    if "=" not in spec:
        if spec not in RECIPES:
            raise SystemExit(f"unknown recipe {spec!r}")
        return spec, dict(RECIPES[spec])
    label, fields = spec.split("=", 1)
    values = {}
    for item in fields.split(","):
        key, raw = item.split(":", 1)
        values[key] = harness.config_value(key, raw)
    return label, values


def parse_scale(spec: str | None) -> dict:
    if not spec:
        return {}
    return {k: float(v) for k, v in (item.split(":") for item in spec.split(","))}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summarize(rows: list[dict]) -> str:
    """Markdown tables of the panel results: defaults vs the paper's recipe vs the baselines at each
    code length, then the scale check (the same default run on rescaled feature files)."""
    def key(r):
        return (r["set"], r["bits"], r["recipe"], json.dumps(r["scale"], sort_keys=True))

    latest = {key(r): r for r in rows}  # a rerun replaces an earlier row
    plain = {k: r for k, r in latest.items() if not r["scale"]}
    sets = [s for s in PANEL if any(k[0] == s for k in plain)]
    bits = sorted({k[1] for k in plain})
    lines = ["| set | bits | default MAP (I->T / T->I) | kept / run epochs | paper recipe | linear hasher | chance "
             "| default - linear |", "|---|---|---|---|---|---|---|---|"]
    for name in sets:
        for b in bits:
            d = plain.get((name, b, "default", "{}"))
            p = plain.get((name, b, "paper", "{}"))
            if not d:
                continue
            lines.append(f"| {name} | {b} | {d['mean_map']:.4f} ({d['i2t_map']:.4f} / {d['t2i_map']:.4f}) | "
                         f"{d['kept_epoch']} / {d['last_epoch']} | {p['mean_map']:.4f} | " if p else
                         f"| {name} | {b} | {d['mean_map']:.4f} ({d['i2t_map']:.4f} / {d['t2i_map']:.4f}) | "
                         f"{d['kept_epoch']} / {d['last_epoch']} | - | ")
            lines[-1] += f"{d['linear_mean_map']:.4f} | {d['chance_map']:.4f} | {d['mean_map'] - d['linear_mean_map']:+.4f} |"
    scaled_rows = [r for r in latest.values() if r["scale"] and r["recipe"] == "default"]
    if scaled_rows:
        lines += ["", "| set | bits | features | default MAP | unscaled | change |", "|---|---|---|---|---|---|"]
        for r in sorted(scaled_rows, key=lambda r: (PANEL.index(r["set"]), r["bits"], json.dumps(r["scale"]))):
            base = plain.get((r["set"], r["bits"], "default", "{}"))
            scale = ", ".join(f"{k} x{v:g}" for k, v in r["scale"].items())
            change = f"{r['mean_map'] - base['mean_map']:+.4f}" if base else "-"
            lines.append(f"| {r['set']} | {r['bits']} | {scale} | {r['mean_map']:.4f} | "
                         f"{base['mean_map'] if base else float('nan'):.4f} | {change} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = harness.sweep_parser(__doc__, PANEL, "32")
    ap.add_argument("--recipes", default="default,paper", help="';'-separated recipe specs")
    ap.add_argument("--scale", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(harness.read_jsonl(args.summarize)), end="")
        return
    torch.set_num_threads(args.threads)
    results = os.path.join(harness.output_folder(args, "recipe_sweep"), "panel.jsonl")
    print(f"writing {results}", flush=True)
    sets = PANEL if args.sets == "all" else args.sets.split(",")
    recipes = [parse_recipe(s) for s in args.recipes.split(";")]
    scale = parse_scale(args.scale)
    for name in sets:
        data = make_panel_set(name, seed=args.seed)
        if scale:
            data = scaled(data, **scale)
        chance = chance_map(data)
        for bits in (int(b) for b in args.bits.split(",")):
            for label, values in recipes:
                cfg = TrainConfig(**{**values, "bits": bits, "seed": args.seed})
                began = time.perf_counter()
                result = train(data, cfg, progress=False, log=None)
                seconds = time.perf_counter() - began
                scores = evaluate(result.model, data, topk=cfg.topk)
                split = result.state["split"]
                linear = linear_hasher(result.model, data, split["fit_idx"], split["val_idx"], topk=cfg.topk)
                row = {"set": name, "scale": scale, "bits": bits, "recipe": label, "overrides": values,
                       "i2t_map": scores["i2t_map"], "t2i_map": scores["t2i_map"],
                       "mean_map": (scores["i2t_map"] + scores["t2i_map"]) / 2,
                       "linear_mean_map": (linear["i2t_map"] + linear["t2i_map"]) / 2,
                       "chance_map": chance["i2t_map"], "kept_epoch": result.selection["kept_epoch"],
                       "last_epoch": result.selection["last_epoch"], "seconds": round(seconds, 1),
                       "n_train": int(data.train_idx.numel()),
                       "device": describe_device("cpu"), "commit": commit(),
                       "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
                print(f"{name:13s} {bits:3d} {label:14s} MAP {row['mean_map']:.4f} (I->T {row['i2t_map']:.4f} "
                      f"T->I {row['t2i_map']:.4f}) linear {row['linear_mean_map']:.4f} chance {row['chance_map']:.4f} "
                      f"epoch {row['kept_epoch']}/{row['last_epoch']} {seconds:.0f}s", flush=True)
                harness.append_jsonl(results, row)


if __name__ == "__main__":
    main()
