"""Plotly figures of a study, shared by the dashboard and the static report.

- :func:`pareto_figure`: objective against objective, one point per trained trial, its layout
  drawn in the hover as a row of coloured cells (one per layer), the frontier as a line,
  baselines as labelled stars, the knee ringed; a third objective colours the points.
- :func:`layout_strip`: layouts as rows of coloured cells, one column per layer.
- :func:`loss_curve_figure`: a trial's training and validation loss against tokens, rungs marked.
- :func:`effect_figure`: a metric against one search dimension (ratio, placement, fusion...).
- :func:`hypervolume_figure`: the dominated hypervolume as trials complete.
- :func:`importance_figure`: parameter importance per objective.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from hybridnas import pareto
from hybridnas.analysis.study import ObjectiveRef, StudyData

__all__ = [
    "LAYER_COLORS",
    "LAYER_NAMES",
    "layout_cells_html",
    "pareto_figure",
    "layout_strip",
    "loss_curve_figure",
    "effect_figure",
    "hypervolume_figure",
    "importance_figure",
]

LAYER_COLORS = {"M": "#1f77b4", "*": "#d62728", "W": "#ff7f0e", "H": "#9467bd", "-": "#c7c7c7", "E": "#2ca02c"}
LAYER_NAMES = {
    "M": "Mamba-2", "*": "attention", "W": "window attention", "H": "intra hybrid", "-": "FFN", "E": "MoE FFN",
}
FUSION_COLORS = {"inter": "#1f77b4", "intra": "#9467bd", "none": "#7f7f7f"}
LOG_SCALE = frozenset({"params", "params_active", "cache_bytes", "train_flops"})
GL_THRESHOLD = 3000  # above this many points, WebGL draws them (SVG slows down past a few thousand)
POINTS_IN_BOXES = 2000  # effect and hypervolume plots draw every trial up to this many


def layout_cells_html(pattern: str) -> str:
    """A layout as coloured block characters, one per layer (Plotly hover labels render
    <span style="color:..."> in SVG)."""
    return "".join(f'<span style="color:{LAYER_COLORS.get(s, "#000")}">█</span>' for s in pattern)


def _label(objective: ObjectiveRef) -> str:
    arrow = "↓" if objective.direction == "minimize" else "↑"
    return f"{objective.label} {arrow}"


def pareto_figure(data: StudyData, rows: Sequence[dict], objectives: Sequence[ObjectiveRef], *,
                  uirevision: str | None = None, title: str | None = None, hover: str = "html") -> go.Figure:
    """Scatter of ``objectives[0]`` (x) against ``objectives[1]`` (y), coloured by fusion, or by
    ``objectives[2]`` when given. The frontier is the first non-dominated front on all the
    given objectives; with two it is drawn as a step line. Each point's ``customdata`` is its
    trial number (the dashboard opens that trial on click).

    ``hover="html"``: Plotly's own hover label, the layout cells written out as HTML for every
    point (a static report). ``hover="data"``: no Plotly label; ``layout.meta`` holds what a
    page needs to draw its own tooltip: ``objectives`` (labels), ``layouts`` (the distinct
    [pattern, description] pairs) and ``points`` (trial -> [index into ``layouts``, the
    third objective's value if any]; x and y are the point's own). Layouts repeat across
    trials, so this is a tenth of the bytes of a label per point (the dashboard, which may
    show 10,000 points)."""
    if hover not in ("html", "data"):
        raise ValueError(f"hover={hover!r}: expected 'html' or 'data'")
    if len(objectives) not in (2, 3):
        raise ValueError(f"a Pareto plot takes 2 or 3 objectives, got {len(objectives)}")
    points_rows = [r for r in rows if r["status"] == "complete" and r.get("reused_from") is None]
    values = data.values(objectives, points_rows)
    keep = ~np.isnan(values).any(axis=1)
    points_rows = [r for r, k in zip(points_rows, keep, strict=True) if k]  # keep: one per row
    values = values[keep]
    dirs = [o.direction for o in objectives]
    figure = go.Figure()
    scatter = go.Scattergl if len(points_rows) > GL_THRESHOLD else go.Scatter
    if hover == "data":
        layouts: dict[tuple[str, str], int] = {}
        points = {str(r["trial"]): [layouts.setdefault(_described(r), len(layouts)), *v[2:]]
                  for r, v in zip(points_rows, values.tolist(), strict=True)}
        figure.update_layout(meta={"objectives": [o.label for o in objectives], "layouts": list(layouts),
                                   "points": points})
    else:
        lines = [[*_described(r), *_value_lines(v, objectives)]
                 for r, v in zip(points_rows, values.tolist(), strict=True)]

    def hover_props(indices) -> dict:
        # a plain list: a base64 typed array would be cheaper to send, but Dash leaves typed
        # arrays out of a graph's hoverData and clickData
        trials = [points_rows[i]["trial"] for i in indices]
        if hover == "data":
            return {"customdata": trials, "hoverinfo": "none"}
        return {"customdata": trials, "hoverinfo": "text",
                "hovertext": [_hover_html(trial, lines[i]) for trial, i in zip(trials, indices, strict=True)]}

    everyone = range(len(points_rows))
    if len(objectives) == 3:
        figure.add_trace(scatter(
            x=values[:, 0], y=values[:, 1], mode="markers", name="trials", **hover_props(everyone),
            marker={"color": values[:, 2], "colorscale": "Viridis", "size": 8, "showscale": True,
                    "colorbar": {"title": {"text": _label(objectives[2])}}},
        ))
    else:
        for fusion in ("inter", "intra", "none"):
            mine = [i for i, r in enumerate(points_rows) if (r.get("fusion") or "none") == fusion]
            if not mine:
                continue
            figure.add_trace(scatter(
                x=values[mine, 0], y=values[mine, 1], mode="markers",
                name=f"{fusion} fusion" if fusion != "none" else "pure",
                **hover_props(mine),
                marker={"color": FUSION_COLORS[fusion], "size": 8, "opacity": 0.8},
            ))
    if len(points_rows):
        front = pareto.pareto_front(values, dirs)
        order = front[np.argsort(values[front, 0])]
        figure.add_trace(go.Scatter(
            x=values[order, 0], y=values[order, 1], mode="lines+markers", name="Pareto front",
            line={"color": "black", "width": 1.5, "shape": "hv" if len(objectives) == 2 else "linear"},
            marker={"size": 12, "color": "rgba(0,0,0,0)", "line": {"color": "black", "width": 1.5}},
            **hover_props(order),
        ))
        knee = pareto.knee_point(values, dirs)
        figure.add_trace(go.Scatter(
            x=[values[knee, 0]], y=[values[knee, 1]], mode="markers", name="knee",
            marker={"size": 20, "color": "rgba(0,0,0,0)", "line": {"color": "#e377c2", "width": 2.5}},
            **hover_props([knee]),
        ))
        baselines = [i for i, r in enumerate(points_rows) if r.get("baseline")]
        if baselines:
            figure.add_trace(go.Scatter(
                x=values[baselines, 0], y=values[baselines, 1], mode="markers+text", name="baselines",
                text=[points_rows[i]["baseline"] for i in baselines], textposition="top center",
                marker={"symbol": "star", "size": 15, "color": "#ffbf00", "line": {"color": "black", "width": 1}},
                **hover_props(baselines),
            ))
    figure.update_layout(
        title=title, xaxis_title=_label(objectives[0]), yaxis_title=_label(objectives[1]),
        uirevision=uirevision, clickmode="event", hovermode="closest", template="plotly_white",
        legend={"orientation": "h", "y": -0.15}, margin={"l": 60, "r": 20, "t": 40 if title else 10, "b": 40},
    )
    for index, axis in enumerate(("xaxis", "yaxis")):  # sizes span decades: log axes
        if objectives[index].name in LOG_SCALE and len(values) and (values[:, index] > 0).all():
            figure.update_layout({axis: {"type": "log"}})
    return figure


def _described(row: dict) -> tuple[str, str]:
    """(pattern, "fusion, baseline, merge, MoE"): the hover's first lines."""
    described = (row.get("fusion") or "-") + (f", baseline {row['baseline']}" if row.get("baseline") else "")
    if row.get("merge_op"):
        norm = f" ({row['merge_norm']} norm)" if row.get("merge_norm") not in (None, "none") else ""
        described += f", merge {row['merge_op']}" + norm
    if row.get("moe"):
        described += f", MoE {row.get('moe_experts')}x top-{row.get('moe_top_k')}"
    return row["pattern"], described


def _value_lines(values: Sequence[float], objectives: Sequence[ObjectiveRef]) -> list[str]:
    return [f"{o.label}: {_number(v)}" for o, v in zip(objectives, values, strict=True)]  # a value per objective


def _hover_html(trial: int, lines: list[str]) -> str:
    """Plotly's hover label: the trial, the pattern, its coloured cells, then the other lines."""
    pattern, *rest = lines
    return "<br>".join([f"<b>trial {trial}</b>", html.escape(pattern), layout_cells_html(pattern),
                        *(html.escape(x) for x in rest)])


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def layout_strip(labelled: Sequence[tuple[str, str]], title: str | None = None) -> go.Figure:
    """(label, pattern) pairs as rows of coloured cells, one column per layer; the first pair
    on top. Hovering a cell names its layer."""
    symbols = list(LAYER_COLORS)
    width = max((len(p) for _, p in labelled), default=0)
    z = [[symbols.index(s) if s in symbols else None for s in p] + [None] * (width - len(p)) for _, p in labelled]
    text = [[f"layer {i}: {LAYER_NAMES.get(s, s)}" for i, s in enumerate(p)] + [""] * (width - len(p))
            for _, p in labelled]
    n = len(symbols)
    colorscale = []
    for i, s in enumerate(symbols):  # a stepped scale: each symbol one flat colour band
        colorscale += [[i / n, LAYER_COLORS[s]], [(i + 1) / n, LAYER_COLORS[s]]]
    figure = go.Figure(go.Heatmap(
        z=z, x=list(range(width)), y=[label for label, _ in labelled], text=text, hoverinfo="text",
        colorscale=colorscale, zmin=-0.5, zmax=n - 0.5, showscale=False, xgap=2, ygap=4,
    ))
    for s in symbols:  # a legend of the symbols, drawn as empty traces
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{s} {LAYER_NAMES[s]}",
                                    marker={"symbol": "square", "size": 12, "color": LAYER_COLORS[s]}))
    figure.update_layout(
        title=title, template="plotly_white", height=80 + 32 * len(labelled),
        xaxis={"title": "layer", "dtick": 1, "showgrid": False},
        yaxis={"autorange": "reversed", "showgrid": False, "type": "category"},
        legend={"orientation": "h", "y": -0.4 if len(labelled) < 4 else -0.15},
        margin={"l": 120, "r": 20, "t": 40 if title else 10, "b": 40},
    )
    return figure


