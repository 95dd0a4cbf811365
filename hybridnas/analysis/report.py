"""``hybridnas report STUDY -o report.html``: one self-contained HTML file of a study.

The same figures as the dashboard (Pareto plot, layouts of the Pareto set, hypervolume,
effects of ratio, placement, fusion and merge, importance) and tables (the Pareto set, effect
summaries, every trial), with plotly.js inlined once, so the file opens anywhere offline.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from pathlib import Path

import plotly.io as pio

from hybridnas import pareto
from hybridnas.analysis import figures
from hybridnas.analysis.effects import effect_summary, param_importances
from hybridnas.analysis.fidelity import FidelityError, rung_agreement, seed_spread, study_rung_fractions
from hybridnas.analysis.study import StudyData, load_study
from hybridnas.errors import UserError
from hybridnas.studies.storage import status_counts

__all__ = ["render_report", "write_report"]

EFFECT_DIMENSIONS = ("attn_ratio", "placement", "fusion", "merge_op")
TRIAL_COLUMNS = ("trial", "status", "baseline", "pattern", "fusion", "merge_op", "n_attn", "params", "val_loss")
STYLE = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 24px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; font-family: monospace; }
.cells span { font-size: 15px; }
"""


def write_report(storage: str, study: str, path: str | Path) -> Path:
    """Write the report of ``study`` to ``path``; returns the path."""
    path = Path(path)
    text = render_report(load_study(storage, study, full=True), storage)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"-o {path}: cannot write ({exc.strerror or exc})") from None
    return path


def render_report(data: StudyData, storage: str) -> str:
    """The report's HTML text."""
    objectives = data.objectives
    plots = [figures.pareto_figure(data, data.rows, objectives[:3], title=f"{data.name}: Pareto plot")]
    if len(objectives) > 2:  # each pair as well, when there are three or more
        plots += [figures.pareto_figure(data, data.rows, [objectives[0], o]) for o in objectives[1:]]
    front_rows = _front(data)
    if front_rows:
        plots.append(figures.layout_strip([(f"trial {r['trial']}", r["pattern"]) for r in front_rows],
                                          title="layouts of the Pareto set"))
    plots.append(figures.hypervolume_figure(data, objectives))
    plots += [figures.effect_figure(data.rows, d) for d in EFFECT_DIMENSIONS if data.dimension_values(d)]
    importance = _importance(storage, data.name)
    if isinstance(importance, dict):
        plots.append(figures.importance_figure(importance))

    parts = [f"<h1>hybridnas study {html.escape(data.name)}</h1>",
             f"<p>{html.escape(storage)} — {len(data.rows)} trials — written {dt.datetime.now():%Y-%m-%d %H:%M}</p>",
             _counts(data)]
    for i, figure in enumerate(plots):
        parts.append(pio.to_html(figure, full_html=False, include_plotlyjs="inline" if i == 0 else False,
                                 config={"displaylogo": False}))
        if i == 0:
            parts.append("<h2>Pareto set</h2>" + _table(front_rows, objectives))
    parts.append("<h2>Effects on val_loss</h2>")
    for by in (("fusion", "merge_op"), ("attn_ratio",), ("placement",)):
        groups = effect_summary(data.complete(), by)
        if groups:
            parts.append(f"<h3>by {' x '.join(by)}</h3>" + _effects_table(groups, by))
    if not isinstance(importance, dict):
        parts.append(f"<p>Importance: {html.escape(importance)}</p>")
    parts.append(_fidelity(data, storage))
    parts.append("<h2>Every trial</h2>" + _table(data.rows, objectives))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>hybridnas: {html.escape(data.name)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def _front(data: StudyData) -> list[dict]:
    """The complete trials on the first front of the study's objectives (unmeasured rows
    are never on it: pareto_front leaves out rows with a NaN)."""
    rows = data.complete()
    front = pareto.pareto_front(data.values(data.objectives, rows), [o.direction for o in data.objectives])
    return [rows[i] for i in front]


def _importance(storage: str, study: str) -> dict | str:
    try:
        return param_importances(storage, study)
    except (ValueError, KeyError) as exc:
        return str(exc)


def _counts(data: StudyData) -> str:
    counts = status_counts(data.rows)
    return "<p>" + ", ".join(f"{n} {s}" for s, n in counts.items()) + "</p>"


def _table(rows: list[dict], objectives) -> str:
    by_label = {o.label: o for o in objectives}
    columns = list(dict.fromkeys([*TRIAL_COLUMNS, *by_label]))
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "<th>layout</th></tr>"
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = by_label[c].value(row) if c in by_label else row.get(c)
            value = None if isinstance(value, float) and math.isnan(value) else value
            text = "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
            cells.append(f"<td class='text'>{html.escape(text)}</td>" if isinstance(value, str) else f"<td>{text}</td>")
        cells.append(f"<td class='text cells'>{figures.layout_cells_html(row['pattern'])}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _effects_table(groups: list[dict], by) -> str:
    columns = [*by, "n", "mean", "std", "best", "worst", "seed_std"]
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{_fmt(g.get(c))}</td>" for c in columns) + "</tr>" for g in groups)
    return f"<table>{head}{body}</table>"


def _fidelity(data: StudyData, storage: str) -> str:
    """Rank agreement of each rung with the final loss, and seed noise: only for a study
    whose trials recorded rungs."""
    if not any(r.get("rungs") for r in data.rows):
        return ""
    head = "<h2>Fidelity</h2>"
    try:
        rungs = rung_agreement(data.rows, study_rung_fractions(storage, data.name), study=data.name)
    except FidelityError as exc:
        return f"{head}<p>{html.escape(str(exc))}</p>"
    head += ("<p>Kendall τ and Spearman ρ between each rung's loss and the final loss, over the "
             "finished candidates (1: the rung ranks them as the end does; 0: chance).</p>")
    columns = ["rung", "fraction", "kendall_tau", "spearman", "n"]
    body = "".join("<tr>" + "".join(f"<td>{_fmt(getattr(r, c))}</td>" for c in columns) + "</tr>" for r in rungs)
    parts = [head, "<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + f"</tr>{body}</table>"]
    seeds = seed_spread(data.rows)
    if seeds is not None:
        parts.append(f"<p>{html.escape(seeds.summary())}</p>")
    return "".join(parts)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
