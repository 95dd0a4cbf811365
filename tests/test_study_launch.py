"""A whole study through Ray: the test-sized preset end to end, on SQLite and PostgreSQL."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import ray

from hybridnas.cli import main
from hybridnas.cluster import ensure_ray
from hybridnas.studies.launch import launch
from study_files import tiny_preset


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_tiny_study_end_to_end(database_url, capsys):
    report = launch("test-tiny", storage=database_url, trials=5, progress=False)
    study = optuna.load_study(study_name="test-tiny", storage=report.storage)
    trials = [t for t in study.get_trials() if not t.user_attrs.get("not_counted")]
    assert len(trials) == 5
    states = {t.state for t in study.get_trials()}
    assert optuna.trial.TrialState.RUNNING not in states
    ran = [t for t in study.get_trials() if t.state != optuna.trial.TrialState.WAITING]
    baselines = [t.user_attrs["baseline"] for t in ran if "baseline" in t.user_attrs]
    assert baselines == ["mamba2", "bae-intra-1:5"]  # enqueued first, in order
    # at 2 mixers, 1:5 rounds to no attention: Bae's intra baseline is the Mamba-2 one again,
    # a copy that is not counted (each counted trial is a distinct candidate)
    assert ran[1].user_attrs["reused_from"] == ran[0].number and ran[1].user_attrs["not_counted"]
    assert len({t.user_attrs["spec_key"] for t in trials}) == 5

    capsys.readouterr()  # Tune's own output
    assert main(["query", "test-tiny", "--storage", database_url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_trial = {r["trial"]: r for r in rows}
    for t in trials:  # every trial has its row, with Optuna's state
        row = by_trial[t.number]
        assert row["status"] == t.state.name.lower()
        assert row["pattern"] and "val_loss" in row and row["params"] > 0  # cost columns on every row
        if row["status"] == "complete":
            assert row["val_loss"] == pytest.approx(t.values[0]) and row["params"] == t.values[1]
            assert row["loss_curve"]["val"][0]["tokens"] == 0
        if row["status"] == "pruned":
            assert row["rungs"] and row["val_loss"] == row["rungs"][-1]["val_loss"]
    assert any(r["status"] == "complete" for r in rows)
    # one trial at a time on one reused actor: the trained trials share a worker process
    trained = [r for r in rows if r["hardware"] and r.get("reused_from") is None]
    workers = {r["hardware"].rsplit("worker pid ", 1)[1] for r in trained}
    assert len(trained) >= 2 and len(workers) < len(trained), workers
    # Tune's own logger callbacks still write each trial's results
    from hybridnas.studies.launch import runs_dir_for

    tune_dir = runs_dir_for(report.storage, "test-tiny") / "tune"
    assert list(tune_dir.glob("*/progress.csv")) and list(tune_dir.glob("*/result.json"))
    assert report.pareto and all(r["status"] == "complete" for r in report.pareto)

    # the same command again adds nothing: --trials is the study's total
    again = launch("test-tiny", storage=database_url, trials=5, progress=False)
    assert len(optuna.load_study(study_name="test-tiny", storage=again.storage).trials) == len(study.trials)
    assert again.tally.done == again.tally.pruned == again.tally.failed == 0


def test_driver_killed_mid_study_resumes_with_no_trial_lost(tmp_path):
    """kill -9 of the driver (and its embedded Ray) while a trial runs; the same command
    again finishes the study: the right number of counted trials, none left running, the
    orphan failed and requeued."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "hybridnas", "launch", "test-tiny", "--storage", url, "--trials", "6"]
    env = dict(os.environ)
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            statuses = _statuses(url)
            if "complete" in statuses and "running" in statuses:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the study ended before it could be interrupted"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert "running" in _statuses(url)

    launch("test-tiny", storage=url, trials=6, progress=False)
    study = optuna.load_study(study_name="test-tiny", storage=url)
    counted = [t for t in study.trials if not t.user_attrs.get("not_counted")]
    orphans = [t for t in study.trials if t.user_attrs.get("not_counted")
               and not {"infeasible", "reused_from"} & set(t.user_attrs)]
    assert len(counted) == 6
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    assert orphans and all(t.state == optuna.trial.TrialState.FAIL for t in orphans)
    requeued = {t.user_attrs.get("requeued_from") for t in counted}
    assert {t.number for t in orphans} <= requeued
    assert "running" not in _statuses(url)


