"""The run report: report.md plus PNG plots (matplotlib, Agg backend) from one or more runs'
metrics dicts (the content of metrics.json), so one report can compare methods side by side.

Plots: pr_curves.png (precision-recall by Hamming radius), precision_at_n.png (precision@N), one
panel per retrieval task the runs have (I->T, T->I, I->I, T->T), and training.png (the logged
objective and validation MAP per epoch).
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from ..io.atomic import write_atomic, write_text  # noqa: E402
from ..method.methods import METHODS, TASK_NAMES  # noqa: E402
from .comparison_table import BASELINE_ROWS  # noqa: E402

TASK_TITLES = {"i2t": "I->T (image query, text database)", "t2i": "T->I (text query, image database)",
               "i2i": "I->I (image query, image database)", "t2t": "T->T (text query, text database)"}
LABELS = {name: method.title for name, method in METHODS.items()}


def run_tasks(metrics: dict) -> list[str]:
    """The tasks a run (or a baseline's scores) holds a MAP for, in the order I->T, T->I, I->I, T->T."""
    return [task for task in TASK_NAMES if metrics.get(f"{task}_map") is not None]


def main_tasks(metrics: dict) -> list[str]:
    """The tasks a run is judged on: both directions across modalities for a cross-modal run, its
    one within-modality task for a single-modality run."""
    tasks = run_tasks(metrics)
    cross = [t for t in tasks if t in ("i2t", "t2i")]
    return cross or tasks


def _tasks_of_runs(runs: dict) -> list[str]:
    present = {task for m in runs.values() for task in run_tasks(m)}
    return [task for task in TASK_NAMES if task in present]


def _label(name: str, metrics: dict) -> str:
    return f"{LABELS.get(metrics.get('method'), name)} ({metrics['bits']} bits)"


def _save(fig, path: str) -> None:
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _task_axes(runs: dict, height: float = 4.0):
    tasks = _tasks_of_runs(runs) or ["i2t"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), height), squeeze=False)
    return fig, list(zip(axes[0], tasks))


def plot_pr(runs: dict, path: str) -> None:
    fig, panels = _task_axes(runs)
    for ax, task in panels:
        for name, m in runs.items():
            curve = m.get("curves", {}).get(task, {}).get("pr")
            if curve:
                ax.plot(curve["recall"], curve["precision"], marker=".", label=_label(name, m))
        ax.set(title=TASK_TITLES[task], xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        _legend_below(ax)
    fig.suptitle("Precision-recall by Hamming radius r = 0..k (mean over all queries; a query with nothing "
                 "within r counts precision 0,\nwhich pulls the small radii down)", fontsize=9)
    _save(fig, path)


def plot_precision_at_n(runs: dict, path: str) -> None:
    fig, panels = _task_axes(runs)
    for ax, task in panels:
        for name, m in runs.items():
            curve = m.get("curves", {}).get(task, {}).get("precision_at_n")
            if curve:
                ax.plot(curve["n"], curve["precision"], marker="o", markersize=3, label=_label(name, m))
        ax.set(title=TASK_TITLES[task], xlabel="N (top-N retrieved)", ylabel="precision@N", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        _legend_below(ax)
    _save(fig, path)


_MARKERS = ("o", "s", "^", "v")


def plot_training(runs: dict, path: str) -> None:
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for name, m in runs.items():
        hist = m.get("history", [])
        epochs = [r["epoch"] for r in hist]
        line, = ax_loss.plot(epochs, [r["objective"] for r in hist], label=_label(name, m))
        validated = [k for k in (hist[0] if hist else {}) if k.startswith("val_") and k.endswith("_map")]
        for i, key in enumerate(validated):
            evaluated = [r for r in hist if r.get(key) is not None]
            ax_map.plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker=_MARKERS[i % 4],
                        markersize=3, linestyle="-" if i == 0 else "--", color=line.get_color(),
                        label=f"{_label(name, m)} {TASK_NAMES.get(key[4:-4], key)}")
        kept = (m.get("selection") or {}).get("kept_epoch")
        if kept and any(r.get(k) is not None for r in hist for k in validated):
            ax_map.axvline(kept, color=line.get_color(), alpha=0.3, linestyle=":")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_map):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set(title="logged objective (per training item)", xlabel="epoch", ylabel="loss")
    ax_map.set(title="validation MAP during training (dotted: kept epoch)", xlabel="epoch", ylabel="MAP")
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        _legend_below(ax)
    _save(fig, path)


