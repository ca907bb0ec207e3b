"""The run report: report.md plus PNG plots (matplotlib, Agg backend) from one or more runs'
metrics dicts (the content of metrics.json), so one report can compare methods side by side.

Plots: pr_curves.png (precision-recall by Hamming radius, I->T and T->I), precision_at_n.png
(precision@N, I->T and T->I), training.png (eq. 16 objective and MAP per epoch).
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from ..io.atomic import write_atomic, write_text  # noqa: E402
from .comparison_table import BASELINE_ROWS  # noqa: E402

TASKS = (("i2t", "I->T (image query, text database)"), ("t2i", "T->I (text query, image database)"))
LABELS = {"dchml": "DCHML", "dchml_p": "DCHML_P", "dchml_q": "DCHML_Q"}


def _label(name: str, metrics: dict) -> str:
    return f"{LABELS.get(metrics.get('method'), name)} ({metrics['bits']} bits)"


def _save(fig, path: str) -> None:
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_pr(runs: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (task, title) in zip(axes, TASKS):
        for name, m in runs.items():
            curve = m.get("curves", {}).get(task, {}).get("pr")
            if curve:
                ax.plot(curve["recall"], curve["precision"], marker=".", label=_label(name, m))
        ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Precision-recall by Hamming radius r = 0..k")
    _save(fig, path)


def plot_precision_at_n(runs: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (task, title) in zip(axes, TASKS):
        for name, m in runs.items():
            curve = m.get("curves", {}).get(task, {}).get("precision_at_n")
            if curve:
                ax.plot(curve["n"], curve["precision"], marker="o", markersize=3, label=_label(name, m))
        ax.set(title=title, xlabel="N (top-N retrieved)", ylabel="precision@N", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_training(runs: dict, path: str) -> None:
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for name, m in runs.items():
        hist = m.get("history", [])
        epochs = [r["epoch"] for r in hist]
        line, = ax_loss.plot(epochs, [r["objective"] for r in hist], label=_label(name, m))
        evaluated = [r for r in hist if r.get("val_i2t_map") is not None]
        ep = [r["epoch"] for r in evaluated]
        ax_map.plot(ep, [r["val_i2t_map"] for r in evaluated], marker="o", markersize=3, color=line.get_color(),
                    label=f"{_label(name, m)} I->T")
        ax_map.plot(ep, [r["val_t2i_map"] for r in evaluated], marker="s", markersize=3, linestyle="--",
                    color=line.get_color(), label=f"{_label(name, m)} T->I")
        kept = (m.get("selection") or {}).get("kept_epoch")
        if kept and evaluated:
            ax_map.axvline(kept, color=line.get_color(), alpha=0.3, linestyle=":")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_map):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set(title="objective (eq. 16, per training pair)", xlabel="epoch", ylabel="loss")
    ax_map.set(title="validation MAP during training (dotted: kept epoch)", xlabel="epoch", ylabel="MAP")
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def _fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(scores: dict) -> float:
    return (scores["i2t_map"] + scores["t2i_map"]) / 2


def _map_table(runs: dict) -> list[str]:
    """One table as papers present them: a row per method and direction, a column per code length;
    the baselines of each code length below the trained methods."""
    bits = sorted({m["bits"] for m in runs.values()})
    methods = list(dict.fromkeys(LABELS.get(m["method"], m["method"]) for m in runs.values()))
    cell = {}
    for m in runs.values():
        cell[(LABELS.get(m["method"], m["method"]), m["bits"])] = m
        for name, label in BASELINE_ROWS:
            ref = m.get("baselines", {}).get(name)
            if ref and "i2t_map" in ref:
                cell.setdefault((label, m["bits"]), ref)
    rows = methods + [label for _, label in BASELINE_ROWS if any((label, b) in cell for b in bits)]
    lines = ["| method | task | " + " | ".join(f"{b} bits" for b in bits) + " |",
             "|---|---|" + "---|" * len(bits)]
    for row in rows:
        for task, name in (("i2t", "I->T"), ("t2i", "T->I")):
            values = [_fmt(cell[(row, b)][f"{task}_map"]) if (row, b) in cell else "-" for b in bits]
            shown = f"**{row}**" if row in methods else row
            lines.append(f"| {shown} | {name} | " + " | ".join(values) + " |")
    return lines


def verdicts(runs: dict) -> list[str]:
    """Plain-language comparison of every trained run with its baselines."""
    out = []
    for name, m in runs.items():
        label = f"{LABELS.get(m['method'], name)} at {m['bits']} bits"
        ours = _mean(m)
        linear = m.get("baselines", {}).get("linear", {})
        chance = m.get("baselines", {}).get("chance", {})
        if chance and ours < _mean(chance) + 0.02:
            out.append(f"{label} is at chance level (mean MAP {ours:.4f}, chance {_mean(chance):.4f}): its codes "
                       "carry no label information. Check that the features and labels belong together.")
        elif "i2t_map" in linear and ours <= _mean(linear):
            out.append(f"{label} does NOT beat the linear hasher (mean MAP {ours:.4f} vs {_mean(linear):.4f}). "
                       "Train longer (--epochs), or try another --lr; the linear hasher is the better code here.")
        elif "i2t_map" in linear:
            out.append(f"{label} beats the linear hasher by {ours - _mean(linear):+.4f} mean MAP "
                       f"({ours:.4f} vs {_mean(linear):.4f}; chance {_mean(chance):.4f}).")
    return out


def render_markdown(runs: dict, *, title: str, notes: list[str] | None = None) -> str:
    first = next(iter(runs.values()))
    d = first["data"]
    lines = [f"# {title}", ""]
    lines += [f"Data: **{d['name']}**, {d['n']} pairs, {d['n_labels']} labels, image {d['image']}, "
              f"text {d['text_dim']}-d bag-of-words; {d['n_query']} queries, {d['n_retrieval']} database "
              f"items, {d['n_train']} training pairs (from the database).",
              f"Device: {first['device']}. Date: {first['date']}. dchml {first['dchml_version']}, "
              f"torch {first['torch_version']}.", ""]
    if first.get("command"):
        lines += [f"Command: `{first['command']}`", ""]
    lines += [f"## MAP@{first['topk']}", ""] + _map_table(runs) + [""]
    lines += ["The linear hasher is ridge regression from each modality's normalised features to the mean "
              "proxy code of the item's labels, then sign; the kernel hasher regresses RBF features on up to 1000 "
              "anchor items instead (width, strength and feature space chosen on the validation slice); "
              "chance is the exact MAP of a random ranking.", ""]
    lines += verdicts(runs) + [""]
    lines += ["## Runs", "",
              "| method | bits | kept epoch | epochs run | seconds/epoch | proxy Hamming min / mean |",
              "|---|---|---|---|---|---|"]
    for name, m in runs.items():
        p = m.get("proxies", {})
        sel = m.get("selection") or {}
        lines.append(f"| {LABELS.get(m['method'], name)} | {m['bits']} | {sel.get('kept_epoch', m['epochs'])} "
                     f"| {m['epochs']} | {_fmt(m['seconds_per_epoch'], 2)} | "
                     f"{_fmt(p.get('min_hamming'), 0)} / {_fmt(p.get('mean_hamming'), 1)} |")
    lines += ["", "Model selection (the queries are never used to choose anything):", ""]
    for name, m in runs.items():
        sel = m.get("selection") or {}
        if sel:
            lines.append(f"- {LABELS.get(m['method'], name)} at {m['bits']} bits: {sel['reason']}.")
    norm = first.get("normalization")
    if norm:
        lines += ["", "Input normalisation (fitted on the training items): " + "; ".join(
            f"{modality} {_describe_norm(v)}" for modality, v in norm.items()) + "."]
    lines += ["", "## Settings", "", "| method | bits | " + " | ".join(_SETTINGS) + " |",
              "|---|---|" + "---|" * len(_SETTINGS)]
    for name, m in runs.items():
        c = m["config"]
        lines.append(f"| {LABELS.get(m['method'], name)} | {m['bits']} | "
                     + " | ".join(str(c.get(k, "-")) for k in _SETTINGS) + " |")
    if any(m["method"] == "dchml_q" for m in runs.values()):
        lines += ["", "DCHML_Q trains with gamma = 0 whatever the gamma column says."]
    lines += ["", "## Plots", "", "![precision-recall](pr_curves.png)", "", "![precision@N](precision_at_n.png)", "",
              "![training](training.png)", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _describe_norm(v: dict) -> str:
    if v.get("kind") == "pixels":
        return "pixels, " + v["detail"]
    if v.get("kind") == "none":
        return "none (features as given)"
    text = {"standardize": "standardised per dimension", "log": "log1p of the shifted values, then standardised"}
    extra = f", {v['constant_dims']} constant dimensions set to 0" if v.get("constant_dims") else ""
    return f"{text.get(v['kind'], v['kind'])}, clipped to +-{v['clip']:g}{extra}"


_SETTINGS = ("optimizer", "lr", "schedule", "epochs", "batch_size", "eta", "mu", "lam", "gamma", "alpha", "beta", "seed")


def write_report(out_dir: str, runs: dict, *, title: str = "dchml run report", notes: list[str] | None = None) -> str:
    """Write out_dir/report.md and its three PNGs from {run name: metrics dict}; returns the .md path."""
    if not runs:
        raise ValueError("write_report needs at least one run")
    plot_pr(runs, os.path.join(out_dir, "pr_curves.png"))
    plot_precision_at_n(runs, os.path.join(out_dir, "precision_at_n.png"))
    plot_training(runs, os.path.join(out_dir, "training.png"))
    text = render_markdown(runs, title=title, notes=notes)
    path = os.path.join(out_dir, "report.md")
    write_text(path, text)
    return path
