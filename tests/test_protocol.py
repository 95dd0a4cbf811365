"""The driver-worker protocol, without Ray: a request and a report survive the trip through
what Tune carries (JSON for the config, flat scalars for reports) unchanged."""

import json

import pytest

from hybridnas.search_space import ArchSpec
from hybridnas.studies.config import load_study_config
from hybridnas.studies.protocol import (
    TrialReport,
    TrialRequest,
    report_from_tune,
    report_to_tune,
    request_from_tune,
    request_to_tune,
)

OBJECTIVES = [{"name": "val_loss"}, {"name": "decode_tokens_per_s", "context": 4096},
              {"name": "prefill_tokens_per_s", "context": 2048}, {"name": "recall"}, {"name": "fuzzy_recall"},
              {"name": "passkey"}, {"name": "val_loss_4x"}]


@pytest.fixture
def config():
    return load_study_config("test-tiny", objectives=OBJECTIVES, seeds_per_candidate=2)


def test_request_says_what_each_objective_needs(config, tmp_path):
    spec = ArchSpec.from_pattern("M-*-", d_model=32, attn={"n_heads": 2})
    request = TrialRequest.for_study(config, 7, spec, tmp_path)
    assert (request.number, request.spec, request.budget_flops) == (7, spec, config.budget.flops)
    assert request.seeds == (0, 1) and request.rungs == config.budget.rungs
    assert request.decode_contexts == (4096,) and request.prefill_contexts == (2048,)
    # "recall" averages the [recall] tasks; a task named as its own objective is scored too
    assert request.recall is not None
    assert set(request.recall.tasks) == {*config.recall.tasks, "fuzzy_recall"}
    assert request.long_context == ("passkey", "val_loss_4x")
    assert request.trial_dir == str((tmp_path / "trial-00007").resolve())


def test_request_round_trips_through_json(config, tmp_path):
    spec = ArchSpec.from_pattern(
        "M-H-", d_model=64, attn={"n_heads": 4}, ssm={"head_dim": 16}, hybrid={"merge": "mean"}
    )
    request = TrialRequest.for_study(config, 3, spec, tmp_path)
    carried = json.loads(json.dumps(request_to_tune(request)))  # Tune stores the config as JSON
    assert request_from_tune(carried) == request


def test_the_shallow_recall_proxy_settings_reach_the_worker(tmp_path):
    config = load_study_config("test-tiny", objectives=OBJECTIVES,
                               recall={"ffn": True, "max_run": 2, "weight_decay": 0.0})
    request = TrialRequest.for_study(config, 0, ArchSpec.from_pattern("M-M-M-*-", d_model=32), tmp_path)
    assert (request.recall.ffn, request.recall.max_run, request.recall.weight_decay) == (True, 2, 0.0)
    assert request_from_tune(json.loads(json.dumps(request_to_tune(request)))).recall == request.recall


def test_a_study_without_proxies_asks_for_none(tmp_path):
    request = TrialRequest.for_study(load_study_config("test-tiny"), 0, ArchSpec.from_pattern("M-", d_model=32),
                                     tmp_path)
    assert request.recall is None and request.long_context == ()
    assert request.decode_contexts == request.prefill_contexts == ()


RUNG = TrialReport(rung=1, val_loss=3.25, tokens=1024, flops=1e9, train_loss=3.5, hardware="cpu")
FINAL = TrialReport(rung=None, status="complete", val_loss=3.0, val_loss_seeds=(2.9, 3.1), tokens=2048,
                    flops_spent=2e9, tokens_per_s=1e4, mfu=None, device="cpu", wall_s=1.5, hardware="cpu",
                    loss_curve={"train": [[0, 5.0]], "val": [[0, 5.1]]}, config={"lr": 0.003},
                    metrics={"decode_tokens_per_s@4096": 100.0, "recall": 0.5, "passkey": None},
                    details={"recall": {"tasks": {"mqar": 0.5}}})


@pytest.mark.parametrize("report", [RUNG, FINAL], ids=["rung", "final"])
def test_report_round_trips_as_scalars(report):
    carried = report_to_tune(report)
    assert all(isinstance(v, int | float | str | bool) for v in carried.values()), carried
    # Tune adds keys of its own to every result
    assert report_from_tune({**carried, "training_iteration": 2, "trial_id": "abc", "time_total_s": 1.0}) == report
    assert report.final == (report.rung is None)


def test_results_no_worker_reported_are_none():
    assert report_from_tune(None) is None
    assert report_from_tune({"training_iteration": 1}) is None


def test_an_unregistered_metric_is_refused():
    carried = report_to_tune(TrialReport(rung=None, status="complete", metrics={"val_loss@2x": 3.0}))
    with pytest.raises(ValueError, match="'val_loss@2x' is not a registered objective"):
        report_from_tune(carried)