def _legend_below(ax) -> None:
    """The legend under the plot, where it cannot cover a curve."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(scores: dict, tasks) -> float:
    return sum(scores[f"{task}_map"] for task in tasks) / len(tasks)


def _map_table(runs: dict) -> list[str]:
    """One table as papers present them: a row per method and task, a column per code length;
    the baselines of each code length below the trained methods."""
    bits = sorted({m["bits"] for m in runs.values()})
    tasks = _tasks_of_runs(runs)
    methods = list(dict.fromkeys(LABELS.get(m["method"], m["method"]) for m in runs.values()))
    cell = {}
    for m in runs.values():
        cell[(LABELS.get(m["method"], m["method"]), m["bits"])] = m
        for name, label in BASELINE_ROWS:
            ref = m.get("baselines", {}).get(name)
            if ref and run_tasks(ref):
                cell.setdefault((label, m["bits"]), ref)
    rows = methods + [label for _, label in BASELINE_ROWS if any((label, b) in cell for b in bits)]
    lines = ["| method | task | " + " | ".join(f"{b} bits" for b in bits) + " |",
             "|---|---|" + "---|" * len(bits)]
    for row in rows:
        for task in tasks:
            values = [_fmt(cell[(row, b)].get(f"{task}_map")) if (row, b) in cell else "-" for b in bits]
            if all(v == "-" for v in values):
                continue
            shown = f"**{row}**" if row in methods else row
            lines.append(f"| {shown} | {TASK_NAMES[task]} | " + " | ".join(values) + " |")
    return lines


def verdicts(runs: dict) -> list[str]:
    """Plain-language comparison of every trained run with the best of its shallow baselines (the
    kernel or the linear hasher) and chance, on the tasks it is judged on."""
    out = []
    for name, m in runs.items():
        label = f"{LABELS.get(m['method'], name)} at {m['bits']} bits"
        tasks = main_tasks(m)
        if not tasks:
            continue
        ours = _mean(m, tasks)
        baselines = m.get("baselines", {})
        chance = baselines.get("chance", {})
        shallow = [(_mean(baselines[key], tasks), title) for key, title in (("kernel", "kernel hasher"),
                                                                           ("linear", "linear hasher"))
                   if all(f"{t}_map" in baselines.get(key, {}) for t in tasks)]
        if chance and all(f"{t}_map" in chance for t in tasks) and ours < _mean(chance, tasks) + 0.02:
            out.append(f"{label} is at chance level (mean MAP {ours:.4f}, chance {_mean(chance, tasks):.4f}): its codes "
                       "carry no label information. Check that the features and labels belong together.")
            continue
        if not shallow:
            continue
        best, title = max(shallow)
        if ours <= best:
            out.append(f"{label} does NOT beat the {title}, the best shallow baseline (mean MAP {ours:.4f} vs "
                       f"{best:.4f}). Train longer (--epochs), or try another --lr; the {title} is the better code "
                       "here.")
        else:
            versus_chance = f"; chance {_mean(chance, tasks):.4f}" if chance else ""
            out.append(f"{label} beats the {title}, the best shallow baseline, by {ours - best:+.4f} mean MAP "
                       f"({ours:.4f} vs {best:.4f}{versus_chance}).")
    return out


def _skipped_baselines(runs: dict) -> str:
    skipped = {ref["skipped"] for m in runs.values() for ref in (m.get("baselines") or {}).values()
               if isinstance(ref, dict) and "skipped" in ref}
    return "".join(f" Not run here: {reason}." for reason in sorted(skipped))


def _describe_data(d: dict) -> str:
    parts = []
    if d.get("image"):
        parts.append(f"image {d['image']}")
    if d.get("text_dim"):
        parts.append(f"text {d['text_dim']}-d bag-of-words")
    return (f"Data: **{d['name']}**, {d['n']} items, {d['n_labels']} labels, {', '.join(parts)}; {d['n_query']} "
            f"queries, {d['n_retrieval']} database items, {d['n_train']} training items.")


def render_markdown(runs: dict, *, title: str, notes: list[str] | None = None) -> str:
    first = next(iter(runs.values()))
    d = first["data"]
    lines = [f"# {title}", ""]
    lines += [_describe_data(d),
              f"Device: {first['device']}. Date: {first['date']}. dchml {first['dchml_version']}, "
              f"torch {first['torch_version']}.", ""]
    if first.get("command"):
        lines += [f"Command: `{first['command']}`", ""]
    lines += [f"## MAP@{first['topk']}", ""] + _map_table(runs) + [""]
    lines += ["The linear hasher is ridge regression from each modality's normalised features to the code an "
              "item should have (the mean category code of its labels; CSQ: its hash centre), then sign; the "
              "kernel hasher regresses RBF features on up to 1000 anchor items instead (width, strength and feature "
              "space chosen on the validation slice); chance is the exact MAP of a random ranking."
              + _skipped_baselines(runs), ""]
    lines += verdicts(runs) + [""]
    lines += ["## Runs", "",
              "| method | bits | kept epoch | epochs run | seconds/epoch | category-code Hamming min / mean |",
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
    for name, m in runs.items():
        backbone = m.get("backbone") or {}
        if backbone:
            lines.append(f"- Image backbone of {LABELS.get(m['method'], name)} at {m['bits']} bits: "
                         + _describe_backbone(backbone) + ".")
    norm = first.get("normalization")
    if norm:
        lines += ["", "Input normalisation (fitted on the training items): " + "; ".join(
            f"{modality} {_describe_norm(v)}" for modality, v in norm.items()) + "."]
    lines += ["", "## Settings", "", "| method | bits | " + " | ".join(_SETTINGS) + " |",
              "|---|---|" + "---|" * len(_SETTINGS)]
    for name, m in runs.items():
        c = m["config"]
        lines.append(f"| {LABELS.get(m['method'], name)} | {m['bits']} | "
                     + " | ".join("-" if c.get(k) is None else str(c[k]) for k in _SETTINGS) + " |")
    if any(m["method"] == "dchml_q" for m in runs.values()):
        lines += ["", "DCHML_Q trains with gamma = 0 whatever the gamma column says."]
    lines += ["", "## Plots", "", "![precision-recall](pr_curves.png)", "",
              "Precision and recall at each Hamming radius r are means over all queries; a query with no item "
              "within r counts precision 0 (docs/spec.md C25), so the curves' small-radius ends sit low when many "
              "queries find nothing that close.", "", "![precision@N](precision_at_n.png)", "",
              "![training](training.png)", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _describe_backbone(b: dict) -> str:
    if b.get("random"):
        return f"{b['title']} with **RANDOM weights** ({b.get('why', 'no weights file')}): not pretrained"
    return f"{b['title']}, weights {b['weights']} (SHA-256 {b['sha256']})"


def _describe_norm(v: dict) -> str:
    if v.get("kind") == "pixels":
        return "pixels, " + v["detail"]
    if v.get("kind") == "none":
        return "none (features as given)"
    text = {"standardize": "standardised per dimension", "log": "log1p of the shifted values, then standardised"}
    extra = f", {v['constant_dims']} constant dimensions set to 0" if v.get("constant_dims") else ""
    return f"{text.get(v['kind'], v['kind'])}, clipped to +-{v['clip']:g}{extra}"


_SETTINGS = ("optimizer", "lr", "schedule", "epochs", "batch_size", "eta", "mu", "lam", "gamma", "sigma", "alpha",
             "beta", "seed")


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
