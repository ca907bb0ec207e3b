"""The figures of `dchml compare` and `dchml sweep` (matplotlib, Agg backend), each the mean over
seeds: precision@N and precision-recall of every method at one code length, one figure per task
(the papers' Fig. 3-4); the objective and validation MAP per epoch (Fig. 5); and one figure per
swept parameter with each task's MAP against the value and a mean ± std band (Fig. 6-8)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from ..io.atomic import write_atomic  # noqa: E402
from .comparison_table import TASK_NAMES  # noqa: E402


def save_png(fig, path: str) -> None:
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _pointwise_mean(series: list[list[float]]) -> list[float]:
    """The mean of several equally long lists, point by point (the shortest length)."""
    length = min(len(s) for s in series)
    return [sum(s[i] for s in series) / len(series) for i in range(length)]


def plot_task_curves(runs: dict, task: str, path: str, bits: int) -> bool:
    """runs: {row label: [metrics of each seed]} at one code length. Left: precision@N; right:
    precision-recall by Hamming radius; each the mean over seeds. False when no run has curves."""
    fig, (ax_pn, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.2))
    curve = task[:-len("_map")] if task.endswith("_map") else task  # metrics.json "curves" is keyed i2t, t2i, ...
    drawn = False
    for label, seeds in runs.items():
        curves = [m["curves"][curve] for m in seeds if curve in (m.get("curves") or {})]
        if not curves:
            continue
        drawn = True
        pn = [c["precision_at_n"] for c in curves if c.get("precision_at_n")]
        if pn:
            ax_pn.plot(pn[0]["n"][:min(len(p["n"]) for p in pn)], _pointwise_mean([p["precision"] for p in pn]),
                       marker="o", markersize=3, label=label)
        pr = [c["pr"] for c in curves if c.get("pr")]
        if pr:
            ax_pr.plot(_pointwise_mean([p["recall"] for p in pr]), _pointwise_mean([p["precision"] for p in pr]),
                       marker=".", label=label)
    if not drawn:
        plt.close(fig)
        return False
    n_seeds = max(len(seeds) for seeds in runs.values())
    ax_pn.set(title=f"precision@N, {TASK_NAMES.get(task, task)}, {bits} bits", xlabel="N (top-N retrieved)",
              ylabel="precision@N", ylim=(0, 1.02))
    ax_pr.set(title=f"precision-recall by Hamming radius, {TASK_NAMES.get(task, task)}, {bits} bits",
              xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    for ax in (ax_pn, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}", fontsize=9)
    save_png(fig, path)
    return True


def _per_epoch_mean(histories: list[list[dict]], value) -> tuple[list[int], list[float]]:
    """Epochs and the mean of value(record) over the seeds that reached each epoch (runs stopped
    early have fewer epochs) and have a value there."""
    by_epoch = {}
    for history in histories:
        for record in history:
            v = value(record)
            if v is not None:
                by_epoch.setdefault(record["epoch"], []).append(v)
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def _validation_map(record: dict):
    """The mean of a record's validation MAPs over its tasks (val_i2t_map, val_t2i_map, ...)."""
    values = [v for k, v in record.items() if k.startswith("val_") and k.endswith("_map") and v is not None]
    return sum(values) / len(values) if values else None


def plot_convergence(runs: dict, path: str, bits: int) -> None:
    """runs: {row label: [metrics of each seed]}: the eq. 16 objective and the validation MAP per
    epoch, each the mean over the seeds that reached the epoch."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, seeds in runs.items():
        histories = [m.get("history") or [] for m in seeds]
        line, = ax_loss.plot(*_per_epoch_mean(histories, lambda r: r.get("objective")), label=label)
        epochs, values = _per_epoch_mean(histories, _validation_map)
        if epochs:
            ax_map.plot(epochs, values, marker="o", markersize=3, color=line.get_color(), label=label)
    ax_loss.set(title=f"objective per epoch, {bits} bits", xlabel="epoch", ylabel="objective (per training pair)")
    ax_map.set(title="validation MAP (mean of the tasks)", xlabel="epoch", ylabel="MAP")
    for ax in (ax_loss, ax_map):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.suptitle("mean over the seeds that reached each epoch", fontsize=9)
    save_png(fig, path)


def plot_sweep(param: str, values: list, default, cells: dict, path: str) -> None:
    """cells: {task: {value: Cell}}: each task's mean MAP against the value, with a ± std band;
    the default value dotted. A log axis when the values are positive and span a factor >= 100."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for task, by_value in cells.items():
        xs, means, stds = [], [], []
        for value in values:
            cell = by_value.get(value)
            if cell is None or not cell.values:
                continue
            mean, std = cell.stats()
            xs.append(value)
            means.append(mean)
            stds.append(std or 0.0)
        if not xs:
            continue
        line, = ax.plot(xs, means, marker="o", label=TASK_NAMES.get(task, task))
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=line.get_color(), alpha=0.2)
    positive = [v for v in values if v > 0]
    if len(positive) == len(values) and max(values) >= 100 * min(values):
        ax.set_xscale("log")
    if default is not None:
        ax.axvline(default, color="grey", linestyle=":", label=f"default {default:g}")
    n_seeds = max((len(c.values) for by_value in cells.values() for c in by_value.values()), default=0)
    ax.set(title=f"sensitivity to {param} (mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''})",
           xlabel=param, ylabel="MAP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)
