"""``hybridnas dashboard``: a Dash app over a study database, read-only.

    top:     study, the 2 or 3 objectives to plot, a filter for every search dimension
    middle:  the Pareto plot (redrawn when a refresh finds the study changed; the zoom stays:
             the app remembers the axes' ranges of the last zoom or pan and draws each new
             figure with them, until a double click, or another study or objectives)
    right:   the trial panel of the clicked point: layout, metrics, loss curves, config, and
             a download of its spec JSON
    bottom:  effect of a dimension on a metric, hypervolume over trials, parameter importance

The app never writes: it opens the database read-only (see :mod:`hybridnas.analysis.study`).
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import dash
import plotly.graph_objects as go
from dash import ALL, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from hybridnas.analysis import figures
from hybridnas.analysis.study import DIMENSIONS, ObjectiveRef, StudyData, list_studies, load_study, load_trial
from hybridnas.studies.storage import ResultsStore, status_counts

__all__ = ["create_app", "serve"]

PANEL_STYLE = {"border": "1px solid #ddd", "borderRadius": "6px", "padding": "10px", "background": "#fff"}
FILTER_STYLE = {"width": "190px", "display": "inline-block", "marginRight": "8px", "verticalAlign": "top",
                "fontSize": "13px"}


def create_app(storage: str, *, refresh_s: float = 5.0, study: str | None = None) -> dash.Dash:
    """The dashboard over the database at ``storage``; ``study`` is shown first if given.

    The first page arrives drawn: the server renders the first study's Pareto plot and
    controls into the page (one request instead of a chain of callbacks), keeps that page
    until the study changes, and the browser fetches plotly.js while it waits for it."""
    app = dash.Dash(__name__, title="hybridnas dashboard", suppress_callback_exceptions=True)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}" + _preload_plotly(app))
    load = _StudyCache(storage, check_s=refresh_s / 2)
    built: dict = {}

    def page() -> html.Div:  # Dash calls a layout function on every page load
        names = list_studies(storage)
        first = study if study in names else (names[0] if names else None)
        data = load(first) if first else None
        key = (tuple(names), first, data.version if data else None)
        if built.get("key") != key:
            built.update(key=key, page=_layout(storage, names, first, refresh_s, data))
        return built["page"]

    app.layout = page
    _callbacks(app, storage, load)
    return app


def _layout(storage: str, names: list[str], first: str | None, refresh_s: float, data) -> html.Div:
    """The page, with the first study's controls, plot and summary filled in."""
    controls = _controls(data)
    labels = controls["objectives"]
    no_filters: list[list[Any]] = [[] for _ in DIMENSIONS]
    # a study is loaded only when one is named (first)
    figure, summary = _pareto(data, first, labels, no_filters, None) if data and first else (go.Figure(), "")
    filters = [
        html.Div([html.Label(d, style={"fontWeight": "bold"}),
                  dcc.Dropdown(id={"type": "filter", "dim": d}, options=options, value=[], multi=True,
                               placeholder="all")], style=FILTER_STYLE)
        for d, options in zip(DIMENSIONS, controls["filters"], strict=True)  # _controls: a filter per dimension
    ]
    return html.Div(style={"fontFamily": "sans-serif", "background": "#f6f6f6", "padding": "12px"}, children=[
        html.H2("hybridnas", style={"margin": "0 0 4px 0"}),
        html.Div(f"{storage} (read-only)", style={"color": "#666", "fontSize": "12px", "marginBottom": "8px"}),
        html.Div(style={"display": "flex", "gap": "12px", "alignItems": "end"}, children=[
            html.Div([html.Label("study"), dcc.Dropdown(id="study", options=names, value=first, clearable=False)],
                     style={"width": "260px"}),
            html.Div([html.Label("objectives (2 or 3: x, y, colour)"),
                      dcc.Dropdown(id="objectives", options=controls["metrics"], value=labels, multi=True)],
                     style={"width": "520px"}),
            html.Div(summary, id="summary", style={"fontSize": "13px", "color": "#333"}),
        ]),
        html.Details([html.Summary("filters"), html.Div(filters, style={"marginTop": "6px"})], open=True,
                     style={"margin": "8px 0"}),
        html.Div(style={"display": "flex", "gap": "12px"}, children=[
            html.Div([dcc.Graph(id="pareto", figure=figure, style={"height": "560px"}, config={"displaylogo": False}),
                      dcc.Tooltip(id="pareto-tooltip", direction="right")],
                     style={**PANEL_STYLE, "flex": "3", "minWidth": "0"}),
            html.Div(id="trial-panel", style={**PANEL_STYLE, "flex": "2", "minWidth": "0", "overflow": "auto",
                                              "maxHeight": "580px"},
                     children=html.P("Click a point to open its trial.", style={"color": "#666"})),
        ]),
        dcc.Store(id="selected"),
        dcc.Store(id="view"),
        dcc.Store(id="drawn", data=_drawn_key(data, labels, no_filters) if data else None),
        dcc.Download(id="download-spec"),
        dcc.Interval(id="refresh", interval=int(refresh_s * 1000)),
        # no tab open at first: the first page is the Pareto plot, and the analyses below it
        # are computed and drawn when their tab is opened
        dcc.Tabs(id="analysis-tabs", value=None, style={"marginTop": "12px"}, children=[
            dcc.Tab(label="effects", value="effects", children=html.Div(style=PANEL_STYLE, children=[
                html.Div(style={"display": "flex", "gap": "12px"}, children=[
                    html.Div([html.Label("dimension"), dcc.Dropdown(id="effect-dim", options=list(DIMENSIONS[1:]),
                                                                    value="attn_ratio", clearable=False)],
                             style={"width": "220px"}),
                    html.Div([html.Label("metric"), dcc.Dropdown(id="effect-metric", options=controls["metrics"],
                                                                 value=controls["metric"], clearable=False)],
                             style={"width": "260px"}),
                ]),
                dcc.Graph(id="effect"),
            ])),
            dcc.Tab(label="hypervolume", value="hypervolume",
                    children=html.Div(dcc.Graph(id="hypervolume"), style=PANEL_STYLE)),
            dcc.Tab(label="importance", value="importance", children=html.Div(style=PANEL_STYLE, children=[
                html.Button("compute importance", id="importance-button"),
                dcc.Loading(html.Div(id="importance")),
            ])),
            dcc.Tab(label="fidelity", value="fidelity", children=html.Div(id="fidelity", style=PANEL_STYLE)),
        ]),
    ])


