"""`dchml sweep`: one-at-a-time sensitivity of numeric training parameters. Each --param NAME is
varied over its values with every other parameter at its default (or its flag's value); each
(value, seed) is an ordinary run in DIR/runs/<name>=<value>_seed<seed>/, and a value equal to the
default shares the default configuration's run, DIR/runs/default_seed<seed>/.

Outputs: DIR/sweep.md (a table per parameter: rows = values, columns = tasks, MAP mean ± std
over seeds, the best in bold with the seed-spread mark), DIR/sweep.csv (one row per run, task
and swept point), DIR/sweep_<name>.png (each task's MAP against the value, a ± std band). The
same continuation, parallelism and refusals as `dchml compare`.
"""
from __future__ import annotations

import dataclasses
import math
import os

from .arguments import UsageError, command_line, config_from_args, load_data
from .compare import method_label, parse_list, refuse_run_seed, use_threads
from .comparison_table import (RUN_FIELDS, TASK_NAMES, Cell, baseline_label, baseline_order, csv_row, csv_text,
                               failure_lines, lead_lines, legend, render_table, setting_lines, tasks_of)
from .grid_runner import run_grid_command
from .run_grid import PlannedRun, available_methods, run_folder
from .train_commands import check_before_training

ALIASES = {"lambda": "lam"}  # the flag's name for TrainConfig.lam
NOT_SWEPT = ("seed",)        # the seeds are the replicates of every point
CSV_FIELDS = ["param", "value", "method", "bits", "seed"] + RUN_FIELDS


def numeric_parameters() -> dict:
    """{TrainConfig field: int or float} for every numeric field: a default that is an int or a
    float (not a bool), or None with a numeric annotation."""
    from ..method.config import TrainConfig

    out = {}
    for f in dataclasses.fields(TrainConfig):
        default = f.default
        kind = None
        if isinstance(default, bool) or f.name in NOT_SWEPT:
            continue
        if isinstance(default, (int, float)):
            kind = type(default)
        elif default is None:
            words = set(str(f.type).replace("Optional[", " ").replace("]", " ").replace("|", " ").split())
            if words & {"int", "float"} and words <= {"int", "float", "None"}:
                kind = float if "float" in words else int
        if kind is not None:
            out[f.name] = kind
    return out


def parse_param(text: str, numeric: dict) -> tuple[str, list]:
    """'NAME=V1,V2,...' -> (TrainConfig field, [values of its type]); one line for each mistake."""
    name, sep, values_text = text.partition("=")
    name = name.strip().replace("-", "_")
    name = ALIASES.get(name, name)
    if not sep or not name:
        raise UsageError(f"--param: expected NAME=V1,V2,... (e.g. eta=0.1,0.3,0.5), got {text!r}")
    if name not in numeric:
        raise UsageError(f"--param {name}: not a numeric training parameter; choose from "
                         f"{', '.join(sorted(numeric))} (lambda for lam)")
    parts = [p.strip() for p in values_text.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"--param {name}: no values given (expected {name}=V1,V2,...)")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--param {name}={part}: {part!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"--param {name}={part}: expected a finite number")
        if numeric[name] is int:
            if value != int(value):
                raise UsageError(f"--param {name}={part}: {name} takes whole numbers")
            value = int(value)
        values.append(value)
    if len(set(values)) != len(values):
        raise UsageError(f"--param {name}: a value repeats in {values_text!r}")
    return name, values


def format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cmd_sweep(args, argv) -> int:
    from .. import __version__
    from ..method.config import TrainConfig, recipe_settings
    from ..method.train import resolve_modality

    refuse_run_seed(args, "sweep")
    method = parse_list(args.method or "dchml", "--method", available_methods())
    if len(method) != 1:
        raise UsageError("--method: a sweep trains one method; compare methods with `dchml compare`")
    method = method[0]
    if args.bits and len(args.bits) > 1:
        raise UsageError("--bits: a sweep takes one code length; compare lengths with `dchml compare`")
    numeric = numeric_parameters()
    params = [parse_param(text, numeric) for text in args.param]
    names = [name for name, _ in params]
    if len(set(names)) != len(names):
        raise UsageError(f"--param {next(n for n in names if names.count(n) > 1)} is given twice")
    seeds = list(range(args.seeds))
    threads = use_threads(args)
    fixed = {"method": method, **({"bits": args.bits[0]} if args.bits else {})}
    check_before_training(config_from_args(args, recipe_settings(args.recipe, method), **fixed), args.out)
    data = load_data(args, args.split_seed)
    base = {s: resolve_modality(data, config_from_args(args, recipe_settings(args.recipe, method), seed=s,
                                                       **fixed)).to_dict() for s in seeds}
    plans, points = {}, []  # points: (name, value, seed, run key)
    for name, values in params:
        for value in values:
            for s in seeds:
                cfg = {**base[s], name: value}
                try:
                    TrainConfig.from_dict(cfg)
                except ValueError as exc:
                    raise UsageError(f"--param {name}={format_value(value)}: {' '.join(str(exc).split())}") from None
                key = f"default_seed{s}" if cfg == base[s] else f"{name}={format_value(value)}_seed{s}"
                plans.setdefault(key, PlannedRun(key, cfg, {"seed": s}))
                points.append((name, value, s, key))
    plans = list(plans.values())
    command = command_line(argv)
    manifest = {"command": command, "method": method, "bits": base[0]["bits"], "params": dict(params),
                "seeds": args.seeds, "split_seed": args.split_seed, "dchml_version": __version__}
    return run_grid_command("sweep", args, plans, data, manifest, threads, lambda results: write_sweep(
        args.out, results, points, params, base[0], data, command=command, seeds=seeds,
        split_seed=args.split_seed))


