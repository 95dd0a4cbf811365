"""Ctrl-C of a running driver, as a person does it, in a fresh interpreter (run by
tests/test_a_driver_interrupted.py): a driver is started, a second launch of the same study is refused
in this process (one line naming the first driver's pid), the first driver gets SIGINT and
must exit 130 with the resume command, leaving no trial running and its lease released.

    python tests/ctrl_c_scenario.py FOLDER     # exit 0, or an AssertionError and exit 1

A person's terminal delivers Ctrl-C with SIGINT at its default, so the scenario sets that
before it starts the driver: a signal disposition set to "ignore", or a blocked signal, is
inherited through fork and exec, and a Python started with SIGINT ignored never turns it into
KeyboardInterrupt. What this process inherited is printed as its first line (``inherited:``),
and what the driver has for SIGINT is in the failure message if it ever hangs, with its
threads' stacks (``kill -USR2``, cli.launch's faulthandler) from ``FOLDER/driver.log``.
"""

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from hybridnas.cli import main
from hybridnas.studies.lease import holder
from hybridnas.studies.storage import ResultsStore

COMMAND = ["launch", "test-tiny", "--trials", "40", "--set", "budget.flops=2e10"]


def _statuses(url: str) -> list[str]:
    store = ResultsStore(url, readonly=True) if Path(url.removeprefix("sqlite:///")).exists() else None
    try:
        return [r["status"] for r in store.rows("test-tiny")] if store and store.has_table() else []
    except Exception:  # the driver may be creating the tables right now
        return []
    finally:
        if store:
            store.dispose()


def sigint_state(pid: int | str = "self") -> str:
    """How the process ``pid`` treats SIGINT, from /proc: e.g. ``ignored=False blocked=False caught=True``."""
    bit = 1 << (signal.SIGINT - 1)
    masks = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                 if line.startswith(("SigIgn", "SigBlk", "SigCgt")))
    return " ".join(f"{name}={bool(int(masks[key], 16) & bit)}"
                    for name, key in (("ignored", "SigIgn"), ("blocked", "SigBlk"), ("caught", "SigCgt")))


def scenario(folder: Path) -> None:
    print(f"inherited: {sigint_state()}", flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's shell leaves it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    url = f"sqlite:///{folder / 'study.db'}"
    log = folder / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "hybridnas", *COMMAND, "--storage", url], cwd=folder,
                                  start_new_session=True, stdout=out, stderr=out)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and "running" not in _statuses(url):
            time.sleep(0.2)
        assert driver.poll() is None, log.read_text()[-3000:]

        refused = io.StringIO()
        with contextlib.redirect_stderr(refused):
            code = main([*COMMAND, "--storage", url])
        err = refused.getvalue()
        assert code == 2 and f"pid {driver.pid} on " in err and err.count("\n") == 1, err

        driver_sigint = sigint_state(driver.pid)
        driver.send_signal(signal.SIGINT)  # Ctrl-C of the first driver
        try:
            driver.wait(timeout=120)
        except subprocess.TimeoutExpired:  # where it hangs: every thread's stack (cli.launch's faulthandler)
            os.kill(driver.pid, signal.SIGUSR2)
            time.sleep(3)
            raise AssertionError(f"no exit 120 s after Ctrl-C (driver's SIGINT before it: {driver_sigint}):\n"
                                 f"{log.read_text()[-6000:]}") from None
        err = log.read_text()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, err[-3000:]
    assert "Resume with the same command: hybridnas launch test-tiny" in err and "Tuner.restore" not in err
    assert "running" not in _statuses(url)
    study = optuna.load_study(study_name="test-tiny", storage=url)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    store = ResultsStore(url, readonly=True)
    assert holder(store, "test-tiny") is None  # released: the same command resumes at once
    store.dispose()


if __name__ == "__main__":
    scenario(Path(sys.argv[1]))