def loss_curve_figure(row: dict) -> go.Figure:
    """Training and validation loss of one trial against tokens; rungs as dotted lines."""
    curves = row.get("loss_curve") or {}
    figure = go.Figure()
    for name, key, dash in (("train", "loss", "solid"), ("val", "val_loss", "dot")):
        points = [p for p in curves.get(name) or [] if p.get(key) is not None]
        if points:
            figure.add_trace(go.Scatter(x=[p["tokens"] for p in points], y=[p[key] for p in points],
                                        mode="lines+markers" if name == "val" else "lines", name=f"{name} loss",
                                        line={"dash": dash}))
    for rung in row.get("rungs") or []:
        figure.add_vline(x=rung["tokens"], line={"dash": "dot", "color": "#999"},
                         annotation_text=f"rung {rung['rung']}: {rung['val_loss']:.3f}")
    figure.update_layout(title=f"trial {row['trial']}: loss", xaxis_title="tokens", yaxis_title="loss (nats/token)",
                         template="plotly_white", margin={"l": 60, "r": 20, "t": 40, "b": 40}, height=320)
    return figure


def effect_figure(rows: Sequence[dict], dimension: str, metric: str = "val_loss") -> go.Figure:
    """``metric`` of complete trials against the values of one ``dimension``: every trial a
    point, with a box per value."""
    objective = ObjectiveRef.parse(metric)
    rows = [r for r in rows if r["status"] == "complete" and r.get("reused_from") is None
            and r.get(dimension) is not None and not math.isnan(objective.value(r))]
    keys = sorted({r[dimension] for r in rows}, key=lambda v: (isinstance(v, str), v))
    every_point = len(rows) <= POINTS_IN_BOXES  # past that, the boxes alone (and their outliers)
    figure = go.Figure()
    for key in keys:
        mine = [r for r in rows if r[dimension] == key]
        figure.add_trace(go.Box(
            y=[objective.value(r) for r in mine], name=_category(key),
            boxpoints="all" if every_point else "outliers", jitter=0.4, pointpos=0,
            hovertext=[f"trial {r['trial']}: {r['pattern']}" for r in mine] if every_point else None,
            hoverinfo="text+y" if every_point else "y",
        ))
    figure.update_layout(title=f"{metric} by {dimension}", xaxis_title=dimension, yaxis_title=_label(objective),
                         showlegend=False, template="plotly_white", height=340,
                         margin={"l": 60, "r": 20, "t": 40, "b": 40})
    return figure


