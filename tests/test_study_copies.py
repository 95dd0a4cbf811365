"""No duplicate trials: a suggestion identical to an evaluated candidate is a copy, not a trial.

The driver runs for real through :func:`hybridnas.studies.simulate.simulate` (Optuna's ask and
tell, the sampler, the table) with made-up reports instead of training; one test launches a
real study through Ray to see the stop line the CLI prints."""

import itertools

import optuna
import pytest
from typer.testing import CliRunner

from hybridnas.cli import app
from hybridnas.cluster import ensure_ray
from hybridnas.studies.config import load_study_config
from hybridnas.studies.query import list_studies, query_study
from hybridnas.studies.simulate import simulate
from hybridnas.studies.space import Infeasible, SearchSpace
from hybridnas.studies.storage import ResultsStore
from study_files import tiny_preset

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    waiting = optuna.trial.TrialState.WAITING
    return [t for t in study.get_trials() if t.state != waiting and not t.user_attrs.get("not_counted")]


def test_the_quickstarts_24_trials_are_24_distinct_candidates(tmp_path):
    config = load_study_config("quickstart", storage=f"sqlite:///{tmp_path / 'q.db'}")
    result = simulate(config, runs_dir=tmp_path / "runs")
    counted = _counted(result.study)
    assert len(counted) == 24 == len({t.user_attrs["spec_key"] for t in counted})
    copies = [t for t in result.study.get_trials() if "reused_from" in t.user_attrs]
    assert copies and result.tally.reused == len(copies)  # TPE does propose copies: they were skipped
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["not_counted"] for t in copies)
    # Optuna's best_trials: each candidate once
    best = result.study.best_trials
    assert len(best) == len({t.user_attrs["spec_key"] for t in best}) >= 2

    # the table: each candidate once by default, the copies with their original's result by flag
    rows = query_study(config.storage, config.name)
    assert len(rows) == 24 == len({r["spec_key"] for r in rows})
    with_copies = query_study(config.storage, config.name, copies=True)
    assert len(with_copies) == 24 + len(copies)
    by_trial = {r["trial"]: r for r in with_copies}
    for copy in (r for r in with_copies if r["status"] == "copy"):
        original = by_trial[copy["reused_from"]]
        assert original["status"] in ("complete", "pruned") and original["reused_from"] is None
        assert (copy["spec_key"], copy["val_loss"], copy["rungs"]) == (
            original["spec_key"], original["val_loss"], original["rungs"])
    front = query_study(config.storage, config.name, pareto=["val_loss", "cache_bytes"], copies=True)
    assert len(front) == len({r["spec_key"] for r in front})
    (summary,) = list_studies(config.storage)
    assert summary["copy"] == len(copies) and summary["trials"] == len(result.study.get_trials())


def test_cli_query_shows_copies_only_with_the_flag(tmp_path):
    config = load_study_config("quickstart", storage=f"sqlite:///{tmp_path / 'q.db'}", trials=16)
    simulate(config, runs_dir=tmp_path / "runs")
    runner = CliRunner()
    plain = runner.invoke(app, ["query", "quickstart", "--storage", config.storage, "--format", "csv"])
    flagged = runner.invoke(app, ["query", "quickstart", "--storage", config.storage, "--format", "csv",
                                  "--copies"])
    assert plain.exit_code == flagged.exit_code == 0
    assert "copy" not in plain.output and len(plain.output.splitlines()) == 1 + 16
    assert ",copy," in flagged.output and len(flagged.output.splitlines()) > 1 + 16


def _one_candidate_study(tmp_path, trials: int):
    """test-tiny reduced to two inter-layer candidates (one attention mixer, even or middle
    placement, which at 2 mixers may build the same spec) and the Mamba-2 baseline."""
    text = tiny_preset("tiny-space", ("n_attn = [0, 1, 2]", "n_attn = [1]"), ('fusion = ["inter", "intra"]',
                       'fusion = "inter"'), ('baselines = ["mamba2", "bae-intra-1:5"]', 'baselines = ["mamba2"]'),
                       ("trials = 4", f"trials = {trials}"))
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return load_study_config(str(path), storage=f"sqlite:///{tmp_path / 'tiny.db'}")


def test_an_exhausted_space_stops_the_study_with_one_line(tmp_path):
    config = _one_candidate_study(tmp_path, trials=10)
    space = SearchSpace(config)
    distinct = space.distinct_keys(limit=100)
    assert distinct is not None and 1 <= len(distinct) <= 2
    result = simulate(config, runs_dir=tmp_path / "runs")
    counted = _counted(result.study)
    keys = {t.user_attrs["spec_key"] for t in counted}
    assert distinct <= keys and len(counted) == len(keys) == len(distinct) + 1  # the baseline is outside the space
    assert result.tally.stop_reason == (f"the search space is exhausted: all {len(distinct)} distinct candidates "
                                        f"are evaluated ({len(counted)} of 10 trials used)")
    # resumed with more trials: nothing left to ask, nothing trained, the same line
    again = simulate(config, runs_dir=tmp_path / "runs", trials=20)
    assert _counted(again.study) == counted and again.tally.done == 0
    assert again.tally.stop_reason is not None and again.tally.stop_reason.startswith("the search space is exhausted")


def test_a_resumed_study_counts_no_copies(tmp_path):
    config = load_study_config("quickstart", storage=f"sqlite:///{tmp_path / 'q.db'}", trials=12)
    simulate(config, runs_dir=tmp_path / "runs")
    result = simulate(config, runs_dir=tmp_path / "runs", trials=20)
    counted = _counted(result.study)
    assert len(counted) == 20 == len({t.user_attrs["spec_key"] for t in counted})


