"""The recall proxy separates layouts at its defaults (issue 14, item 1): every claim below runs
``RecallConfig()`` with no setting changed but the one the claim names (``d_state`` 4).

On one H200 (CUDA-graphed steps) the whole file took 2 minutes. On a 2-core CPU the four
layouts of the fixture would take about 35-45 minutes (estimated; ``bae-intra-1:5`` alone 6.3, each
plain Mamba-2 model both rates' 10,000 steps), over CI's budget, so CI runs the one claim a
CPU settles in half a minute (``*-*-``, on any device) and only a GPU runs the others
(docs/benchmarks.md, "The calibration at the defaults, run")."""

import pytest

from hybridnas.proxies.recall import RecallConfig, RecallReport, score_recall
from hybridnas.search_space.load import load_spec

pytestmark = pytest.mark.slow


def test_two_attention_layers_learn_mqar_on_this_machine():
    """The claim CI can afford: ``*-*-`` at the defaults, on whatever device runs the tests."""
    report = score_recall(load_spec("*-*-"), RecallConfig())
    assert report.tasks["mqar"] >= 0.9, report.runs


@pytest.fixture(scope="module")
def scores() -> dict[str, RecallReport]:
    defaults = RecallConfig()
    return {  # *-*- is the test above, which runs on the GPU too
        "M-M- at d_state 4": score_recall(load_spec("M-M-"), RecallConfig(d_state=4)),
        "bae-inter-1:5": score_recall(load_spec("bae-inter-1:5"), defaults),
        "bae-intra-1:5": score_recall(load_spec("bae-intra-1:5"), defaults),
        "mamba2-1b": score_recall(load_spec("mamba2-1b"), defaults),
    }


@pytest.mark.gpu
def test_a_four_wide_mamba_state_cannot_hold_four_pairs(scores):
    assert scores["M-M- at d_state 4"].tasks["mqar"] <= 0.5, scores["M-M- at d_state 4"].runs


@pytest.mark.gpu
@pytest.mark.parametrize("hybrid", ["bae-inter-1:5", "bae-intra-1:5"])
def test_bae_hybrids_learn_mqar(scores, hybrid):
    assert scores[hybrid].tasks["mqar"] >= 0.8, scores[hybrid].runs


@pytest.mark.gpu
@pytest.mark.parametrize("hybrid", ["bae-inter-1:5", "bae-intra-1:5"])
def test_pure_mamba_scores_below_both_hybrids(scores, hybrid):
    assert scores["mamba2-1b"].score < scores[hybrid].score, (scores["mamba2-1b"].runs, scores[hybrid].runs)

