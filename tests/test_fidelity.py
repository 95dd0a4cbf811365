"""`hybridnas fidelity`: rung, seed and cross-study rank agreement on constructed studies,
checked against values counted by hand."""

import json
import math
from itertools import combinations

import optuna
import pytest

from hybridnas import ArchSpec
from hybridnas.analysis.fidelity import (
    FidelityError,
    agreement_between,
    load_fidelity,
    rung_agreement,
    seed_spread,
)
from hybridnas.analysis.report import render_report
from hybridnas.analysis.study import load_study
from hybridnas.cli import main
from hybridnas.studies.storage import ResultsStore, spec_columns

PATTERNS = ["M-M-", "M-*-", "*-M-", "*-*-", "M-M-M-", "M-*-M-", "*-M-M-"]
SPECS = [ArchSpec.from_pattern(p, d_model=64) for p in PATTERNS]

FINAL = [3.0, 3.1, 3.2, 3.3, 3.4]  # candidates 0..4 of study "a"
RUNG0 = [4.0, 4.2, 4.1, 4.4, 4.3]  # swaps (1, 2) and (3, 4)
RUNG1 = [3.5, 3.6, 3.7, 3.8]  # candidate 4 has no rung 1: n = 4
SEEDS = [[v - 0.1, v + 0.1] for v in FINAL]  # std sqrt(0.02) each, means FINAL
B_SHARED = [2.0, 2.2, 2.1, 2.3]  # study "b" on candidates 0..3: swaps (1, 2)


def kendall_by_hand(x, y):
    """(concordant − discordant) / pairs, for data without ties."""
    signs = [(x[i] - x[j]) * (y[i] - y[j]) for i, j in combinations(range(len(x)), 2)]
    concordant, discordant = sum(s > 0 for s in signs), sum(s < 0 for s in signs)
    return (concordant - discordant) / len(signs)


def spearman_by_hand(x, y):
    """1 − 6 Σd² / (n(n²−1)), for data without ties."""
    rank = lambda v: [sorted(v).index(e) for e in v]  # noqa: E731
    d2 = sum((a - b) ** 2 for a, b in zip(rank(x), rank(y), strict=True))
    n = len(x)
    return 1 - 6 * d2 / (n * (n * n - 1))


def _row(study, trial, spec, status="complete", **more):
    return {"study": study, "trial": trial, "status": status, **spec_columns(spec), **more}


@pytest.fixture
def url(tmp_path):
    """Study "a" (config rungs 0.25, 0.5; 5 finished candidates with 2 seeds each, plus a pruned,
    a reused and a failed trial), "b" (no config; shares candidates 0..3 with "a"), "c" (shares
    nothing), "one" (one finished candidate), "none" (nothing finished)."""
    url = f"sqlite:///{tmp_path / 'fidelity.db'}"
    study = optuna.create_study(study_name="a", storage=url, directions=["minimize", "minimize"])
    study.set_user_attr("config", {"budget": {"rungs": [0.25, 0.5]},
                                   "objectives": [{"name": "val_loss"}, {"name": "params"}]})
    store = ResultsStore(url)
    store.create()
    for i, final in enumerate(FINAL):
        rungs = [{"rung": 0, "val_loss": RUNG0[i], "tokens": 100, "flops": 1e9}]
        if i < len(RUNG1):
            rungs.append({"rung": 1, "val_loss": RUNG1[i], "tokens": 200, "flops": 2e9})
        store.upsert(_row("a", i, SPECS[i], val_loss=final, rungs=rungs,
                          metrics={"val_loss": final, "val_loss_seeds": SEEDS[i]}))
    # left out: a pruned trial, a reused result and a failure, each of which would break the order
    store.upsert(_row("a", 5, SPECS[5], status="pruned", val_loss=9.0, rungs=[{"rung": 0, "val_loss": 1.0}]))
    store.upsert(_row("a", 6, SPECS[0], val_loss=9.0, reused_from=0, rungs=[{"rung": 0, "val_loss": 1.0}],
                      metrics={"val_loss_seeds": [9.0, 1.0]}))
    store.upsert(_row("a", 7, SPECS[6], status="fail", failure="oom"))
    for i, loss in enumerate(B_SHARED):
        store.upsert(_row("b", i, SPECS[i], val_loss=loss, rungs=[{"rung": 0, "val_loss": loss + 1}]))
    store.upsert(_row("b", 4, SPECS[6], val_loss=1.0))  # only in "b"
    store.upsert(_row("c", 0, SPECS[5], val_loss=1.0))
    store.upsert(_row("c", 1, SPECS[6], val_loss=2.0))
    store.upsert(_row("one", 0, SPECS[0], val_loss=1.0))
    store.upsert(_row("one", 1, SPECS[1], status="pruned", val_loss=2.0))
    store.upsert(_row("none", 0, SPECS[0], status="fail"))
    store.dispose()
    return url