def _controls(data) -> dict:
    """What the controls offer for a study: its metrics, its first two objectives, and each
    filter's values."""
    if data is None:
        return {"metrics": [], "objectives": [], "metric": None, "filters": [[] for _ in DIMENSIONS]}
    metrics = data.metric_labels()
    return {"metrics": metrics, "objectives": [o.label for o in data.objectives[:2]], "metric": metrics[0],
            "filters": [[{"label": _option(v), "value": v} for v in data.dimension_values(d)] for d in DIMENSIONS]}


def _pareto(data, study: str, labels: list[str], chosen: list, view: dict | None) -> tuple:
    """(figure, summary line) of the Pareto plot: the rows passing the filters, on ``labels``,
    zoomed to ``view`` when it belongs to this study and these objectives."""
    if not labels or len(labels) not in (2, 3):
        return go.Figure(), "choose 2 or 3 objectives"
    rows = data.filtered(dict(zip(DIMENSIONS, chosen, strict=True)))  # chosen: a value per filter, in order
    key = _view_key(study, labels)
    figure = figures.pareto_figure(data, rows, _objective_refs(data, labels), uirevision=key, hover="data")
    if view and view.get("key") == key:  # the user's zoom, kept across refreshes
        figure.update_layout({axis: {"range": view[axis]} for axis in ("xaxis", "yaxis") if view.get(axis)})
    shown = sum(len(t.x) for t in figure.data if t.name not in ("Pareto front", "knee", "baselines"))
    counts = status_counts(data.rows)
    summary = (f"{len(data.rows)} trials: {counts['complete']} complete, {counts['running']} running, "
               f"{counts['pruned']} pruned, {counts['fail']} failed; {shown} points shown")
    # a data-* attribute is no Python identifier: passed through Span's **wildcard_attrs
    data_attrs: dict[str, Any] = {"data-points": str(shown)}
    return figure, html.Span(summary, id="summary-text", **data_attrs)


