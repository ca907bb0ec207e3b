"""`dchml compare`: every method x code length x seed trained as an ordinary run in
DIR/runs/<method>_<bits>bits_seed<seed>/, on one split, and one table in the papers' layout.

Outputs: DIR/compare.md (rows: methods, then the shallow baselines and chance; columns: code
length x task; cells: MAP mean ± std over seeds, the best in bold, marked when its lead is within
the seed spread), DIR/compare.csv (one row per run and task, and per baseline scored in a run),
DIR/curves_<task>.png (precision@N and precision-recall of every method at one code length) and
DIR/convergence.png. Rerunning the command continues it (dchml/app/run_grid.py).
"""
from __future__ import annotations

import os

from .arguments import DEMO_THREADS, UsageError, command_line, config_from_args, load_data
from .comparison_table import (RUN_FIELDS, Cell, baseline_label, baseline_order, csv_row, csv_text, failure_lines,
                               lead_lines, legend, render_table, setting_lines, tasks_of, TASK_NAMES)
from .grid_runner import run_grid_command
from .run_grid import PlannedRun, available_methods, run_folder
from .train_commands import check_before_training

CSV_FIELDS = ["method", "bits", "seed"] + RUN_FIELDS


def parse_list(text: str | None, flag: str, allowed) -> list[str]:
    """A comma-separated list of names from `allowed`: no unknown name, no repeat, not empty."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not names:
        raise UsageError(f"{flag}: expected a comma-separated list, got {text!r}")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise UsageError(f"{flag}: unknown {unknown[0]!r}; choose from {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise UsageError(f"{flag}: {text!r} names one twice")
    return names


def refuse_run_seed(args, command: str) -> None:
    if args.seed is not None:
        raise UsageError(f"--seed: the runs of a {command} take their seeds from --seeds (0..N-1); the data split's "
                         "seed is --split-seed")


def use_threads(args) -> int:
    """Torch threads of every run: --threads, one by default as in the demo (the command line has
    set them for this process; workers set their own)."""
    import torch

    threads = args.threads or DEMO_THREADS
    torch.set_num_threads(threads)
    return threads


def method_label(method: str) -> str:
    from .report import LABELS

    return LABELS.get(method, method.upper())


def methods_for_data(methods, data, args) -> list[str]:
    """The methods compared: those asked for (each must be able to train on the data: refused in
    one line otherwise), or by default every method that can (a single-modality file: PSLDH and
    CSQ; a cross-modal one: all, the single-modality methods on its image side or --modality)."""
    from ..method.config import TrainConfig
    from ..method.methods import get_method

    usable, refused = [], []
    for m in methods or available_methods():
        cfg = TrainConfig(method=m, modality=None if get_method(m).cross_modal else getattr(args, "modality", None))
        try:
            get_method(m).modalities(cfg, data)
            usable.append(m)
        except ValueError as exc:
            refused.append((m, str(exc)))
    if methods is not None and refused:
        raise UsageError(f"--methods {refused[0][0]}: {refused[0][1]}")
    if not usable:
        raise UsageError(f"no method can train on {data.name}: {refused[0][1]}")
    return usable


def cmd_compare(args, argv) -> int:
    from .. import __version__
    from ..method.config import TrainConfig, recipe_settings
    from ..method.train import resolve_modality

    methods = None if args.methods is None else parse_list(args.methods, "--methods", available_methods())
    refuse_run_seed(args, "comparison")
    bits = args.bits or [TrainConfig.for_recipe(args.recipe).bits]
    seeds = list(range(args.seeds))
    curve_bits = args.curves_bits or (64 if 64 in bits else max(bits))
    if curve_bits not in bits:
        raise UsageError(f"--curves-bits {curve_bits} is not one of --bits {','.join(map(str, bits))}")
    threads = use_threads(args)
    first = (methods or ["dchml"])[0]
    check_before_training(config_from_args(args, recipe_settings(args.recipe, first), method=first, bits=bits[0]),
                          args.out)
    data = load_data(args, args.split_seed)
    methods = methods_for_data(methods, data, args)
    plans = [PlannedRun(f"{m}_{b}bits_seed{s}",
                        resolve_modality(data, config_from_args(args, recipe_settings(args.recipe, m), method=m,
                                                                bits=b, seed=s)).to_dict(),
                        {"method": m, "bits": b, "seed": s})
             for m in methods for b in bits for s in seeds]
    command = command_line(argv)
    manifest = {"command": command, "methods": list(methods), "bits": bits, "seeds": args.seeds,
                "split_seed": args.split_seed, "dchml_version": __version__}
    return run_grid_command("compare", args, plans, data, manifest, threads, lambda results: write_comparison(
        args.out, results, data, command=command, methods=list(methods), bits=bits, seeds=seeds,
        split_seed=args.split_seed, curve_bits=curve_bits))


def write_comparison(out: str, results: list, data, *, command: str, methods: list, bits: list, seeds: list,
                     split_seed: int, curve_bits: int) -> str:
    """compare.md, compare.csv and the figures from the runs' results; returns compare.md's path."""
    from ..io.atomic import write_text
    from .comparison_plots import plot_convergence, plot_task_curves
    from .experiment import data_summary

    grid = ComparisonGrid(results, methods, bits)
    lines = [f"# dchml compare: {', '.join(method_label(m) for m in methods)} at {', '.join(map(str, bits))} bits "
             f"on {data.name}", ""]
    lines += setting_lines(data_summary(data), command, results, seeds, split_seed) + [""]
    topk = sorted({r.metrics.get("topk") for r in results if r.metrics})
    lines += [f"## MAP@{'/'.join(map(str, topk)) or '-'}", ""]
    table, leads = render_table(grid.rows, grid.columns, grid.cells, first_header="method")
    lines += table + ["", legend(len(seeds)), "", "Leads (best vs second of each column):", ""]
    lines += lead_lines(leads) + [""]
    lines += ["The kernel hasher and the linear hasher are shallow references fitted in each run on its training "
              "items and proxy codes (ridge regression to the mean proxy code of an item's labels, then sign; the "
              "kernel hasher on RBF features of anchor items); chance is the exact MAP of a random ranking. Their "
              "cells are over the seeds of the first method's runs.", ""]
    lines += timing_lines(results, methods, bits)
    lines += failure_lines(results, lambda p: f"{method_label(p.axes['method'])} at {p.axes['bits']} bits, seed "
                                              f"{p.axes['seed']}")
    figures = []
    at_length = {method_label(m): [r.metrics for r in results if r.metrics and r.plan.axes["method"] == m
                                   and r.plan.axes["bits"] == curve_bits] for m in methods}
    for task in grid.tasks:
        name = f"curves_{task.split('_')[0]}.png"
        if plot_task_curves(at_length, task, os.path.join(out, name), curve_bits):
            figures.append(f"![{TASK_NAMES[task]} curves at {curve_bits} bits]({name})")
    if any(at_length.values()):
        plot_convergence({k: v for k, v in at_length.items() if v}, os.path.join(out, "convergence.png"), curve_bits)
        figures.append(f"![convergence at {curve_bits} bits](convergence.png)")
    if figures:
        lines += ["## Figures", ""] + [line for f in figures for line in (f, "")]
    lines += ["Per run: `runs/<method>_<bits>bits_seed<seed>/` (metrics.json, checkpoint.pt); every number above "
              "with its run, configuration and versions: compare.csv.", ""]
    path = os.path.join(out, "compare.md")
    write_text(path, "\n".join(lines))
    write_text(os.path.join(out, "compare.csv"), csv_text(grid.csv_rows(out), CSV_FIELDS))
    return path


class ComparisonGrid:
    """The cells of the comparison table: rows = methods then baselines, columns = (bits, task)."""

    def __init__(self, results: list, methods: list, bits: list):
        self.results = results
        finished = [r.metrics for r in results if r.metrics]
        self.tasks = tasks_of(finished) or ["i2t_map", "t2i_map"]
        self.cells = {}
        self.method_tasks = {m: tasks_of([r.metrics for r in results if r.metrics and r.plan.axes["method"] == m])
                             or self.tasks for m in methods}
        for r in results:
            a = r.plan.axes
            for task in self.method_tasks[a["method"]]:
                cell = self.cells.setdefault((method_label(a["method"]), (a["bits"], task)), Cell())
                if r.metrics is None:
                    cell.failed[a["seed"]] = r.error
                elif isinstance(r.metrics.get(task), (int, float)):
                    cell.values[a["seed"]] = r.metrics[task]
        self.baseline_source = {}  # (bits, seed) -> the result whose baselines fill the baseline rows
        for r in results:
            key = (r.plan.axes["bits"], r.plan.axes["seed"])
            if r.metrics and key not in self.baseline_source:
                self.baseline_source[key] = r
        self.baselines = baseline_order([r.metrics for r in self.baseline_source.values()])
        for (b, seed), r in self.baseline_source.items():
            for name in self.baselines:
                scores = r.metrics["baselines"].get(name) or {}
                for task in self.tasks:
                    if isinstance(scores.get(task), (int, float)):
                        self.cells.setdefault((baseline_label(name), (b, task)), Cell()).values[seed] = scores[task]
        self.rows = [method_label(m) for m in methods] + [baseline_label(n) for n in self.baselines]
        self.columns = [((b, task), f"{b} bits {TASK_NAMES[task]}") for b in bits for task in self.tasks
                        if any((row, (b, task)) in self.cells for row in self.rows)]

    def csv_rows(self, out: str) -> list[dict]:
        rows = []
        for r in self.results:
            a = r.plan.axes
            row_label = method_label(a["method"])
            for task in self.method_tasks[a["method"]]:
                value = (r.metrics or {}).get(task)
                rows.append({"method": a["method"], "bits": a["bits"], "seed": a["seed"],
                             **csv_row(r, kind="run", task=task, value=value,
                                       cell=self.cells.get((row_label, (a["bits"], task))),
                                       run_dir=os.path.relpath(run_folder(out, r.plan.key), out))})
        for (b, seed), r in sorted(self.baseline_source.items()):
            for name in self.baselines:
                scores = r.metrics["baselines"].get(name) or {}
                for task in self.tasks:
                    if isinstance(scores.get(task), (int, float)):
                        rows.append({"method": baseline_label(name), "bits": b, "seed": seed,
                                     **csv_row(r, kind="baseline", task=task, value=scores[task],
                                               cell=self.cells.get((baseline_label(name), (b, task))),
                                               run_dir=os.path.relpath(run_folder(out, r.plan.key), out))})
        return rows


def timing_lines(results: list, methods: list, bits: list) -> list[str]:
    """Mean epochs, kept epoch and training seconds of each method and length over its finished seeds."""
    from .seed_stats import mean_std

    lines = ["## Training", "", "| method | bits | epochs run | kept epoch | training s | wall s per run |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for m in methods:
        for b in bits:
            done = [r for r in results if r.metrics and r.plan.axes["method"] == m and r.plan.axes["bits"] == b]
            if not done:
                continue
            epochs = mean_std(r.metrics.get("epochs") for r in done)[0]
            kept = mean_std((r.metrics.get("selection") or {}).get("kept_epoch", r.metrics.get("epochs"))
                            for r in done)[0]
            seconds = mean_std(r.metrics.get("train_seconds") or 0.0 for r in done)[0]
            walls = [r.wall_seconds for r in done if r.wall_seconds is not None]
            lines.append(f"| {method_label(m)} | {b} | {fmt(epochs)} | {fmt(kept)} | {fmt(seconds)} | "
                         f"{fmt(mean_std(walls)[0] if walls else None)} |")
    return lines + ["", "Means over the finished seeds; training s is the sum of the epochs' times, wall s the "
                        "whole run (proxies, epochs, evaluation and baselines) in the command that finished it.", ""]