def test_rungs_rank_agreement_matches_hand_counts(url):
    report = load_fidelity(url, "a")
    assert report.n_finished == 5
    r0, r1 = report.rungs
    assert (r0.rung, r0.fraction, r0.n) == (0, 0.25, 5) and (r1.rung, r1.fraction, r1.n) == (1, 0.5, 4)
    assert r0.kendall_tau == pytest.approx(kendall_by_hand(RUNG0, FINAL)) == pytest.approx(0.6)  # 8 C, 2 D
    assert r0.spearman == pytest.approx(spearman_by_hand(RUNG0, FINAL)) == pytest.approx(0.8)  # Σd² = 4
    assert r1.kendall_tau == pytest.approx(1.0) and r1.spearman == pytest.approx(1.0)


def test_fraction_falls_back_to_the_rung_index_without_a_config(url):
    rungs = load_fidelity(url, "b").rungs
    assert [(r.rung, r.fraction, r.n) for r in rungs] == [(0, 0.0, 4)]
    assert rungs[0].kendall_tau == pytest.approx(1.0)


def test_rung_with_constant_losses_has_no_correlation():
    rows = [{"status": "complete", "val_loss": v, "rungs": [{"rung": 0, "val_loss": 1.0}]} for v in (1.0, 2.0)]
    (rung,) = rung_agreement(rows, [0.5])
    assert (rung.kendall_tau, rung.spearman, rung.n) == (None, None, 2)


def test_seed_spread_on_a_constructed_case(url):
    s = load_fidelity(url, "a").seeds
    assert s is not None and (s.n_candidates, s.seeds) == (5, 2)
    assert s.seed_std == pytest.approx(math.sqrt(0.02)) and s.pooled_std == pytest.approx(math.sqrt(0.02))
    assert s.between_std == pytest.approx(math.sqrt(0.025))  # std of 3.0 ... 3.4
    assert s.ratio == pytest.approx(math.sqrt(0.025 / 0.02))
    # threshold 2·sqrt(0.02)·sqrt(1/2 + 1/2) ≈ 0.283: the gaps 0.3 (2 pairs) and 0.4 (1 pair) pass
    assert (s.distinguishable_pairs, s.n_pairs) == (3, 10)
    assert s.resolved == 0  # every candidate is 0.1 from a neighbour
    assert s.tied_with_best == 3  # 3.0, 3.1 and 3.2


def test_seed_spread_needs_two_candidates_with_seeds():
    rows = [{"status": "complete", "val_loss": 1.0, "metrics": {"val_loss_seeds": [1.0, 1.2]}},
            {"status": "complete", "val_loss": 2.0, "metrics": {"val_loss_seeds": [2.0]}}]
    assert seed_spread(rows) is None
    far = [{"status": "complete", "val_loss": m, "val_loss_seeds": [m - 0.01, m + 0.01]} for m in (1.0, 2.0, 3.0)]
    s = seed_spread(far)
    assert s is not None and (s.distinguishable_pairs, s.resolved, s.tied_with_best) == (3, 3, 1)