def _objective_refs(data, labels: list[str] | None) -> list[ObjectiveRef]:
    known = {o.label: o for o in data.objectives}
    return [known.get(label) or ObjectiveRef.parse(label) for label in labels or []]


# The Pareto plot's hover, drawn in the browser from the figure's layout.meta (see
# figures.pareto_figure): the trial is the point's customdata, its layout and the third
# objective are looked up there, x and y are the point's own. One coloured cell per layer,
# as in the report; numbers as the report writes them.
TOOLTIP_JS = """
function(hover, figure) {
    const none = window.dash_clientside.no_update;
    const point = hover && hover.points && hover.points[0];
    const meta = figure && figure.layout && figure.layout.meta;
    if (!point || point.customdata === undefined || !meta || !meta.points[point.customdata]) {
        return [false, none, none];
    }
    const trial = point.customdata;
    const [layout, ...more] = meta.points[trial];
    const [pattern, described] = meta.layouts[layout];
    const values = [point.x, point.y, ...more];
    const number = v => (v === null || v === undefined || Number.isNaN(v)) ? "-"
        : Math.abs(v) >= 1e4 ? Math.round(v).toLocaleString("en-US")
        : (v !== 0 && Math.abs(v) < 1e-4) ? v.toExponential(3)
        : String(parseFloat(v.toPrecision(4)));
    const colors = LAYER_COLORS_JSON;
    const span = (text, style) => ({type: "Span", namespace: "dash_html_components",
                                    props: {children: text, style: style}});
    const div = (children, style) => ({type: "Div", namespace: "dash_html_components",
                                       props: {children: children, style: style}});
    const cells = Array.from(pattern).map(s => span("\u2588", {color: colors[s] || "#000", fontSize: "16px"}));
    const children = [
        div([span("trial " + trial, {fontWeight: "bold"})]),
        div([pattern], {fontFamily: "monospace"}),
        div(cells, {letterSpacing: "1px"}),
        div([described]),
        ...meta.objectives.map((label, i) => div([label + ": " + number(values[i])])),
    ];
    return [true, point.bbox, div(children, {fontSize: "12px", whiteSpace: "nowrap"})];
}
""".replace("LAYER_COLORS_JSON", json.dumps(figures.LAYER_COLORS))


