"""The recall proxy separates layouts at its defaults (issue 14, item 1): every claim below runs
``RecallConfig()`` with no setting changed but the one the claim names (``d_state`` 4, and
the seed where a claim is stated over seeds).

A 4-wide Mamba-2 state leaving MQAR's plateau is a matter of when, within the budget, as much as
of capacity: at the defaults (8 pairs, lr 2e-3 then 1e-3) it stayed at 0.13-0.27 in seeds 0-3
on an H200 and climbed to 0.74 in seed 4 (docs/benchmarks.md, "Two rates, five seeds"). So the
claim is asserted at the defaults (seed 0) and, as it holds beyond one seed, in most of seeds 0-2.

On one H200 the fixture's six suites run at once, sharing the GPU, in about 3 minutes. On a
2-core CPU they run in turn, about 35 minutes: over CI's budget, so CI asserts the one claim a
CPU settles in a minute (``*-*-``, on any device), and ``pytest --calibration`` runs the
others on a CPU too."""

import dataclasses

import pytest
import torch

from hybridnas.cluster import ensure_ray
from hybridnas.proxies.recall import RecallConfig, RecallReport, gpu_share, score_recall
from hybridnas.search_space.load import load_spec

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2)


def test_two_attention_layers_learn_mqar_on_this_machine():
    """The claim CI can afford: ``*-*-`` at the defaults, on whatever device runs the tests."""
    report = score_recall(load_spec("*-*-"), RecallConfig())
    assert report.tasks["mqar"] >= 0.9, report.runs


def score_at_once(jobs: dict[str, tuple[str, RecallConfig]]) -> dict[str, RecallReport]:
    """``score_recall`` of every (layout, config) in ``jobs``. On a GPU all at once, one Ray
    task each with an equal share of it (the shrunk models' steps are launch-bound, so they
    time-slice it at little cost each); on a CPU one after another, each with every core."""
    if not torch.cuda.is_available():
        return {name: score_recall(load_spec(layout), config) for name, (layout, config) in jobs.items()}
    import ray

    if not ray.is_initialized():
        ensure_ray()
    share = gpu_share(ray.cluster_resources().get("GPU", 0), len(jobs))
    score = ray.remote(num_cpus=1, num_gpus=share)(score_recall)
    pending = {name: score.remote(load_spec(layout), config) for name, (layout, config) in jobs.items()}
    return {name: ray.get(ref) for name, ref in pending.items()}


@pytest.fixture(scope="module")
def scores() -> dict[str, RecallReport]:
    defaults = RecallConfig()
    jobs = {f"M-M- at d_state 4, seed {seed}": ("M-M-", dataclasses.replace(defaults, d_state=4, seed=seed))
            for seed in SEEDS}
    # *-*- is the test above, which runs on the GPU too
    jobs.update({name: (name, defaults) for name in ("bae-inter-1:5", "bae-intra-1:5", "mamba2-1b")})
    return score_at_once(jobs)


# The long claims need a GPU's speed, or --calibration on a CPU (tests/conftest.py).
@pytest.mark.gpu
@pytest.mark.calibration
def test_a_four_wide_mamba_state_cannot_hold_eight_pairs_at_the_defaults(scores):
    report = scores["M-M- at d_state 4, seed 0"]  # seed 0 is RecallConfig's
    assert report.tasks["mqar"] <= 0.5, report.runs


@pytest.mark.gpu
@pytest.mark.calibration
def test_a_four_wide_mamba_state_cannot_hold_eight_pairs_in_most_seeds(scores):
    accuracies = [scores[f"M-M- at d_state 4, seed {seed}"].tasks["mqar"] for seed in SEEDS]
    assert sorted(accuracies)[1] <= 0.5, accuracies


@pytest.mark.gpu
@pytest.mark.calibration
@pytest.mark.parametrize("hybrid", ["bae-inter-1:5", "bae-intra-1:5"])
def test_bae_hybrids_learn_mqar(scores, hybrid):
    assert scores[hybrid].tasks["mqar"] >= 0.8, scores[hybrid].runs


@pytest.mark.gpu
@pytest.mark.calibration
@pytest.mark.parametrize("hybrid", ["bae-inter-1:5", "bae-intra-1:5"])
def test_pure_mamba_scores_below_both_hybrids(scores, hybrid):
    assert scores["mamba2-1b"].score < scores[hybrid].score, (scores["mamba2-1b"].runs, scores[hybrid].runs)