def test_against_matches_shared_spec_keys(url):
    a = load_fidelity(url, "a", against="b").against
    assert a is not None and a.other == "b" and a.n == 4 and a.resamples == 1000
    shared_a = FINAL[:4]
    assert a.kendall_tau == pytest.approx(kendall_by_hand(shared_a, B_SHARED)) == pytest.approx(4 / 6)
    assert a.spearman == pytest.approx(spearman_by_hand(shared_a, B_SHARED)) == pytest.approx(0.8)
    for value, ci in ((a.kendall_tau, a.kendall_tau_ci), (a.spearman, a.spearman_ci)):
        assert ci.low is not None and ci.high is not None and -1 <= ci.low <= value <= ci.high <= 1
    assert load_fidelity(url, "a", against="b").against == a  # a fixed seed: the same intervals


def test_against_needs_two_shared_candidates():
    rows = [{"status": "complete", "val_loss": 1.0, "spec_key": "k1"},
            {"status": "complete", "val_loss": 2.0, "spec_key": "k2"}]
    other = [{"status": "complete", "val_loss": 1.0, "spec_key": "k1"}]
    with pytest.raises(FidelityError, match="only 1 finished candidate is shared"):
        agreement_between(rows, other)


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_shape(url, capsys):
    code, out, _ = run_cli(capsys, "fidelity", "a", "--storage", url, "--json", "--against", "b")
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"rungs", "seeds", "against"}
    assert [set(r) >= {"fraction", "kendall_tau", "spearman", "n"} for r in data["rungs"]] == [True, True]
    assert data["rungs"][0]["kendall_tau"] == pytest.approx(0.6)
    assert data["seeds"]["distinguishable_pairs"] == 3
    assert data["against"]["n"] == 4 and set(data["against"]["kendall_tau_ci"]) == {"low", "high"}
    code, out, _ = run_cli(capsys, "fidelity", "b", "--storage", url, "--json")
    data = json.loads(out)
    assert code == 0 and data["seeds"] is None and data["against"] is None


def test_cli_table(url, capsys):
    code, out, _ = run_cli(capsys, "fidelity", "a", "--storage", url, "--against", "b")
    assert code == 0 and "Kendall" in out and "0.600" in out and "against b: 4 shared" in out
    assert "3/10 pairs" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fidelity", "nope"], "error: no study 'nope'"),
        (["fidelity", "none"], "error: study 'none': no finished trials"),
        (["fidelity", "one"], "error: study 'one': only 1 finished candidate"),
        (["fidelity", "a", "--against", "c"], "error: --against c: no finished candidate (spec_key) is shared"),
        (["fidelity", "a", "--against", "nope"], "error: no study 'nope'"),
    ],
)
def test_bad_input_is_one_line(url, capsys, args, message):
    code, _, err = run_cli(capsys, *args, "--storage", url)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_fidelity_only_reads(url, tmp_path):
    path = tmp_path / "fidelity.db"
    before = path.read_bytes()
    load_fidelity(url, "a", against="b")
    assert path.read_bytes() == before


def test_report_has_a_fidelity_section(url):
    html = render_report(load_study(url, "a", full=True), url)
    assert "<h2>Fidelity</h2>" in html and "3/10 pairs distinguishable" in html
    assert "<h2>Fidelity</h2>" not in render_report(load_study(url, "c", full=True), url)


def test_dashboard_panel_shows_the_rung_table(url):
    """The dashboard's fidelity tab: the same rung agreement as the command, as a table."""
    from hybridnas.analysis.dashboard import _fidelity_panel
    from hybridnas.analysis.study import load_study

    text = str(_fidelity_panel(load_study(url, "a"), url))
    assert "Kendall τ" in text and "0.600" in text and "0.800" in text and "seeds: 5 candidates" in text, text
