"""Nothing lost, nothing silently wrong: one driver per study (a lease), a changed study file
refused, a kill between a trial's row and Optuna's tell repaired, Ctrl-C leaving nothing
running, and read commands that never write.

Real SQLite and PostgreSQL (the lease), a real ``hybridnas launch`` process on its embedded
Ray (two drivers, Ctrl-C), and a real SIGKILL at the split point.
"""

import datetime as dt
import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import optuna
import pytest
from sqlalchemy import text, update

from hybridnas.cli import main
from hybridnas.cluster import ensure_ray
from hybridnas.studies.changes import Change, StudyChanged, check_relaunch
from hybridnas.studies.lease import LEASES, StudyBusy, holder, take_lease
from hybridnas.studies.storage import ResultsStore


def _store(url: str) -> ResultsStore:
    store = ResultsStore(url)
    store.create()
    return store


# ---- the lease ------------------------------------------------------------------------------


def test_a_second_driver_is_refused_while_the_first_holds_the_lease(database_url):
    store = _store(database_url)
    with take_lease(store, "s") as first:
        with pytest.raises(StudyBusy, match=rf"pid {os.getpid()} on .*expires in \d+ s"):
            take_lease(store, "s")
        assert holder(store, "s").owner == first.owner
        with take_lease(store, "other-study"):  # a lease is per study
            pass
    with take_lease(store, "s") as again:  # released: free for the next driver
        assert again.taken_over is None
    assert holder(store, "s") is None


def test_an_expired_lease_is_taken_over_once(database_url):
    store = _store(database_url)
    stale = take_lease(store, "s")
    stale._stop.set()  # its heartbeat stops, as a hung driver's would
    with store.engine.begin() as conn:
        conn.execute(update(LEASES).values(expires_at=dt.datetime(2000, 1, 1)))
    with take_lease(store, "s") as new:
        assert new.taken_over is not None and new.taken_over.owner == stale.owner
        with pytest.raises(StudyBusy):
            take_lease(store, "s")


def test_the_heartbeat_outlives_a_database_that_is_away_for_a_while(database_url, monkeypatch):
    from hybridnas.studies import lease

    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.1)
    store = _store(database_url)
    with take_lease(store, "s") as held:
        with store.engine.begin() as conn:  # the lease table gone: each beat's UPDATE fails
            conn.execute(text("ALTER TABLE hybridnas_leases RENAME TO hybridnas_leases_away"))
        time.sleep(1.0)
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE hybridnas_leases_away RENAME TO hybridnas_leases"))
            conn.execute(update(LEASES).values(expires_at=dt.datetime(2000, 1, 1)))
        assert held._thread.is_alive()
        deadline = time.monotonic() + 10
        while holder(store, "s").expires_at < dt.datetime(2001, 1, 1):  # renewed again
            assert time.monotonic() < deadline, "the heartbeat stopped with the database"
            time.sleep(0.05)


def test_a_dead_drivers_lease_on_this_host_is_taken_over_at_once(database_url):
    store = _store(database_url)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = take_lease(store, "s")
    dead._stop.set()
    with store.engine.begin() as conn:  # the holder is a process that has exited (kill -9 of a driver)
        conn.execute(update(LEASES).values(pid=int(gone.stdout)))
    with take_lease(store, "s") as new:
        assert new.taken_over.pid == int(gone.stdout)



@pytest.mark.slow
def test_a_second_launch_is_refused_and_ctrl_c_leaves_nothing_running(tmp_path):
    """tests/ctrl_c_scenario.py in a fresh interpreter. Late in the full suite its driver missed
    its SIGINT in four runs out of four, never alone. The suspect: SIGINT ignored or blocked
    in this process by then, which a child inherits. The scenario starts its driver with
    SIGINT at its default, as a terminal would, and a warning says when this process's was not."""
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "ctrl_c_scenario.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-6000:]
    inherited = done.stdout.splitlines()[0]
    if "ignored=True" in inherited or "blocked=True" in inherited:
        warnings.warn(f"the test process's SIGINT was not at its default ({inherited})", stacklevel=1)

# ---- a changed study file -------------------------------------------------------------------


