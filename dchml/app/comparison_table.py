"""Tables over seeds, shared by `dchml compare` and `dchml sweep`: the tasks a run reports, a
cell's MAP mean ± std over seeds, the best of each column in bold with the seed-spread mark
(dchml/app/seed_stats.py), and the CSV with one row per run and task."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from .seed_stats import Lead, mean_std, paired_lead

# Every retrieval task a run's metrics.json may hold, in the tables' order.
TASKS = (("i2t_map", "I->T"), ("t2i_map", "T->I"), ("i2i_map", "I->I"), ("t2t_map", "T->T"))
TASK_NAMES = dict(TASKS)
# The shallow references of metrics.json "baselines", strongest first, with their row labels.
BASELINE_ROWS = (("kernel", "kernel hasher"), ("linear", "linear hasher"), ("chance", "chance"))
NO_CONTEST = ("chance",)  # rows never marked best: a floor, not a competitor
MARK = "†"


def tasks_of(metrics_list) -> list[str]:
    """The tasks any of these metrics dicts reports, in TASKS order."""
    metrics_list = [m for m in metrics_list if m]
    return [task for task, _ in TASKS if any(isinstance(m.get(task), (int, float)) for m in metrics_list)]


def baseline_label(name: str) -> str:
    return dict(BASELINE_ROWS).get(name, name)


def baseline_order(metrics_list) -> list[str]:
    """The baseline names these runs report: the known ones first, in BASELINE_ROWS order."""
    names = []
    for m in metrics_list:
        for name, scores in ((m or {}).get("baselines") or {}).items():
            if isinstance(scores, dict) and name not in names:
                names.append(name)
    known = [n for n, _ in BASELINE_ROWS if n in names]
    return known + [n for n in names if n not in known]


@dataclass
class Cell:
    """One table cell: the MAP of each seed that finished, and the reason of each that failed."""

    values: dict = field(default_factory=dict)   # seed -> MAP
    failed: dict = field(default_factory=dict)   # seed -> one-line reason

    def stats(self) -> tuple[float | None, float | None]:
        return mean_std(self.values[s] for s in sorted(self.values))


def format_cell(cell: Cell | None, *, bold: bool = False, mark: bool = False) -> str:
    if cell is None or (not cell.values and not cell.failed):
        return "-"
    if not cell.values:
        return "failed"
    mean, std = cell.stats()
    text = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    text = f"**{text}**" if bold else text
    if mark:
        text += f" {MARK}"
    if cell.failed:
        text += f" ({len(cell.values)} of {len(cell.values) + len(cell.failed)} seeds)"
    return text


@dataclass(frozen=True)
class ColumnLead:
    header: str
    best: str
    second: str | None
    lead: Lead | None


def render_table(rows: list[str], columns: list[tuple], cells: dict, *, first_header: str,
                 shown=None) -> tuple[list[str], list[ColumnLead]]:
    """Markdown lines of a table (rows x columns; columns are (key, header) pairs; cells keyed
    by (row, column key)), the best finished row of each column in bold and marked when its lead
    over the second is within the seed spread. shown(row) gives the row's label (default: row)."""
    shown = shown or (lambda row: row)
    winners, leads = {}, []
    for key, header in columns:
        ranked = [r for r in rows if r not in NO_CONTEST and cells.get((r, key)) and cells[(r, key)].values]
        ranked.sort(key=lambda r: -cells[(r, key)].stats()[0])  # stable: ties keep the row order
        if not ranked:
            continue
        best, second = ranked[0], (ranked[1] if len(ranked) > 1 else None)
        lead = paired_lead(cells[(best, key)].values, cells[(second, key)].values) if second else None
        winners[key] = (best, lead is not None and lead.within_spread)
        leads.append(ColumnLead(header, best, second, lead))
    lines = [f"| {first_header} | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        values = []
        for key, _ in columns:
            best, marked = winners.get(key, (None, False))
            values.append(format_cell(cells.get((row, key)), bold=row == best, mark=row == best and marked))
        lines.append(f"| {shown(row)} | " + " | ".join(values) + " |")
    return lines, leads


def lead_lines(leads: list[ColumnLead], shown=None) -> list[str]:
    """One line per column: who leads whom by how much, and whether that is within the seed spread."""
    shown = shown or (lambda row: row)
    out = []
    for c in leads:
        if c.second is None:
            out.append(f"- {c.header}: {shown(c.best)} is the only finished row.")
            continue
        verdict = (f"within the seed spread {MARK}" if c.lead.within_spread else "larger than the seed spread")
        out.append(f"- {c.header}: {shown(c.best)} over {shown(c.second)} by {c.lead.describe()}: {verdict}.")
    return out


def legend(n_seeds: int) -> str:
    return (f"Cells: MAP mean ± sample standard deviation over {n_seeds} seed{'s' if n_seeds != 1 else ''} "
            "(a cell with failed seeds says how many finished). Bold: the best of its column (chance aside). "
            f"{MARK}: its lead over the second is within the seed spread, by a paired comparison over seeds: a "
            "paired t-test not significant at 0.05 with 3 or more seeds, mean difference <= its standard deviation "
            "with 2, always with 1 (docs/compare.md).")


# --- the CSV ---------------------------------------------------------------------------------------

RUN_FIELDS = ["kind", "task", "map", "status", "error", "cell_mean", "cell_std", "cell_seeds", "kept_epoch",
              "epochs_run", "train_seconds", "wall_seconds", "topk", "data_content_sha256", "data_split_sha256",
              "device", "date", "dchml_version", "torch_version", "run_dir", "config"]


def csv_row(result, *, kind: str, task: str, value, cell: Cell | None, run_dir: str) -> dict:
    """The columns every CSV row has, for one run (or a baseline scored in it) and one task."""
    m = result.metrics or {}
    mean, std = cell.stats() if cell is not None and cell.values else (None, None)
    fingerprint = (m.get("data") or {}).get("fingerprint") or {}
    return {"kind": kind, "task": TASK_NAMES.get(task, task), "map": value, "status": result.status,
            "error": result.error or "", "cell_mean": mean, "cell_std": std,
            "cell_seeds": len(cell.values) if cell is not None else None,
            "kept_epoch": (m.get("selection") or {}).get("kept_epoch"), "epochs_run": m.get("epochs"),
            "train_seconds": m.get("train_seconds"), "wall_seconds": result.wall_seconds, "topk": m.get("topk"),
            "data_content_sha256": fingerprint.get("content"), "data_split_sha256": fingerprint.get("split"),
            "device": m.get("device"), "date": m.get("date"), "dchml_version": m.get("dchml_version"),
            "torch_version": m.get("torch_version"), "run_dir": run_dir,
            "config": json.dumps(m.get("config") or result.plan.cfg, sort_keys=True)}


def csv_text(rows: list[dict], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in fields})
    return buffer.getvalue()


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