def _statuses(url: str) -> list[str]:
    from hybridnas.studies.storage import ResultsStore

    store = ResultsStore(url)
    try:
        return [r["status"] for r in store.rows("test-tiny")] if store.has_table() else []
    except Exception:  # the driver may be creating the tables right now
        return []
    finally:
        store.dispose()



def test_failed_trainings_are_recorded_and_the_study_goes_on(tmp_path):
    """A learning rate that makes every candidate diverge: each trial is a recorded failure
    with its reason, and the study ends after three alike failures, none left running."""
    study_file = tmp_path / "diverging.toml"
    study_file.write_text(tiny_preset("diverging", ("[trainer]\n", "[trainer]\nlr = 50.0\n")))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    report = launch(str(study_file), storage=url, trials=3, progress=False)
    assert report.tally.failed >= 1
    study = optuna.load_study(study_name="diverging", storage=url)
    assert len(study.trials) == 3 and all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    from hybridnas.studies.storage import ResultsStore

    store = ResultsStore(url)
    failed = [r for r in store.rows("diverging") if r["status"] == "fail"]
    store.dispose()
    assert failed and all(r["failure"].startswith(("diverged", "error")) for r in failed), failed
    assert all(t.user_attrs.get("failure") for t in study.trials if t.state == optuna.trial.TrialState.FAIL)


def test_fewer_trials_than_baselines_runs_the_first_baselines(tmp_path):
    """Enqueued baselines wait in Optuna's queue; waiting trials do not count as trials run,
    so --trials 1 trains the first baseline (it once ended at once, having trained none)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    report = launch("test-tiny", storage=url, trials=1, progress=False)
    study = optuna.load_study(study_name="test-tiny", storage=url)
    ran = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    assert len(ran) == 1 and ran[0].user_attrs["baseline"] == "mamba2"
    assert report.tally.done + report.tally.pruned == 1


def test_pruned_trials_keep_the_rung_that_stopped_them(tmp_path):
    """One objective and eta 100: at the rung every trial but the best so far stops (the
    sampled intra-layer hybrids trail the pure Mamba-2 baseline at half budget). A pruned row
    carries that rung (loss, tokens, FLOPs), and the compute saved counts what it spent."""
    from hybridnas.studies.storage import ResultsStore

    one_objective = tiny_preset("pruning", ('[[objectives]]\nname = "params"\n', ""), ("eta = 2", "eta = 100"),
                                ('baselines = ["mamba2", "bae-intra-1:5"]', 'baselines = ["mamba2"]'),
                                ("n_attn = [0, 1, 2]", "n_attn = [1, 2]"),
                                ('fusion = ["inter", "intra"]', 'fusion = "intra"'))
    study_file = tmp_path / "pruning.toml"
    study_file.write_text(one_objective)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    report = launch(str(study_file), storage=url, trials=4, progress=False)
    store = ResultsStore(url)
    pruned = [r for r in store.rows("pruning") if r["status"] == "pruned"]
    store.dispose()
    assert pruned and report.tally.pruned == len(pruned)
    for row in pruned:
        assert [r["rung"] for r in row["rungs"]] == [0] and row["val_loss"] == row["rungs"][0]["val_loss"]
        if row["reused_from"] is None:
            assert row["flops_spent"] == row["rungs"][0]["flops"] > 0
        else:  # the same candidate again: its pruned result, not a second training
            assert row["rungs"] == next(r["rungs"] for r in pruned if r["trial"] == row["reused_from"])
    assert 0 < report.compute_saved < 1


def test_runs_at_a_uri_go_through_tunes_storage(tmp_path):
    """``--runs-dir`` as a pyarrow URI (here ``file://``, the same code path as ``s3://``): Tune's
    experiment and every rung checkpoint land under the URI, one rung's file per folder, and
    nothing under the default folder beside the database."""
    from hybridnas.studies.launch import runs_dir_for

    url = f"sqlite:///{tmp_path / 'study.db'}"
    shared = tmp_path / "shared"
    report = launch("test-tiny", storage=url, trials=2, runs_dir=shared.as_uri(), progress=False)
    assert report.tally.done + report.tally.pruned == 2
    experiment = shared / "test-tiny" / "tune"
    assert list(experiment.glob("experiment_state-*.json")) and list(experiment.glob("*/result.json"))
    checkpoints = sorted(experiment.glob("*/checkpoint_*/rung-*.pt"))
    assert checkpoints and all(len(list(c.parent.iterdir())) == 1 for c in checkpoints)
    assert not runs_dir_for(url, "test-tiny").exists()
