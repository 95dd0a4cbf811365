"""A Ray worker killed mid-trial: Tune retries the trial once, from its last rung checkpoint;
killed again, the trial is a recorded failure with its reason, and the study still ends with
its number of trials.

The driver runs as a real ``hybridnas launch`` process (its own embedded Ray); the test
kills the trial's worker process (``ray::ImplicitFunc``) with SIGKILL, as a node failure would.
"""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from study_files import tiny_preset

pytestmark = pytest.mark.slow

DEADLINE_S = 400


def _study_file(tmp_path):
    """test-tiny with two baselines that train (pure Mamba-2, then pure attention) and a
    budget long enough (tens of seconds a trial) to kill a worker mid-trial."""
    text = tiny_preset("faults", ('baselines = ["mamba2", "bae-intra-1:5"]', 'baselines = ["mamba2", "attention"]'),
                       ("flops = 2e9", "flops = 1e11"))
    path = tmp_path / "faults.toml"
    path.write_text(text)
    return path


def _rows(url):
    from hybridnas.studies.storage import ResultsStore

    store = ResultsStore(url)
    try:
        return {r["trial"]: r for r in store.rows("faults")} if store.has_table() else {}
    except Exception:  # the driver may be creating the tables right now
        return {}
    finally:
        store.dispose()


def _trial_workers(session: int) -> set[int]:
    """PIDs of the Ray trial actors started by the driver whose session id is ``session``."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, sid, args = line.split(None, 2)
        if int(sid) == session and args.startswith("ray::ImplicitFunc"):
            pids.add(int(pid))
    return pids


def _wait(condition, driver, what):
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        assert driver.poll() is None, f"the driver ended while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_worker_of(trial, url, driver, spared=frozenset()):
    """Wait until ``trial`` runs on a worker not in ``spared`` and has trained a little, then kill -9 it."""
    def running_worker():
        if _rows(url).get(trial, {}).get("status") != "running":
            return None
        workers = _trial_workers(driver.pid) - set(spared)
        return next(iter(workers), None)

    pid = _wait(running_worker, driver, f"trial {trial} on a worker")
    time.sleep(1)  # into the training, past start-up
    os.kill(pid, signal.SIGKILL)
    return pid


def _drive(tmp_path, url, args, during):
    """Run ``hybridnas launch`` with ``args`` as a real process, call ``during(driver)`` while it
    runs, wait for it to end (or kill its process group); asserts it exited 0."""
    command = [sys.executable, "-m", "hybridnas", "launch", str(_study_file(tmp_path)), "--storage", url, *args]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stdout=log, stderr=log)
    try:
        during(driver)
        driver.wait(timeout=DEADLINE_S)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        log.close()
    assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]


def test_killed_worker_resumes_from_its_rung_at_the_runs_uri_once_then_is_recorded_failed(tmp_path):
    """Runs at a URI (``file://``: Tune's pyarrow storage, the code path of ``s3://``). Trial 0's
    worker is killed after its rung: the retried trial downloads the rung checkpoint from the
    URI (the worker that saved it is gone, as on another node) and goes on from it. Trial 1's
    is killed twice: a recorded failure, and the study still ends with its number of trials."""
    url = f"sqlite:///{tmp_path / 'study.db'}"

    def kill_workers(driver):
        _wait(lambda: _rows(url).get(0, {}).get("rungs"), driver, "trial 0's first rung")
        first = next(iter(_trial_workers(driver.pid)))
        os.kill(first, signal.SIGKILL)
        _wait(lambda: _rows(url).get(0, {}).get("status") == "complete", driver, "trial 0 to complete after a retry")
        second = _kill_worker_of(1, url, driver, spared={first})
        _kill_worker_of(1, url, driver, spared={first, second})

    _drive(tmp_path, url, ["--trials", "3", "--runs-dir", (tmp_path / "shared").as_uri()], kill_workers)
    rows = _rows(url)
    assert rows[0]["status"] == "complete" and rows[0]["val_loss"] is not None
    assert rows[0]["metrics"]["details"]["resumed_from"] == "rung-0.pt"
    assert rows[1]["status"] == "fail" and "worker process died twice" in rows[1]["failure"]
    study = optuna.load_study(study_name="faults", storage=url)
    states = [t.state for t in study.trials]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert study.trials[1].user_attrs["failure"].startswith("the worker process died twice")
    assert optuna.trial.TrialState.RUNNING not in states
    assert len([t for t in study.trials if not t.user_attrs.get("not_counted")]) == 3  # the study went on
