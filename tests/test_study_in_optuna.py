"""A hybridnas study as Optuna's own tools read it (issue 17, item 2): ``optuna.load_study``
and optuna-dashboard's API name every objective, show each trial's state and values, and
say why and where a pruned trial stopped; a study deleted in Optuna and created again
under its name inherits no rows, and ``delete_study`` removes both sides.
"""

import io
import json
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from hybridnas.errors import UserError
from hybridnas.studies.config import load_study_config
from hybridnas.studies.launch import delete_study
from hybridnas.studies.lease import StudyBusy, take_lease
from hybridnas.studies.simulate import simulate
from hybridnas.studies.storage import ResultsStore


def _simulated(database_url, tmp_path, trials=10):
    """The test-tiny study driven to ``trials`` by the simulated trainer (real Optuna, real tables)."""
    config = load_study_config("test-tiny", storage=database_url, trials=trials)
    simulate(config, runs_dir=tmp_path / "runs")
    return config


def _dashboard_get(url: str, path: str) -> dict:
    """GET ``path`` from optuna-dashboard's own WSGI app over the study database."""
    from optuna_dashboard import wsgi

    app = wsgi(optuna.storages.RDBStorage(url))
    environ: dict = {"PATH_INFO": path.split("?")[0], "QUERY_STRING": path.partition("?")[2],
                     "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:500])
    return json.loads(body)


def test_optuna_and_its_dashboard_read_names_states_values_and_why_trials_stopped(database_url, tmp_path):
    config = _simulated(database_url, tmp_path)
    labels = [ref.label for ref in config.refs]
    study = optuna.load_study(study_name="test-tiny", storage=database_url)
    assert study.metric_names == labels == ["val_loss", "params"]

    store = ResultsStore(database_url, readonly=True)
    rows = {r["trial"]: r for r in store.rows("test-tiny")}
    store.dispose()
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.COMPLETE in states and optuna.trial.TrialState.PRUNED in states
    for trial in study.trials:
        if trial.user_attrs.get("stopped") == "infeasible":  # settled while asking: no row, its reason kept
            assert trial.number not in rows and trial.user_attrs["infeasible"]
            continue
        row = rows[trial.number]
        assert row["optuna_study_id"] == study._study_id
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.values == [pytest.approx(row["val_loss"]), row["params"]]
        elif trial.state == optuna.trial.TrialState.PRUNED:
            why = trial.user_attrs["stopped"]
            assert why in ("rung", "reused"), trial.user_attrs
            if why == "rung":  # the rung that stopped it, as its row keeps it
                last = row["rungs"][-1]
                assert trial.user_attrs["rung"] == last["rung"]
                assert trial.user_attrs["rung_val_loss"] == pytest.approx(last["val_loss"])
                assert (trial.user_attrs["rung_tokens"], trial.user_attrs["rung_flops"]) == (last["tokens"],
                                                                                              last["flops"])
            elif why == "reused":
                assert trial.user_attrs["reused_from"] == row["reused_from"]
    assert any(t.user_attrs.get("stopped") == "rung" for t in study.trials)

    listed = _dashboard_get(database_url, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in listed] == ["test-tiny"]
    detail = _dashboard_get(database_url, f"/api/studies/{listed[0]['study_id']}")
    assert detail["objective_names"] == labels and detail["directions"] == ["minimize", "minimize"]
    shown = {t["number"]: t for t in detail["trials"]}
    for trial in study.trials:
        assert shown[trial.number]["state"] == trial.state.name.capitalize()
        attrs = {a["key"]: a["value"] for a in shown[trial.number]["user_attrs"]}
        assert attrs.get("stopped") == (str(trial.user_attrs["stopped"]) if "stopped" in trial.user_attrs else None)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert shown[trial.number]["values"] == pytest.approx(trial.values)


def test_a_study_deleted_in_optuna_and_created_again_inherits_no_rows(database_url, tmp_path):
    _simulated(database_url, tmp_path, trials=6)
    optuna.delete_study(study_name="test-tiny", storage=database_url)  # as `optuna delete-study` does
    _simulated(database_url, tmp_path, trials=3)
    study = optuna.load_study(study_name="test-tiny", storage=database_url)
    store = ResultsStore(database_url, readonly=True)
    rows = store.rows("test-tiny")
    store.dispose()
    assert sorted(r["trial"] for r in rows) == [t.number for t in study.trials]
    assert {r["optuna_study_id"] for r in rows} == {study._study_id}


def test_delete_study_removes_the_optuna_study_and_its_rows(database_url, tmp_path):
    _simulated(database_url, tmp_path, trials=4)
    store = ResultsStore(database_url)
    with take_lease(store, "test-tiny"), pytest.raises(StudyBusy):  # a live driver's study is not deleted
        delete_study(database_url, "test-tiny")
    assert len(store.rows("test-tiny")) >= 4

    assert delete_study(database_url, "test-tiny") >= 4
    assert store.rows("test-tiny") == [] and "test-tiny" not in optuna.get_all_study_names(database_url)
    store.dispose()
    with pytest.raises(UserError, match="no study 'test-tiny' in"):
        delete_study(database_url, "test-tiny")


def test_hybridnas_delete_asks_for_yes_where_it_cannot_ask(database_url, tmp_path, capsys):
    from hybridnas.cli import main

    _simulated(database_url, tmp_path, trials=3)
    capsys.readouterr()
    assert main(["delete", "test-tiny", "--storage", database_url]) == 2  # pytest's stdin is no terminal
    assert capsys.readouterr().err.startswith("error: delete test-tiny: pass --yes")
    assert "test-tiny" in optuna.get_all_study_names(database_url)
    assert main(["delete", "test-tiny", "--storage", database_url, "--yes"]) == 0
    assert capsys.readouterr().out.startswith("deleted study test-tiny: the Optuna study and ")
    assert optuna.get_all_study_names(database_url) == []
