"""Data-parallel training (trainer/distributed.py) with real processes: gloo on CPU, two ranks.

Every step holds 5 sequences (shards of 2 and 3) and the last one a single sequence (rank 0
trains none), so the uneven split is what every comparison exercises.

Tolerance: the same weights and batches in fp32; two processes sum each step's gradient and
each validation loss in two parts, a different order of fp32 additions, so the curves agree
to rounding, not bitwise. Measured: at most 3.5e-7 relative over the 26 steps; asserted: 1e-5.
A run resumed with the same process count repeats the same sums, so it is exact.
"""

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hybridnas.trainer import ConfigError, make_plan, train
from hybridnas.trainer.distributed import start_ranks
from tiny_training import TINY, config

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and dist.is_available()
                                     and dist.is_gloo_available()), reason="needs Linux and torch.distributed's gloo")

TOLERANCE = 1e-5  # relative; see the module docstring
SEQ_LEN, STEP_SEQS, TOTAL_SEQS = 64, 5, 126  # 25 full steps and a last one of 1 sequence
RUNGS = (0.3, 0.6)


def settings(token_cache: str, **overrides):
    return config(token_cache, batch_tokens=STEP_SEQS * SEQ_LEN, eval_points=4, **overrides)


def budget(token_cache: str) -> float:
    return TOTAL_SEQS * SEQ_LEN * make_plan(TINY, 1e10, settings(token_cache)).flops_per_token


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """Two cores: one thread per rank (children take the parent's count), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(token_cache):
    """The uninterrupted run on one process and on two, at the same global batch."""
    plan = make_plan(TINY, budget(token_cache), settings(token_cache))
    assert (plan.batch_seqs, plan.total_seqs, plan.seqs_at(plan.steps - 1)) == (STEP_SEQS, TOTAL_SEQS, 1)
    return {n: train(TINY, budget(token_cache), settings(token_cache), processes=n) for n in (1, 2)}


def children() -> list[int]:
    """Pids of this process's live children (from /proc: no psutil here)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:  # exited while listed
            continue
        if int(parent) == os.getpid() and state != "Z":
            found.append(int(stat.parent.name))
    return found


def assert_close(curve_a: list[dict], curve_b: list[dict], key: str) -> None:
    assert [p["tokens"] for p in curve_a] == [p["tokens"] for p in curve_b]
    for a, b in zip(curve_a, curve_b, strict=True):
        assert b[key] == pytest.approx(a[key], rel=TOLERANCE), (key, a, b)


def test_two_processes_match_one_at_the_same_global_batch(runs):
    one, two = runs[1], runs[2]
    assert one.status == two.status == "complete", two.failure
    assert (one.processes, two.processes) == (1, 2)
    assert two.tokens == one.tokens and two.steps == one.steps and two.flops == one.flops
    assert len(two.val_curve) == 5 and two.val_curve[-1]["val_loss"] < two.val_curve[0]["val_loss"] - 1.0
    assert_close(one.val_curve, two.val_curve, "val_loss")
    assert_close(one.train_curve, two.train_curve, "loss")
    assert children() == []


def test_a_rung_checkpoint_of_two_processes_resumes_exactly(runs, token_cache, tmp_path):
    """Stopped at the first rung, resumed on two processes: the uninterrupted run, bitwise;
    the checkpoint does not know the process count, so one process resumes it too."""
    cfg = settings(token_cache, rungs=RUNGS, out_dir=str(tmp_path))
    seen = []
    stopped = train(TINY, budget(token_cache), cfg, rung_callback=lambda r: seen.append(r) or "stop", processes=2)
    assert stopped.status == "stopped" and len(seen) == 1 and stopped.checkpoint == seen[0].checkpoint
    assert Path(stopped.checkpoint).exists() and stopped.processes == 2

    resumed = train(TINY, budget(token_cache), cfg, resume_from=stopped.checkpoint, processes=2)
    assert resumed.status == "complete" and resumed.steps == runs[2].steps
    assert resumed.val_curve == runs[2].val_curve and resumed.train_curve == runs[2].train_curve
    assert resumed.rungs[0]["val_loss"] == seen[0].val_loss and len(resumed.rungs) == 2

    on_one = train(TINY, budget(token_cache), settings(token_cache, rungs=RUNGS, out_dir=str(tmp_path / "one")),
                   resume_from=stopped.checkpoint)
    assert on_one.status == "complete" and on_one.processes == 1
    assert_close(runs[1].val_curve, on_one.val_curve, "val_loss")


def test_a_diverging_run_is_a_result_on_every_rank(token_cache):
    result = train(TINY, budget(token_cache), settings(token_cache, lr=30.0, grad_clip=None), processes=2)
    assert result.status == "diverged" and result.failure["step"] >= 1
    assert result.steps < make_plan(TINY, budget(token_cache), settings(token_cache)).steps
    assert children() == []  # rank 1 decided the same and left


def test_a_child_that_dies_is_an_error_result_not_a_hang(token_cache):
    """SIGKILL rank 1 at the first rung: rank 0's next collective fails at once (its peer's
    socket closed), and the run reports which rank died. The 30-minute collective timeout
    plays no part, so the run ends in seconds (asserted loosely: a hang guard, not a timing)."""
    killed = []

    def kill_rank_1(report):
        killed.extend(children())
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        return "continue"

    result = train(TINY, budget(token_cache), settings(token_cache, rungs=RUNGS), rung_callback=kill_rank_1,
                   processes=2)
    assert len(killed) == 1
    assert result.status == "error", result
    assert result.failure["message"] == f"rank 1 (pid {killed[0]}) died: killed by SIGKILL"
    assert result.failure["step"] == result.steps > 0 and len(result.rungs) == 1
    assert result.wall_s < 120
    assert children() == []


def test_an_exception_in_a_child_is_rank_0s_result():
    """A child that raises (here: a job its TrainConfig refuses) writes its failure and exits;
    rank 0's next collective fails and the group reports the child's failure, not its own."""
    group = start_ranks(2, torch.device("cpu"), {"spec": TINY.to_dict(), "budget": 1e10,
                                                 "config": {"no_such_setting": 1}, "resume_from": None})
    with pytest.raises(RuntimeError, match="by peer"):
        group.connect()
        group.sum(1.0)
    group.stop("failed")
    status, failure = group.failure_elsewhere()
    assert status == "error" and failure["message"].startswith("rank 1: ConfigError: no_such_setting")
    assert children() == []


def test_tune_stopping_rank_0_at_a_report_ends_the_other_ranks(token_cache):
    """Tune ends a stopped trial's function by raising SystemExit inside ``tune.report``."""

    def like_tune(report):
        sys.exit(0)

    with pytest.raises(SystemExit):
        train(TINY, budget(token_cache), settings(token_cache, rungs=RUNGS), rung_callback=like_tune, processes=2)
    assert children() == []


@pytest.mark.parametrize("processes", [0, -1, 1.5, True])
def test_a_bad_process_count_is_one_clear_error(token_cache, processes):
    with pytest.raises(ConfigError, match=r"^processes=.*: must be a whole number of at least 1$"):
        train(TINY, budget(token_cache), settings(token_cache), processes=processes)


@pytest.mark.gpu
def test_more_processes_than_visible_gpus_is_refused(token_cache):
    processes = torch.cuda.device_count() + 1
    with pytest.raises(ConfigError, match=rf"^processes={processes}: only \d+ CUDA GPU\(s\) are visible"):
        train(TINY, budget(token_cache), settings(token_cache, device="cuda"), processes=processes)