def write_sweep(out: str, results: list, points: list, params: list, defaults: dict, data, *, command: str,
                seeds: list, split_seed: int) -> str:
    from ..io.atomic import write_text
    from .comparison_plots import plot_sweep
    from .experiment import data_summary

    by_key = {r.plan.key: r for r in results}
    tasks = tasks_of([r.metrics for r in results]) or ["i2t_map", "t2i_map"]
    method, bits = defaults["method"], defaults["bits"]
    lines = [f"# dchml sweep: {method_label(method)} at {bits} bits on {data.name}: "
             + ", ".join(name for name, _ in params), ""]
    lines += setting_lines(data_summary(data), command, results, seeds, split_seed) + [""]
    lines += ["One parameter at a time: each row changes only that parameter; every other one keeps its default "
              "(or the value its flag gave). " + legend(len(seeds)), ""]
    csv_rows = []
    for name, values in params:
        cells = {}  # (value, task) -> Cell
        for p_name, value, seed, key in points:
            if p_name != name:
                continue
            r = by_key[key]
            for task in tasks:
                cell = cells.setdefault((value, task), Cell())
                if r.metrics is None:
                    cell.failed[seed] = r.error
                elif isinstance(r.metrics.get(task), (int, float)):
                    cell.values[seed] = r.metrics[task]
        default = defaults.get(name)
        shown = lambda v, d=default: f"{format_value(v)} (default)" if v == d else format_value(v)  # noqa: E731
        table, leads = render_table(values, [(t, TASK_NAMES[t]) for t in tasks], cells, first_header=name,
                                    shown=shown)
        lines += [f"## {name} (default {format_value(default) if default is not None else '-'})", ""] + table
        lines += ["", "Best value vs second:", ""] + lead_lines(leads, shown) + [""]
        plot_sweep(name, values, default, {t: {v: cells[(v, t)] for v in values if (v, t) in cells} for t in tasks},
                   os.path.join(out, f"sweep_{name}.png"))
        lines += [f"![sensitivity to {name}](sweep_{name}.png)", ""]
        for p_name, value, seed, key in points:
            if p_name == name:
                r = by_key[key]
                for task in tasks:
                    csv_rows.append({"param": name, "value": value, "method": method, "bits": bits, "seed": seed,
                                     **csv_row(r, kind="run", task=task, value=(r.metrics or {}).get(task),
                                               cell=cells.get((value, task)),
                                               run_dir=os.path.relpath(run_folder(out, key), out))})
    lines += baseline_lines(results, tasks, seeds, out, csv_rows, method, bits)
    lines += failure_lines(results, lambda p: p.key)
    path = os.path.join(out, "sweep.md")
    write_text(path, "\n".join(lines))
    write_text(os.path.join(out, "sweep.csv"), csv_text(csv_rows, CSV_FIELDS))
    return path


def baseline_lines(results, tasks, seeds, out, csv_rows, method, bits) -> list[str]:
    """The shallow references, from each seed's first finished run (they do not depend on the
    loss's parameters), as a table and as CSV rows (appended to csv_rows)."""
    source = {}
    for r in results:
        if r.metrics and r.plan.axes["seed"] not in source:
            source[r.plan.axes["seed"]] = r
    names = baseline_order([r.metrics for r in source.values()])
    if not names:
        return []
    scored = [(seed, r, name, task, r.metrics["baselines"][name][task]) for seed, r in sorted(source.items())
              for name in names for task in tasks
              if isinstance((r.metrics["baselines"].get(name) or {}).get(task), (int, float))]
    cells = {}
    for seed, _, name, task, value in scored:
        cells.setdefault((baseline_label(name), task), Cell()).values[seed] = value
    for seed, r, name, task, value in scored:
        csv_rows.append({"param": "", "value": "", "method": baseline_label(name), "bits": bits, "seed": seed,
                         **csv_row(r, kind="baseline", task=task, value=value, cell=cells[(baseline_label(name), task)],
                                   run_dir=os.path.relpath(run_folder(out, r.plan.key), out))})
    rows = [baseline_label(n) for n in names]
    table, _ = render_table(rows, [(t, TASK_NAMES[t]) for t in tasks], cells, first_header="shallow reference")
    return ["## Shallow references", "", f"Fitted in each seed's first run ({method_label(method)}, {bits} bits); "
            "they depend on the split, the seed and the proxies, not on the loss's parameters.", ""] + table + [""]
