"""The dashboard and the report over a real study (a small search run here through Ray).

The browser tests drive the Dash app in headless Chromium (Debian's, through Playwright):
the page loads, the Pareto plot is drawn, a filter changes the number of points, the zoom
survives a live refresh, clicking a point opens its trial panel, the spec downloads. A
screenshot is kept in $HYBRIDNAS_TEST_ARTIFACTS (default test-artifacts/).
"""

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from hybridnas.cli import main
from study_files import run_study, tiny_preset

CHROMIUM = os.environ.get("HYBRIDNAS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("HYBRIDNAS_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="module")
def study_url(tmp_path_factory):
    """A finished 6-trial study at 4 mixers, no pruning: the four baselines (pure attention,
    pure Mamba-2, inter and intra hybrids) and two sampled candidates, all complete."""
    text = tiny_preset("dash", ('baselines = ["mamba2", "bae-intra-1:5"]',
                                'baselines = ["attention", "mamba2", "bae-inter-1:5", "bae-intra-1:5"]'),
                       ("n_mixers = 2", "n_mixers = 4"), ("rungs = [0.5]", "rungs = []"))
    return run_study(text, tmp_path_factory.mktemp("dashboard"), trials=6)


def _digest(url: str) -> str:
    return hashlib.sha256(Path(url.removeprefix("sqlite:///")).read_bytes()).hexdigest()


# ---- report and command line ---------------------------------------------------------------


def test_report_is_one_self_contained_file(study_url, tmp_path, capsys):
    before = _digest(study_url)
    out = tmp_path / "report.html"
    assert main(["report", "dash", "--storage", study_url, "-o", str(out)]) == 0
    text = out.read_text()
    assert text.count("<script src=") == 0 and "Plotly.newPlot" in text  # plotly.js inlined, no fetches
    assert "<h2>Pareto set</h2>" in text and "layouts of the Pareto set" in text and "hypervolume" in text
    assert "by fusion x merge_op" in text and "█" in text  # effect tables and layout cells
    rows = json.loads(_query_json(study_url, capsys))
    assert all(f"<td class='text'>{r['pattern']}</td>" in text for r in rows)  # every trial listed
    assert _digest(study_url) == before  # the report only reads


