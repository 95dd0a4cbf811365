"""A study driven without Ray or training: the bridge and scheduler fed made-up reports.

:func:`simulate` plays Ray Tune's part in :func:`hybridnas.studies.launch.launch` one trial
at a time: it asks the :class:`~hybridnas.studies.driver.OptunaBridge` for a trial, reports
each rung to the :class:`~hybridnas.studies.driver.ParetoScheduler` and the bridge, and ends
the trial stopped or with a final report. The reports come from ``outcome`` (by default a
deterministic function of the candidate), so everything the driver does — Optuna's ask/tell,
reuse of identical candidates, rung decisions, the results table — runs for real and fast.
Tests use it to check the driver and the objective registry end to end; the driver benchmark
(``benchmarks/driver.py``) uses it to time the driver's own work per trial.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import optuna
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from hybridnas.studies.config import StudyConfig
from hybridnas.studies.driver import OptunaBridge, ParetoScheduler, Tally
from hybridnas.studies.launch import begin_study
from hybridnas.studies.objectives import REGISTRY
from hybridnas.studies.protocol import TrialReport, TrialRequest, report_to_tune, request_from_tune
from hybridnas.studies.space import SearchSpace, make_sampler
from hybridnas.studies.storage import ResultsStore

__all__ = ["SimulatedStudy", "made_up_outcome", "simulate"]

# (request, rung index or None for the end) -> the worker's report
Outcome = Callable[[TrialRequest, int | None], TrialReport]


def made_up_outcome(request: TrialRequest, rung: int | None) -> TrialReport:
    """A deterministic report for ``request``: a loss between 2 and 3 from a hash of the
    candidate, lower at later rungs, and a value in (0, 1) for every measured objective."""
    digest = hashlib.sha256(request.spec.key.encode()).digest()
    loss = 2.0 + digest[0] / 255
    tokens = int(request.budget_flops // 1e6)
    if rung is not None:
        fraction = request.rungs[rung]
        return TrialReport(rung=rung, val_loss=loss + 1 - fraction, tokens=int(tokens * fraction),
                           flops=request.budget_flops * fraction, hardware="simulated")
    metrics: dict[str, float | None] = {}
    for i, context in enumerate(request.decode_contexts):
        metrics[f"decode_tokens_per_s@{context}"] = 1e3 + digest[1 + i]
    for i, context in enumerate(request.prefill_contexts):
        metrics[f"prefill_tokens_per_s@{context}"] = 1e4 + digest[3 + i]
    if request.recall is not None:
        tasks = {task: digest[5 + i] / 255 for i, task in enumerate(request.recall.tasks)}
        metrics.update({**tasks, "recall": sum(tasks.values()) / len(tasks)})
    for i, name in enumerate(request.long_context):
        metrics[name] = digest[20 + i] / 255 if REGISTRY[name].direction == "maximize" else loss + 0.1 * (i + 1)
    return TrialReport(rung=None, status="complete", val_loss=loss, val_loss_seeds=(loss,), tokens=tokens,
                       flops_spent=request.budget_flops, wall_s=0.0, hardware="simulated", metrics=metrics)


@dataclass
class SimulatedStudy:
    """What :func:`simulate` ran: the driver's tally, Optuna's study, and for each trained
    trial the seconds it took the driver (its ask, rung decisions and tell, table writes, and
    the reused or infeasible trials settled while asking for it) and how many Optuna trials
    those were."""

    tally: Tally
    study: optuna.Study
    seconds: list[float]
    trials: list[int]


def simulate(config: StudyConfig, *, runs_dir: Path, outcome: Outcome = made_up_outcome,
             trials: int | None = None) -> SimulatedStudy:
    """Drive the study ``config`` (its storage, sampler and rungs) to ``trials`` (default:
    ``config.trials``) trials, one at a time, with ``outcome``'s reports instead of training."""
    space = SearchSpace(config)
    store = ResultsStore(config.storage)
    store.create()
    study = optuna.create_study(study_name=config.name, storage=config.storage, sampler=make_sampler(config),
                                load_if_exists=True, directions=list(config.directions))
    if not study.get_trials(deepcopy=False):
        begin_study(study, config, space, store)
    tally = Tally()
    scheduler = ParetoScheduler.for_study(config)
    bridge = OptunaBridge(study=study, space=space,
                          config=config.model_copy(update={"trials": trials or config.trials}),
                          store=store, scheduler=scheduler, trial_root=runs_dir, tally=tally)
    seconds, settled = [], []
    try:
        for i in range(10**9):
            started = time.perf_counter()
            before = tally.reused + tally.infeasible
            trial_id = f"simulated-{i:06d}"
            suggested = bridge.suggest(trial_id)
            if suggested is Searcher.FINISHED:
                break
            assert suggested is not None, "OptunaBridge.suggest returns a request or FINISHED, never None"
            request = request_from_tune(suggested)
            _run(bridge, scheduler, trial_id, request, outcome)
            seconds.append(time.perf_counter() - started)
            settled.append(1 + tally.reused + tally.infeasible - before)
    finally:
        store.dispose()
    return SimulatedStudy(tally, study, seconds, settled)


def _run(bridge: OptunaBridge, scheduler: ParetoScheduler, trial_id: str, request: TrialRequest,
         outcome: Outcome) -> None:
    """One trial as Tune runs it: each rung to the scheduler, then to the bridge unless the
    scheduler stopped it (Tune then hands that report to on_trial_complete only)."""
    trial = SimpleNamespace(trial_id=trial_id)
    for rung in range(len(request.rungs)):
        result = report_to_tune(outcome(request, rung))
        if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
            bridge.on_trial_complete(trial_id, result)
            return
        bridge.on_trial_result(trial_id, result)
    bridge.on_trial_complete(trial_id, report_to_tune(outcome(request, None)))