def _callbacks(app: dash.Dash, storage: str, load) -> None:
    app.clientside_callback(
        TOOLTIP_JS,
        Output("pareto-tooltip", "show"), Output("pareto-tooltip", "bbox"), Output("pareto-tooltip", "children"),
        Input("pareto", "hoverData"), State("pareto", "figure"),
    )

    @app.callback(
        Output("objectives", "options"), Output("objectives", "value"),
        Output("effect-metric", "options"), Output("effect-metric", "value"),
        Output({"type": "filter", "dim": ALL}, "options"), Output({"type": "filter", "dim": ALL}, "value"),
        Input("study", "value"), prevent_initial_call=True,  # the first study's come with the page
    )
    def choose_study(study):
        controls = _controls(load(study) if study else None)
        empty = [[] for _ in DIMENSIONS]
        return (controls["metrics"], controls["objectives"], controls["metrics"], controls["metric"],
                controls["filters"], empty)

    @app.callback(
        Output("pareto", "figure"), Output("summary", "children"), Output("drawn", "data"),
        Input("study", "value"), Input("objectives", "value"), Input({"type": "filter", "dim": ALL}, "value"),
        Input("refresh", "n_intervals"), State("view", "data"), State("drawn", "data"), prevent_initial_call=True,
    )
    def draw_pareto(study, labels, chosen, _tick, view, drawn):
        if not study:
            return go.Figure(), "", None
        data = load(study)
        key = _drawn_key(data, labels, chosen)
        if key == drawn:  # a refresh found the study unchanged: the browser keeps its plot
            raise PreventUpdate
        return (*_pareto(data, study, labels, chosen, view), key)

    @app.callback(Output("view", "data"), Input("pareto", "relayoutData"), State("view", "data"),
                  State("study", "value"), State("objectives", "value"), prevent_initial_call=True)
    def remember_view(relayout, view, study, labels):
        """Plotly reports a zoom or pan as axis ranges and a double click as autorange."""
        key = _view_key(study, labels)
        view = dict(view) if view and view.get("key") == key else {"key": key}
        for axis in ("xaxis", "yaxis"):
            low, high = (relayout or {}).get(f"{axis}.range[0]"), (relayout or {}).get(f"{axis}.range[1]")
            if (relayout or {}).get(f"{axis}.autorange"):
                view.pop(axis, None)
            elif low is not None and high is not None:
                view[axis] = [low, high]
        return view

    @app.callback(Output("selected", "data"), Input("pareto", "clickData"), State("study", "value"),
                  prevent_initial_call=True)
    def select(click, study):
        if not click or not click.get("points"):
            return dash.no_update
        trial = click["points"][0].get("customdata")  # the trial number (figures.pareto_figure)
        return dash.no_update if trial is None else {"study": study, "trial": int(trial)}

    @app.callback(Output("trial-panel", "children"), Input("selected", "data"), prevent_initial_call=True)
    def open_trial(selected):
        row = load_trial(storage, selected["study"], selected["trial"]) if selected else None
        if row is None:
            return html.P("That trial is not in the database.")
        return _trial_panel(row)

    @app.callback(Output("download-spec", "data"), Input("download-button", "n_clicks"), State("selected", "data"),
                  prevent_initial_call=True)
    def download(n_clicks, selected):
        row = load_trial(storage, selected["study"], selected["trial"]) if n_clicks and selected else None
        if row is None:
            return dash.no_update
        name = f"{selected['study']}-trial-{selected['trial']}-spec.json"
        return {"content": json.dumps(row["spec"], indent=2), "filename": name, "type": "application/json"}

    # the figures below the plot are drawn when their tab is open, and follow the Pareto plot
    # (its summary line changes with every redraw: study, objectives, filters, new results)
    @app.callback(Output("effect", "figure"), Input("analysis-tabs", "value"), Input("summary", "children"),
                  Input("effect-dim", "value"), Input("effect-metric", "value"), State("study", "value"),
                  State({"type": "filter", "dim": ALL}, "value"))
    def draw_effect(tab, _summary, dimension, metric, study, chosen):
        if tab != "effects":
            raise PreventUpdate
        if not study:
            return go.Figure()
        data = load(study)
        rows = data.filtered(dict(zip(DIMENSIONS, chosen, strict=True)))  # chosen: a value per filter, in order
        return figures.effect_figure(rows, dimension, metric or "val_loss")

    @app.callback(Output("hypervolume", "figure"), Input("analysis-tabs", "value"), Input("summary", "children"),
                  State("study", "value"), State("objectives", "value"))
    def draw_hypervolume(tab, _summary, study, labels):
        if tab != "hypervolume":
            raise PreventUpdate
        if not study or not labels:
            return go.Figure()
        data = load(study)
        return figures.hypervolume_figure(data, _objective_refs(data, labels))

    @app.callback(Output("fidelity", "children"), Input("analysis-tabs", "value"), Input("summary", "children"),
                  State("study", "value"))
    def draw_fidelity(tab, _summary, study):
        if tab != "fidelity":
            raise PreventUpdate
        if not study:
            return html.P("No study.")
        return _fidelity_panel(load(study), storage)

    @app.callback(Output("importance", "children"), Input("importance-button", "n_clicks"), State("study", "value"),
                  prevent_initial_call=True)
    def draw_importance(_clicks, study):
        from hybridnas.analysis.effects import param_importances

        try:
            return dcc.Graph(figure=figures.importance_figure(param_importances(storage, study)))
        except (ValueError, KeyError) as exc:
            return html.P(f"importance not available: {exc}")


class _StudyCache:
    """One read of a study serves every page load and callback until the study changes: at
    most every ``check_s`` seconds a cheap query (:meth:`ResultsStore.version`) says whether
    it has, and only then are its rows read again (10,000 rows take a quarter of a second)."""

    def __init__(self, storage: str, check_s: float) -> None:
        self.storage, self.check_s = storage, check_s
        self.store = ResultsStore(storage, readonly=True)
        self.lock = threading.Lock()
        self.loaded: dict[str, tuple[float, StudyData]] = {}

    def __call__(self, study: str) -> StudyData:
        with self.lock:  # concurrent callbacks wait for the one read instead of each reading
            checked, data = self.loaded.get(study, (-math.inf, None))
            if data is None or time.monotonic() - checked > self.check_s:
                if data is None or self.store.version(study) != data.version:
                    data = load_study(self.storage, study)
                self.loaded[study] = (time.monotonic(), data)
            return data


