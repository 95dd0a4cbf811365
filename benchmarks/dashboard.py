"""Benchmark (e): the dashboard's first page with 10,000 trials, in headless Chromium.

    python benchmarks/dashboard.py [--trials 10000] [--chromium /usr/bin/chromium]

Writes a study of ``--trials`` rows (200 distinct layouts at 8 to 16 mixers, inter and
intra fusion, random but plausible metrics) into a fresh SQLite file, serves the dashboard
(refreshing every 5 s, its default) and times navigation to the Pareto plot drawn, what a
user waits for, median of 5 loads, each in a new page:

- a browser that has opened the dashboard before (its HTTP cache and V8's code cache hold
  Dash's scripts and plotly.js: what a researcher reopening the dashboard sees);
- a fresh browser profile (nothing cached: every script is fetched and compiled);
- a fresh profile right after the study changed (the server reads the 10,000 rows again
  and renders the page: the first page of a study that is running);
- the floor: a bare Dash page with one 10-point plotly graph, fresh profile, to show what
  any Dash app pays on this machine before the dashboard draws anything.

And the server's share: the ``/_dash-layout`` request that carries the drawn page. Prints
one table. Target: the first page in at most 2 seconds.
"""

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from werkzeug.serving import make_server

from bench_study import write_study
from hybridnas.studies.storage import TRIALS, ResultsStore

LOADS = 5
DRAWN = ("() => { const g = document.querySelector('#pareto .js-plotly-plot');"
         " return g && g.data && g.data.length > 0 && g._fullLayout; }")


def touch(url: str) -> None:
    """Rewrite one row's ``updated_at``, as a running study's driver does with every result."""
    import datetime as dt

    store = ResultsStore(url)
    with store.engine.begin() as conn:
        conn.execute(TRIALS.update().where(TRIALS.c.trial == 0).values(updated_at=dt.datetime.now()))
    store.dispose()


def serve(app) -> tuple[str, list[float]]:
    """Serve a Dash app on a free port; the list collects each layout request's seconds."""
    import flask

    seconds: list[float] = []

    @app.server.before_request
    def start():
        flask.g.started = time.perf_counter()

    @app.server.after_request
    def stop(response):
        if flask.request.path.endswith("_dash-layout"):
            seconds.append(time.perf_counter() - flask.g.started)
        return response

    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/", seconds


def time_loads(new_page, url: str, before=None) -> float:
    """Median seconds of LOADS navigations to the Pareto plot drawn, each in ``new_page()``."""
    seconds = []
    for _ in range(LOADS):
        if before:
            before()
        page = new_page()
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_function(DRAWN, timeout=60_000, polling=10)
        page.wait_for_selector("#summary-text")
        seconds.append(time.perf_counter() - start)
        page.close()
    return statistics.median(seconds)


def bare_app():
    """A Dash page with one 10-point graph: the floor under any Dash dashboard."""
    import dash
    import plotly.graph_objects as go

    app = dash.Dash(__name__)
    figure = go.Figure(go.Scattergl(x=list(range(10)), y=list(range(10)), mode="markers"))
    app.layout = dash.html.Div([dash.dcc.Graph(id="pareto", figure=figure),
                                dash.html.Span("10 points", id="summary-text")])
    return app


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from hybridnas.analysis import dashboard

    folder = Path(tempfile.mkdtemp(prefix="hybridnas-dashboard-bench-"))
    url = f"sqlite:///{folder / 'bench.db'}"
    write_study(url, args.trials)
    page_url, layout_seconds = serve(dashboard.create_app(url))
    bare_url, _ = serve(bare_app())
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    viewport = {"width": 1400, "height": 1000}
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=flags)

        def fresh():  # a page in a new browser context: nothing cached
            return browser.new_page(viewport=viewport)

        time_loads(fresh, page_url)  # warms the server: imports, the first read and render
        cached_layouts = len(layout_seconds)
        rows.append(("first page, fresh browser profile", time_loads(fresh, page_url)))
        unchanged = statistics.median(layout_seconds[cached_layouts:])
        changed_from = len(layout_seconds)

        def change():  # the server checks for changes every refresh / 2 = 2.5 s
            touch(url)
            time.sleep(2.6)

        rows.append(("first page, fresh profile, the study just changed", time_loads(fresh, page_url, before=change)))
        changed = statistics.median(layout_seconds[changed_from:])
        rows.append(("floor: bare Dash page, one 10-point graph, fresh profile", time_loads(fresh, bare_url)))
        browser.close()
        profile = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="hybridnas-chromium-"), executable_path=args.chromium, args=flags,
            viewport=viewport)
        time_loads(profile.new_page, page_url)  # V8 keeps a script's compiled code from its second load on
        rows.insert(0, ("first page, a browser that has opened the dashboard before",
                        time_loads(profile.new_page, page_url)))
        profile.close()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {args.trials:,} trials, Chromium headless (software rendering)")
    print("| measure | seconds (median of 5) |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print(f"| server: the page request, study unchanged (page kept) | {unchanged:.3f} |")
    print(f"| server: the page request after a change ({args.trials:,} rows read, page rendered) | {changed:.3f} |")


if __name__ == "__main__":
    main()