def _row_hash(url: str) -> str:
    store = ResultsStore(url, readonly=True)
    rows = store.rows("quickstart", copies=True)
    store.dispose()
    return hashlib.sha256(repr(sorted((r["trial"], r["status"], r["val_loss"]) for r in rows)).encode()).hexdigest()


@pytest.fixture
def quickstart_db(tmp_path):
    """The quickstart study, 6 trials driven by the simulated trainer (real Optuna and SQLite)."""
    from hybridnas.studies.config import load_study_config
    from hybridnas.studies.simulate import simulate

    url = f"sqlite:///{tmp_path / 'study.db'}"
    simulate(load_study_config("quickstart", storage=url, trials=6), runs_dir=tmp_path / "runs")
    return url


@pytest.mark.parametrize(("setting", "shown"), [
    ("budget.flops=2e15", "budget.flops"),
    ("trainer.lr=0.01", "trainer.lr"),
    ("space.rope=[false]", "space.rope"),
    ("objectives=[{name='val_loss'}, {name='params', direction='maximize'}]", "objectives"),
    ("recall.steps=10", "recall.steps"),
])
def test_a_relaunch_that_changes_what_the_study_measures_is_refused(capsys, quickstart_db, setting, shown):
    before = _row_hash(quickstart_db)
    code = main(["launch", "quickstart", "--storage", quickstart_db, "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: study quickstart was created with another config: {shown} ")
    assert "new study name" in err
    assert _row_hash(quickstart_db) == before


def test_a_relaunch_whose_recall_defaults_resolve_differently_is_refused(capsys, tmp_path, monkeypatch):
    """The MQAR pairs are the proxy's default, not a key of the study file: a hybridnas that
    changed it would score new trials on another task. The study remembers what its defaults
    resolved to and refuses a relaunch under others."""
    from hybridnas.proxies import recall
    from hybridnas.studies.changes import measured_with
    from hybridnas.studies.config import load_study_config
    from hybridnas.studies.simulate import simulate

    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = load_study_config("quickstart", storage=url, trials=4,
                               objectives=[{"name": "val_loss"}, {"name": "recall", "direction": "maximize"}])
    simulate(config, runs_dir=tmp_path / "runs")
    saved = optuna.load_study(study_name="quickstart", storage=url).user_attrs["measured_with"]
    assert saved == measured_with(config) and saved["recall"]["mqar"]["knobs"]["num_kv_pairs"] == 8
    before = _row_hash(url)
    monkeypatch.setitem(recall.PROXY_TASK_SETTINGS, "mqar", {"vocab_size": 64, "num_kv_pairs": 10})
    code = main(["launch", "quickstart", "--storage", url, "--trials", "4",
                 "--set", "objectives=[{name='val_loss'}, {name='recall', direction='maximize'}]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: study quickstart was measured with other defaults than this hybridnas's: "
                          "recall.mqar.knobs.num_kv_pairs 8 -> 10"), err
    assert _row_hash(url) == before


def test_an_allowable_change_needs_its_key_named(capsys, quickstart_db):
    code = main(["launch", "quickstart", "--storage", quickstart_db, "--set", "sampler.seed=7"])
    err = capsys.readouterr().err
    assert code == 2 and "sampler.seed 0 -> 7" in err and "--allow-change sampler.seed" in err
    code = main(["launch", "quickstart", "--storage", quickstart_db, "--allow-change", "budget.flops"])
    assert code == 2 and "only sampler, baselines" in capsys.readouterr().err


def test_what_a_relaunch_may_change():
    saved = {"trials": 24, "budget": {"flops": 1e9}, "sampler": {"seed": 0}, "trainer": {"progress": True}}
    new = {"trials": 40, "budget": {"flops": 1e9}, "sampler": {"seed": 3}, "trainer": {"progress": False}}
    changes = check_relaunch("s", saved, new, allowed=("sampler",))
    assert {c.key: c.kind for c in changes} == {"trials": "free", "sampler.seed": "allowable",
                                                 "trainer.progress": "free"}
    with pytest.raises(StudyChanged, match="sampler.seed 0 -> 3"):
        check_relaunch("s", saved, new)
    assert Change("budget.flops", 1e9, 2e9).kind == "refused"


# ---- a kill between a trial's row and Optuna's tell ----------------------------------------

_KILLED_AT_TELL = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import optuna
    from hybridnas.studies.config import load_study_config
    from hybridnas.studies.simulate import simulate

    tell = optuna.Study.tell
    def tell_then_die(self, trial, values=None, state=None, **kw):
        if values is not None:  # the first complete trial: its row is written, Optuna not yet told
            os.kill(os.getpid(), signal.SIGKILL)
        return tell(self, trial, values, state, **kw)
    optuna.Study.tell = tell_then_die
    simulate(load_study_config("quickstart", storage=sys.argv[1], trials=6), runs_dir=Path(sys.argv[2]))
""")


def test_a_kill_between_the_row_and_the_tell_is_repaired_by_the_next_launch(tmp_path):
    from hybridnas.studies.config import load_study_config
    from hybridnas.studies.launch import _reconcile

    url = f"sqlite:///{tmp_path / 'study.db'}"
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_TELL, url, str(tmp_path / "runs")])
    assert killed.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name="quickstart", storage=url)
    (cut,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    store = ResultsStore(url)
    row = store.row("quickstart", cut.number)
    assert row["status"] == "complete"  # the split: the row says complete, Optuna says running

    config = load_study_config("quickstart", storage=url)
    assert _reconcile(study, store, config.refs, "requeued") == 0  # nothing to train again
    repaired = study.get_trials()[cut.number]
    assert repaired.state == optuna.trial.TrialState.COMPLETE
    assert repaired.values[0] == pytest.approx(row["val_loss"])
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))  # the baselines not yet run
    assert not [t for t in waiting if "requeued_from" in t.user_attrs]  # and no copy of the repaired trial


# ---- two real drivers, Ctrl-C -------------------------------------------------------------


# ---- read commands never write --------------------------------------------------------------


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


READERS = [["studies"], ["query", "s"], ["query", "s", "--pareto", "val_loss"], ["report", "s", "-o", "r.html"],
           ["fidelity", "s"], ["dashboard"]]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: " ".join(r))
@pytest.mark.parametrize("target", ["foreign", "missing", "empty"])
def test_a_read_command_leaves_the_files_as_they_were(capsys, tmp_path, monkeypatch, reader, target):
    """A foreign SQLite file (a table, no study), a path that does not exist, and ``''``:
    one line, exit 2, and not a byte changed or created (no WAL switch, no Optuna tables)."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.close()
    url = {"foreign": f"sqlite:///{foreign}", "missing": f"sqlite:///{tmp_path / 'no' / 'such.db'}",
           "empty": ""}[target]
    before = _tree(tmp_path)
    code = main([*reader, "--storage", url])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert _tree(tmp_path) == before


# ---- settings that fail every trial -------------------------------------------------------


@pytest.mark.slow
def test_settings_that_fail_every_trial_stop_the_study_and_count_no_trial(capsys, tmp_path):
    """A budget below one training sequence of any candidate, and no baselines (those launch
    checks against the budget before it writes): every trial fails alike on its worker. The
    study stops after the first three, exits 1 with the reason, and counts none of them, so
    the same study with a fixed file trains for real."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ensure_ray(num_cpus=2)
    try:
        code = main(["launch", "test-tiny", "--storage", url, "--trials", "6",
                     "--set", "baselines=[]", "--set", "budget.flops=1000"])
    finally:
        import ray

        ray.shutdown()
    out = capsys.readouterr().out
    assert code == 1, out
    assert "first 3 trials failed alike" in out and "less than one training sequence" in out, out
    study = optuna.load_study(study_name="test-tiny", storage=url)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 3 and all(t.user_attrs["not_counted"] for t in failed)


def test_a_dashboard_open_to_the_network_says_so(quickstart_db):
    """``--host 0.0.0.0``: a warning on stderr before it serves (the real server, stopped after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "hybridnas", "dashboard", "--storage", quickstart_db,
                               "--host", "0.0.0.0", "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        first = server.stderr.readline()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert first.startswith("warning: --host 0.0.0.0: the dashboard has no login"), first