# --- what every comparison page says first ----------------------------------------------------------

def setting_lines(summary: dict, command: str, results: list, seeds: list, split_seed: int) -> list[str]:
    """Data, split, seeds, command, device, versions and how many runs were trained, kept or failed."""
    import datetime

    import torch

    from .. import __version__

    finished = [r.metrics for r in results if r.metrics]
    devices = sorted({m.get("device") for m in finished if m.get("device")})
    counts = {s: sum(r.status == s for r in results) for s in ("trained", "resumed", "retrained", "kept", "failed")}
    said = ", ".join(f"{n} {what}" for what, n in (("trained now", counts["trained"]),
                                                     ("resumed", counts["resumed"]),
                                                     ("trained again (--force)", counts["retrained"]),
                                                     ("kept from an earlier command", counts["kept"]),
                                                     ("failed", counts["failed"])) if n)
    return [f"Data: **{summary['name']}**, {summary['n']} items, {summary['n_labels']} labels, "
            f"image {summary['image']}, text {summary['text_dim']}-d; {summary['n_query']} queries, {summary['n_retrieval']} database items, "
            f"{summary['n_train']} training items. The split is the same for every run (the file's own, else drawn "
            f"with split seed {split_seed}; split sha256 {summary['fingerprint']['split'][:12]}).",
            f"Seeds: {', '.join(map(str, seeds))}: each seed sets a run's initialisation, shuffles and validation "
            "slice; the runs of one seed share them across rows, so rows are compared seed by seed.",
            f"Command: `{command}`", "",
            f"{len(results)} runs: {said}. Device: {'; '.join(devices) or '-'}. Written "
            f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; dchml {__version__}, "
            f"torch {torch.__version__}."]


def failure_lines(results: list, shown) -> list[str]:
    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return []
    return ["## Failed runs", "", "Rerun the same command to try them again; the finished runs are kept.", ""] + [
        f"- {shown(r.plan)} (`runs/{r.plan.key}`): {r.error}" for r in failed] + [""]
