"""Benchmark (e): the dashboard's first page with 10,000 trials, in headless Chromium.

    python benchmarks/dashboard.py [--trials 10000] [--chromium /usr/bin/chromium]

Writes a study of ``--trials`` rows (200 distinct layouts at 8 to 16 mixers, inter and
intra fusion, random but plausible metrics) into a fresh SQLite file, serves the dashboard,
and times, in a new browser page each time: navigation to the Pareto plot drawn (what a
user waits for), and the server's share (one read of the study). Median of 3 loads after a
warm-up load. Prints one table. Target: the first page in at most 2 seconds.
"""

import argparse
import platform
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import optuna
from werkzeug.serving import make_server

from hybridnas import ArchSpec
from hybridnas.search_space import layout
from hybridnas.studies.storage import TRIALS, ResultsStore, spec_columns

LOADS = 3


def write_study(url: str, trials: int, seed: int = 0) -> None:
    """A study named "bench" with ``trials`` complete rows and its objectives in Optuna."""
    rng = random.Random(seed)
    config = {"objectives": [{"name": "val_loss", "direction": "minimize"},
                             {"name": "cache_bytes", "direction": "minimize", "context": 8192},
                             {"name": "params", "direction": "minimize"}]}
    optuna.create_study(study_name="bench", storage=url, directions=["minimize"] * 3).set_user_attr("config", config)
    candidates = []
    for _ in range(200):
        n, fusion = rng.randint(8, 16), rng.choice(["inter", "intra"])
        spec = ArchSpec.from_pattern(layout(n, rng.randint(0, n // 2), fusion=fusion), d_model=512)
        candidates.append(spec_columns(spec, {"placement": "even"}))
    rows = []
    for trial in range(trials):
        columns = rng.choice(candidates)
        loss = 3.0 + rng.random() - 0.05 * (columns["n_attn"] or 0)
        metrics = {"val_loss": loss, "cache_bytes@8192": 1e6 * (1 + (columns["n_attn"] or 0)) * rng.uniform(0.9, 1.1)}
        rows.append({**columns, "study": "bench", "trial": trial, "status": "complete", "val_loss": loss,
                     "params": int(1e8 * rng.uniform(0.8, 1.2)), "cache_bytes": int(metrics["cache_bytes@8192"]),
                     "metrics": metrics, "loss_curve": {"train": [], "val": []}, "rungs": []})
    store = ResultsStore(url)
    store.create()
    with store.engine.begin() as conn:
        conn.execute(TRIALS.insert(), rows)
    store.dispose()


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

    server_seconds = []
    app = dashboard.create_app(url, refresh_s=3600)

    original = dashboard.load_study

    def timed_load(*a, **k):
        start = time.perf_counter()
        out = original(*a, **k)
        server_seconds.append(time.perf_counter() - start)
        return out

    dashboard.load_study = timed_load  # every callback that reads the study goes through it
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page_seconds = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        for _ in range(LOADS + 1):  # the first load warms the server's imports and caches
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            start = time.perf_counter()
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.wait_for_function("() => { const g = document.querySelector('#pareto .js-plotly-plot');"
                                   " return g && g.data && g.data.length > 0 && g._fullLayout; }", timeout=60_000)
            page.wait_for_selector("#summary-text")
            page_seconds.append(time.perf_counter() - start)
            points = page.get_attribute("#summary-text", "data-points")
            page.close()
        browser.close()
    server.shutdown()
    print(f"CPU: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{args.trials:,} trials, Chromium headless (software rendering)")
    print("| measure | seconds (median of 3 loads) |")
    print("|---|---|")
    print(f"| first page: navigation to the Pareto plot drawn ({points} points) | {statistics.median(page_seconds[1:]):.2f} |")
    print(f"| server: one study load ({args.trials:,} rows) | {statistics.median(server_seconds):.3f} |")


if __name__ == "__main__":
    main()