def _drawn_key(data: StudyData, labels, chosen) -> str:
    """What a Pareto plot shows: the same key means the same figure."""
    return json.dumps([data.name, data.version, labels, chosen])


def _preload_plotly(app: dash.Dash) -> str:
    """A preload of plotly.js (4.8 MB), from the same URL the graph loads it from once the
    page's layout has arrived: the browser then fetches it while the server renders the page."""
    url = f"{app.config.requests_pathname_prefix}_dash-component-suites/plotly/package_data/plotly.min.js"
    return f'<link rel="preload" href="{url}" as="script">'


def _view_key(study, labels) -> str:
    """What a zoom belongs to: another study or other objectives start from the full view."""
    return f"{study}|{'|'.join(labels or [])}"


def _option(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _trial_panel(row: dict) -> list:
    """The clicked trial: layout, metrics, loss curves, config and the spec download."""
    metrics = {k: v for k, v in (row.get("metrics") or {}).items() if isinstance(v, (int, float))}
    table_rows = [("status", row["status"] + (f" ({row['failure']})" if row.get("failure") else "")),
                  ("pattern", row["pattern"]), ("fusion", row.get("fusion")), ("merge", row.get("merge_op")),
                  ("baseline", row.get("baseline")), ("params", row.get("params")),
                  ("val_loss", row.get("val_loss")), ("tokens", row.get("tokens")),
                  ("wall_s", row.get("wall_s")), ("hardware", row.get("hardware"))]
    table_rows += [(k, v) for k, v in metrics.items() if k not in dict(table_rows)]
    table = html.Table([html.Tr([html.Td(k, style={"fontWeight": "bold", "paddingRight": "12px"}), html.Td(_cell(v))])
                        for k, v in table_rows if v is not None], style={"fontSize": "13px"})
    return [
        html.H4(f"trial {row['trial']}", id="trial-title", style={"margin": "0 0 6px 0"}),
        dcc.Graph(figure=figures.layout_strip([(f"trial {row['trial']}", row["pattern"])]),
                  config={"displayModeBar": False}, id="trial-layout"),
        table,
        dcc.Graph(figure=figures.loss_curve_figure(row), config={"displayModeBar": False}),
        html.Button("download spec JSON", id="download-button", style={"margin": "6px 0"}),
        html.Details([html.Summary("config"),
                      html.Pre(json.dumps(row.get("config"), indent=2), style={"fontSize": "11px"})]),
        html.Details([html.Summary("spec"),
                      html.Pre(json.dumps(row.get("spec"), indent=2), style={"fontSize": "11px"})]),
    ]


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else (f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def serve(storage: str, host: str = "127.0.0.1", port: int = 8050, study: str | None = None) -> None:
    """Run the dashboard's web server (blocks). Binds to localhost unless ``host`` says otherwise."""
    create_app(storage, study=study).run(host=host, port=port, debug=False)


def _fidelity_panel(data: StudyData, storage: str) -> list:
    """How well each rung's loss ranks the finished candidates as the final loss does, and
    the seed noise (see :mod:`hybridnas.analysis.fidelity`)."""
    from hybridnas.analysis.fidelity import FidelityError, rung_agreement, seed_spread, study_rung_fractions

    try:
        rungs = rung_agreement(data.rows, study_rung_fractions(storage, data.name), study=data.name)
    except FidelityError as exc:
        return [html.P(str(exc))]
    if not rungs:
        return [html.P("No rung losses recorded.")]
    header = html.Tr([html.Th(c) for c in ("rung", "budget fraction", "Kendall τ", "Spearman ρ", "n")])
    def corr(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    body = [html.Tr([html.Td(str(r.rung)), html.Td(f"{r.fraction:g}"), html.Td(corr(r.kendall_tau)),
                     html.Td(corr(r.spearman)), html.Td(str(r.n))]) for r in rungs]
    seeds = seed_spread(data.rows)
    return [html.P("Rank agreement of each rung's loss with the final loss over the finished candidates "
                   "(1: the rung ranks them as the end does; 0: chance)."),
            html.Table([header, *body], style={"fontSize": "13px"}),
            *([html.P(seeds.summary())] if seeds is not None else [])]