def _category(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def hypervolume_figure(data: StudyData, objectives: Sequence[ObjectiveRef]) -> go.Figure:
    """The hypervolume dominated by the complete trials so far, by trial number (reference:
    the nadir of the final front pushed out by 10% of its range)."""
    rows = sorted(data.complete(), key=lambda r: r["trial"])
    values = data.values(objectives, rows)
    ok = ~np.isnan(values).any(axis=1)
    figure = go.Figure()
    if ok.sum() >= 1:
        dirs = [o.direction for o in objectives]
        reference = pareto.default_reference(values[ok], dirs)
        history = pareto.hypervolume_history(values, reference, dirs)
        figure.add_trace(go.Scatter(x=[r["trial"] for r in rows], y=history,
                                    mode="lines+markers" if len(rows) <= POINTS_IN_BOXES else "lines",
                                    line={"shape": "hv"}, name="hypervolume"))
    figure.update_layout(title="hypervolume over trials (" + ", ".join(o.label for o in objectives) + ")",
                         xaxis_title="trial", yaxis_title="hypervolume", template="plotly_white", height=320,
                         margin={"l": 60, "r": 20, "t": 40, "b": 40})
    return figure


def importance_figure(importances: dict[str, dict[str, float]]) -> go.Figure:
    """Horizontal bars: each parameter's importance, one bar group per objective."""
    figure = go.Figure()
    params = sorted({p for scores in importances.values() for p in scores})
    for objective, scores in importances.items():
        figure.add_trace(go.Bar(y=params, x=[scores.get(p, 0.0) for p in params], name=objective, orientation="h"))
    figure.update_layout(title="parameter importance (PED-ANOVA, per objective)", barmode="group",
                         xaxis_title="importance (normalised)", template="plotly_white",
                         height=160 + 28 * len(params) * max(1, len(importances)),
                         margin={"l": 140, "r": 20, "t": 40, "b": 40})
    return figure