def _query_json(url, capsys):
    capsys.readouterr()
    assert main(["query", "dash", "--storage", url, "--format", "json"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "nope", "-o", "{tmp}/r.html"], "error: no study 'nope'"),
        (["report", "dash", "-o", "{tmp}/r.pdf"], "error: -o {tmp}/r.pdf: the report is HTML"),
        (["report", "dash", "-o", "{tmp}/missing/r.html"], "error: -o {tmp}/missing/r.html: folder"),
        (["dashboard", "--study", "nope"], "error: --study=nope: no such study"),
        (["dashboard", "--port", "70000"], "error: --port=70000"),
    ],
)
def test_bad_analysis_input_is_one_line(study_url, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--storage", study_url]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.replace("{tmp}", str(tmp_path))) and err.count("\n") == 1, err


def test_dashboard_on_a_missing_database_is_one_line(tmp_path, capsys):
    assert main(["dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: storage") and err.count("\n") == 1, err
    assert not (tmp_path / "none.db").exists()  # read-only: nothing created


def test_importance_and_effects_from_the_study(study_url):
    from hybridnas.analysis import effect_summary, load_study, param_importances

    data = load_study(study_url, "dash")
    groups = effect_summary(data.complete(), ("fusion",))
    assert {g["fusion"] for g in groups} >= {"none", "inter", "intra"}
    assert sum(g["n"] for g in groups) == len(data.complete())
    importances = param_importances(study_url, "dash")
    assert set(importances) == {"val_loss", "params"}
    scores = [v for s in importances.values() for v in s.values()]
    assert scores and all(0 <= v <= 1 for v in scores)
    with pytest.raises(ValueError, match="evaluator 'x'"):
        param_importances(study_url, "dash", evaluator="x")


# ---- the dashboard in a browser ------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard_url(study_url):
    from werkzeug.serving import make_server

    from hybridnas.analysis.dashboard import create_app

    server = make_server("127.0.0.1", 0, create_app(study_url, refresh_s=0.5).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.fixture(scope="module")
def page(dashboard_url):
    if os.environ.get("CI"):  # a dev dependency: under CI its absence fails, as Chromium's does
        import playwright.sync_api as playwright_api
    else:
        playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is not at {CHROMIUM}: run scripts/install-chromium.sh")
        pytest.skip(f"Chromium is not at {CHROMIUM} (scripts/install-chromium.sh installs it)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
        page.goto(dashboard_url)
        yield page
        browser.close()


def _points(page) -> int:
    """Points of the trial traces, as the app counts them (front, knee and stars excluded)."""
    page.wait_for_selector("#pareto .scatterlayer .point", timeout=60_000)
    page.wait_for_selector("#summary-text")
    return int(page.get_attribute("#summary-text", "data-points"))


def test_page_loads_and_draws_the_pareto_plot(page):
    page.wait_for_selector("#pareto .scatterlayer .point", timeout=60_000)
    assert "hybridnas" in page.inner_text("h2")
    assert _points(page) == 6  # every complete trial: 6 distinct candidates (copies are not trials)
    legend = page.text_content("#pareto .legend")
    assert "Pareto front" in legend and "baselines" in legend


def _rows(url) -> list[dict]:
    from hybridnas.analysis import load_study

    return load_study(url, "dash").rows


def test_a_filter_changes_the_number_of_points(page):
    everything = _points(page)
    fusion = page.locator('[id=\'{"dim":"fusion","type":"filter"}\']')
    fusion.click()
    page.get_by_role("option", name="none", exact=True).click()  # typed text can race the menu opening
    page.keyboard.press("Escape")
    page.wait_for_function(
        f"document.querySelector('#summary-text').dataset.points !== '{everything}'", timeout=30_000)
    assert 0 < _points(page) < everything
    assert "2 points shown" in page.inner_text("#summary")  # pure attention and pure Mamba-2
    page.locator('[id=\'{"dim":"fusion","type":"filter"}\'] [aria-label*="Clear"], '
                 '[id=\'{"dim":"fusion","type":"filter"}\'] .dash-dropdown-clear').first.click()
    page.wait_for_function(
        f"document.querySelector('#summary-text').dataset.points === '{everything}'", timeout=30_000)


def _touch(url: str) -> None:
    """Write a row again, as a running study's driver does with each result."""
    from hybridnas.studies.storage import ResultsStore

    store = ResultsStore(url)
    store.upsert({k: v for k, v in store.rows("dash")[0].items() if k != "id"})
    store.dispose()


GRAPH = "document.querySelector('#pareto .js-plotly-plot')"


def _count_redraws(page) -> None:
    page.evaluate(f"({GRAPH}.__redraws = 0,"
                  f" {GRAPH}.__counting || {GRAPH}.on('plotly_afterplot', () => {GRAPH}.__redraws++),"
                  f" {GRAPH}.__counting = true)")


def test_refreshes_redraw_only_a_changed_study(page, study_url):
    """Every 0.5 s the page asks for the plot again: an unchanged study sends nothing back
    (the figure is not sent, nor drawn, again); a row written anew redraws it."""
    _points(page)
    _count_redraws(page)
    page.wait_for_timeout(2500)  # five refreshes
    assert page.evaluate(f"{GRAPH}.__redraws") == 0
    _touch(study_url)
    page.wait_for_function(f"{GRAPH}.__redraws > 0", timeout=10_000)
    assert _points(page) == 6


def test_zoom_survives_the_live_refresh(page, study_url):
    """A box zoom drawn with the mouse, then refreshes of a study that keeps changing: the
    new figures keep the zoomed range, a double click resets it."""
    graph = GRAPH
    _points(page)
    full = page.evaluate(f"{graph}._fullLayout.xaxis.range")
    box = page.locator("#pareto .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.1 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.9 * box["height"], steps=8)
    page.mouse.up()
    page.wait_for_function(f"{graph}._fullLayout.xaxis.range[0] !== {full[0]}")
    # a refresh already on its way when the zoom ended may draw the full view once; the
    # next one (the app has now heard of the zoom) brings the zoom back
    page.wait_for_timeout(1500)
    zoomed = page.evaluate(f"{graph}._fullLayout.xaxis.range")
    assert zoomed[1] - zoomed[0] < 0.5 * (full[1] - full[0])
    _count_redraws(page)
    for _ in range(3):  # the study changes: each refresh draws a new figure
        _touch(study_url)
        page.wait_for_timeout(800)
    assert page.evaluate(f"{graph}.__redraws") > 0  # the refreshes did redraw it
    assert page.evaluate(f"{graph}._fullLayout.xaxis.range") == pytest.approx(zoomed)
    page.mouse.dblclick(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
    page.wait_for_function(f"{graph}._fullLayout.xaxis.range[0] === {full[0]}")


def test_the_analysis_tabs_draw_when_opened(page, study_url):
    """Below the plot nothing is drawn until a tab is opened: the first page is the plot."""
    _points(page)
    assert page.locator("#effect").count() == 0 and page.locator("#hypervolume").count() == 0
    page.get_by_text("effects", exact=True).click()
    page.wait_for_selector("#effect .boxlayer .trace", timeout=30_000)
    fusions = {r["fusion"] for r in _rows(study_url) if r["status"] == "complete"}
    page.locator("#effect-dim").click()
    page.get_by_role("option", name="fusion", exact=True).click()
    page.wait_for_function(f"document.querySelectorAll('#effect .boxlayer .trace').length === {len(fusions)}",
                           timeout=30_000)
    page.get_by_text("hypervolume", exact=True).click()
    page.wait_for_selector("#hypervolume .scatterlayer .trace", timeout=30_000)
    assert "hypervolume over trials" in page.inner_text("#hypervolume")
    page.get_by_text("fidelity", exact=True).click()  # this study has no rungs: the panel says so
    page.wait_for_selector("#fidelity :text('No rung losses recorded')", timeout=30_000)


def test_clicking_a_point_opens_its_trial_panel(page, study_url):
    _points(page)
    point = page.locator("#pareto .scatterlayer .trace").first.locator(".point").first
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    hovered = ""
    for attempt in range(60):  # a refresh redrawing the plot can end a hover: hover again
        page.mouse.move(x + attempt % 2, y)
        try:
            page.wait_for_selector("#pareto-tooltip :text('trial')", timeout=500)  # the hover: layout cells
            hovered = page.inner_text("#pareto-tooltip", timeout=500)
        except Exception:  # Playwright's TimeoutError: the tooltip went before it was read
            continue
        if len(hovered.splitlines()) >= 3:
            break
    hovered_pattern = hovered.splitlines()[1]
    assert hovered.count("█") == len(hovered_pattern) and "val_loss:" in hovered
    assert hovered_pattern in {r["pattern"] for r in _rows(study_url)}
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#trial-title", timeout=30_000)
    title = page.inner_text("#trial-title")
    trial = int(title.split()[-1])
    panel = page.inner_text("#trial-panel")
    from hybridnas.analysis import load_trial

    row = load_trial(study_url, "dash", trial)
    assert row["pattern"] in panel and "val_loss" in panel
    page.wait_for_selector("#trial-layout .heatmaplayer")  # the layout diagram is drawn
    with page.expect_download() as download:
        page.click("#download-button")
    spec = json.loads(Path(download.value.path()).read_text())
    assert spec == row["spec"] and spec["pattern"] == row["pattern"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