@pytest.mark.parametrize("preset", ["quickstart", "test-tiny", "moe", "inter-vs-intra"])
def test_distinct_keys_are_those_of_every_grid_point(preset):
    """Oracle: the define-by-run walk finds exactly the feasible specs that the product of
    every searched parameter's choices (the grid sampler's view) builds."""
    space = SearchSpace(load_study_config(preset))
    grid = space.grid()
    expected = set()
    for values in itertools.product(*grid.values()):
        try:
            expected.add(space.spec_from_params(dict(zip(grid, values, strict=True))).key)
        except Infeasible:
            pass
    assert space.distinct_keys(limit=10**6) == expected
    assert space.distinct_keys(limit=1) is None or len(expected) == 1


def test_a_space_too_large_to_enumerate_is_never_called_exhausted():
    assert SearchSpace(load_study_config("quickstart")).distinct_keys(limit=5) is None


def test_launch_prints_why_it_stopped_early(tmp_path):
    """A real study (Ray, training) of a space smaller than its trials: each candidate is
    trained once, and the CLI's last lines say the space is exhausted."""
    import ray

    config = _one_candidate_study(tmp_path, trials=6)
    ensure_ray(num_cpus=2)
    try:
        result = CliRunner().invoke(app, ["launch", str(tmp_path / "tiny.toml"), "--storage", config.storage])
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert "the search space is exhausted: all" in result.output
    study = optuna.load_study(study_name=config.name, storage=config.storage)
    counted = _counted(study)
    assert len(counted) == len({t.user_attrs["spec_key"] for t in counted}) < 6


def test_copy_rows_keep_the_schema_readers_expect(tmp_path):
    """A copy's row names its original and carries its result; readers that list trained
    candidates (ResultsStore.rows(copies=False)) never see it."""
    config = load_study_config("quickstart", storage=f"sqlite:///{tmp_path / 'q.db'}")
    simulate(config, runs_dir=tmp_path / "runs")
    store = ResultsStore(config.storage, readonly=True)
    every, trained = store.rows(config.name), store.rows(config.name, copies=False)
    store.dispose()
    assert {r["trial"] for r in every} - {r["trial"] for r in trained} == {
        r["trial"] for r in every if r["status"] == "copy"}
    assert all(r["reused_from"] is not None for r in every if r["status"] == "copy")


def _bridge_of(config, tmp_path):
    """The driver's bridge and scheduler on ``config``'s study, as launch builds them, for a
    test that plays Tune with several trials open at once (simulate runs one at a time)."""
    from hybridnas.studies.driver import OptunaBridge, ParetoScheduler, Tally
    from hybridnas.studies.space import make_sampler

    store = ResultsStore(config.storage)
    store.create()
    study = optuna.create_study(study_name=config.name, storage=config.storage, sampler=make_sampler(config),
                                directions=list(config.directions))
    scheduler = ParetoScheduler.for_study(config)
    bridge = OptunaBridge(study=study, space=SearchSpace(config), config=config, store=store, scheduler=scheduler,
                          trial_root=tmp_path / "runs", tally=Tally())
    return bridge, scheduler, study, store


@pytest.mark.parametrize("twin_ends", ["complete", "fail"])
def test_a_candidate_identical_to_one_still_training_waits_for_its_result(tmp_path, twin_ends):
    """concurrent > 1: the same candidate suggested while its twin trains is not trained again
    and not counted; when the twin ends it becomes a copy of its result (or, if the twin
    failed, a failure not counted), and the sampler was asked for another candidate at once."""
    from hybridnas.studies.protocol import report_to_tune, request_from_tune
    from hybridnas.studies.simulate import _run, made_up_outcome

    config = load_study_config("quickstart", storage=f"sqlite:///{tmp_path / 'q.db'}", trials=3, baselines=[],
                               enqueue=[], concurrent=2, **{"budget.rungs": []})
    bridge, scheduler, study, store = _bridge_of(config, tmp_path)
    params = {"attn_ratio": "1:5", "fusion": "intra", "placement": "even", "merge.norm": "group", "merge.op": "sub"}
    study.enqueue_trial(params)
    study.enqueue_trial(params, skip_if_exists=False)

    first = request_from_tune(bridge.suggest("a"))  # trial 0 trains
    second = request_from_tune(bridge.suggest("b"))  # trial 1 (the twin) waits; trial 2 is asked instead
    assert (first.number, second.number) == (0, 2)
    waiting = store.row(config.name, 1)
    assert waiting["status"] == "copy" and waiting["reused_from"] == 0 and waiting["val_loss"] is None
    assert study.get_trials()[1].state == optuna.trial.TrialState.RUNNING  # the sampler sees the point taken
    assert bridge.tally.reused == 1 and bridge.counted == 2

    if twin_ends == "complete":
        _run(bridge, scheduler, "a", first, made_up_outcome)
    else:
        bridge.on_trial_complete("a", report_to_tune(made_up_outcome(first, None)), error=True)
    twin, original = study.get_trials()[1], study.get_trials()[0]
    row = store.row(config.name, 1)
    assert twin.user_attrs["not_counted"] and twin.user_attrs["reused_from"] == 0
    if twin_ends == "complete":
        assert original.state == optuna.trial.TrialState.COMPLETE
        assert twin.state == optuna.trial.TrialState.PRUNED
        assert row["status"] == "copy" and row["val_loss"] == store.row(config.name, 0)["val_loss"] is not None
    else:
        assert twin.state == optuna.trial.TrialState.FAIL and row["status"] == "fail" and "failed" in row["failure"]
    # the twin used none of the study's trials: trials 0 and 2 count (a failure before the
    # study's first success does not count either: it is most likely the settings')
    assert [t.number for t in _counted(study)] == ([0, 2] if twin_ends == "complete" else [2])
    store.dispose()
