"""The study driver: Optuna decides, Ray Tune executes, the driver records.

- ``OptunaBridge`` (a Tune ``Searcher``) asks Optuna for each new trial (define-by-run through
  ``SearchSpace.suggest``), skips infeasible candidates (their constraints are recorded, they
  are never trained), skips copies of a candidate already evaluated (below), and tells
  Optuna each outcome: complete with its objective values, pruned when the scheduler stopped
  it, fail with a reason. Ray's stock ``OptunaSearch`` cannot be used: it hard-codes a no-op
  pruner and records scheduler-stopped trials as complete.
- **Copies.** A suggestion whose spec (``ArchSpec.key``) was evaluated at this study's budget
  is not trained and not counted toward ``trials``: the study asks again. Optuna keeps it as
  a PRUNED trial (``reused_from`` and ``not_counted`` attributes) and its row as status
  ``copy`` with the original's result. Told COMPLETE (as before), a copy was a second point
  at the same place in ``best_trials`` and every Optuna plot, and TPE counted the point twice
  as good, so it proposed it again (7 of the quickstart's 24 trials). Told FAIL, samplers
  ignore it and TPE, its history unchanged, proposed the same candidate 1,000 times in a row
  (measured with :mod:`~hybridnas.studies.simulate`). A suggestion identical to a candidate
  still training (``concurrent > 1``) waits for it: not trained, not counted, RUNNING in Optuna
  until its twin ends, then a copy of its result (or, if the twin failed, a failure not
  counted). PRUNED is how TPE sees a trial its
  constant liar holds running: in the "worse" group, so the sampler learns the point is
  taken and moves on, while the original's values stay in its history and
  ``best_trials`` (COMPLETE only) lists each candidate once. When every distinct candidate
  of the space has been evaluated, the study stops (``Tally.stop_reason``).
- ``ParetoScheduler`` (a Tune ``TrialScheduler``) applies :class:`ParetoHalving` at each rung.
- Only this process writes the hybridnas table (``ResultsStore``); workers report through Tune.
  A trial's final row is written before Optuna is told, so a kill between the two leaves a row
  that says how the trial ended, and the next launch tells Optuna the same (launch._reconcile).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from hybridnas.search_space import ArchSpec
from hybridnas.studies.halving import ParetoHalving
from hybridnas.studies.objectives import (
    DEFAULT_CONTEXT,
    REGISTRY,
    ObjectiveRef,
    metric_columns,
    objective_values,
    static_values,
)
from hybridnas.studies.protocol import TrialReport, TrialRequest, report_from_tune, request_to_tune
from hybridnas.studies.storage import ResultsStore, spec_columns

__all__ = ["WAITING", "OptunaBridge", "ParetoScheduler", "Tally", "cost_refs"]

# a reused twin's columns: its result, whatever objectives it measured
REUSED = ("val_loss", "metrics", "rungs", "loss_curve", "lr", *(m.column for m in REGISTRY.values()))
SETTLED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
WAITING = "waiting for trial"  # the failure text of a copy row whose twin is still training
SAME_FAILURES_STOP = 3  # alike failures before any success that stop a study
MAX_DRAWS = 1000  # suggestions asked per Tune trial before the sampler is deemed stuck
EXHAUSTION_CHECK = 25  # after this many draws without a new candidate, check whether the space is exhausted
ENUMERATION_LIMIT = 20_000  # larger spaces are never enumerated (a TPE study rarely exhausts them)


@dataclass
class Tally:
    """Counts for the progress bar and the closing report."""

    done: int = 0
    pruned: int = 0
    failed: int = 0
    reused: int = 0
    infeasible: int = 0
    running: set = field(default_factory=set)
    flops_spent: float = 0.0
    flops_full: float = 0.0  # what the same trials would have spent at full budget
    stop_reason: str | None = None  # why the study stopped before its number of trials, in one line
    failed_out: bool = False  # it stopped because its trials fail alike (launch then exits non-zero)
    first_failure: str | None = None  # the first failed trial's reason, for the closing line

    def none_completed(self) -> str | None:
        """One line when this run settled trials and completed none of them (launch then
        exits non-zero), else None. A relaunch with nothing left to run completed none too,
        but settled none: that is not a failure."""
        settled = self.done + self.pruned + self.failed + self.reused + self.infeasible
        if settled == 0 or self.done + self.reused > 0:
            return None
        counts = ", ".join(f"{n} {what}" for n, what in ((self.failed, "failed"), (self.pruned, "pruned"),
                                                           (self.infeasible, "infeasible")) if n)
        first = f"; the first failure: {self.first_failure}" if self.first_failure else ""
        return f"no trial of this run completed ({counts}){first}"


def cost_refs(refs: tuple[ObjectiveRef, ...]) -> tuple[ObjectiveRef, ...]:
    """The static (cost-model) objectives among ``refs``: what a rung ranks beside the loss."""
    return tuple(r for r in refs if r.metric is not None and r.metric.source == "static")


class ParetoScheduler(FIFOScheduler):
    """Stops a trial at a rung unless its Pareto rank there is within the top 1/eta.
    Baselines and enqueued candidates are ranked like the others (they shape the rung) but
    never stopped: they are the reference points a frontier is read against."""

    def __init__(self, rule: ParetoHalving, points: dict[str, tuple[float, ...]]) -> None:
        super().__init__()
        self.rule = rule
        self.cost_points = points  # tune trial id -> the static objective values
        self.stopped: set[str] = set()
        self.protected: set[str] = set()  # baselines and enqueued candidates: ranked, never stopped

    @classmethod
    def for_study(cls, config: Any) -> ParetoScheduler:
        """Rungs ranked on (loss at the rung, the study's cost objectives)."""
        signs = (1, *(r.sign for r in cost_refs(config.refs)))
        return cls(ParetoHalving(eta=config.budget.eta, signs=signs), {})

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        report = report_from_tune(result)
        if report is None or report.final:
            return TrialScheduler.CONTINUE
        assert report.rung is not None, "a report that is not final is a rung's"
        # a missing loss ranks as NaN (invalid: the last front), as the rule's float array would read None
        loss = math.nan if report.val_loss is None else report.val_loss
        point = (loss, *self.cost_points.get(trial.trial_id, ()))
        decision = self.rule.decide(trial.trial_id, report.rung, point)  # ranks it for the others too
        if decision == "stop" and trial.trial_id not in self.protected:
            self.stopped.add(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


@dataclass
class _Live:
    """A trial being trained: its Optuna identity, candidate, the row columns fixed when it
    started and the rung history reported so far."""

    number: int
    trial_id: int  # Optuna's storage id
    spec: ArchSpec
    fixed: dict[str, Any]
    rungs: list[dict] = field(default_factory=list)
    lr: float | None = None  # the peak learning rate, once a rung has reported it


@dataclass(frozen=True)
class _Settled:
    """An evaluated candidate, for reuse by an identical one."""

    number: int
    pruned: bool
    values: tuple[float, ...] | None


class OptunaBridge(Searcher):
    """Tune's view of the Optuna study: suggest asks, on_trial_complete tells.

    Per event it reads nothing back from the database: what it needs of earlier trials
    (the evaluated candidates by spec key, the number of trials counted) is read once when
    it starts and kept up to date here, so a study's thousandth trial costs what its first did."""

    def __init__(self, *, study: optuna.Study, space, config, store: ResultsStore, scheduler: ParetoScheduler,
                 trial_root: Path | None, tally: Tally, on_change=lambda: None) -> None:
        super().__init__()
        self.study, self.space, self.config, self.store = study, space, config, store
        self.scheduler, self.trial_root, self.tally, self.on_change = scheduler, trial_root, tally, on_change
        self.refs = config.refs
        self.live: dict[str, _Live] = {}  # tune id -> the trial
        self.settled: dict[str, _Settled] = {}  # spec key -> the evaluated trial it was first
        self._failure_streak: list[str] = []  # the reasons of the failures since the last success
        self.waiting: dict[int, list[_Live]] = {}  # a training trial's number -> the identical trials waiting for it
        self.counted = 0  # trials that count toward config.trials
        self.complete_values: list[tuple[float, ...]] = []  # the values of complete trials, for the progress line
        self._distinct: set[str] | None = None  # the space's distinct feasible spec keys, once enumerated
        self._enumerated = False
        waiting = optuna.trial.TrialState.WAITING
        for t in study.get_trials(deepcopy=False):
            if t.state != waiting and not t.user_attrs.get("not_counted"):
                self.counted += 1
            if t.state in SETTLED:
                self._settle(t.user_attrs.get("spec_key"), t.number, t.state, t.values,
                             reused="reused_from" in t.user_attrs)

    # Tune pickles its search algorithm into the experiment state; the live connections
    # (study, database, search space, progress line) are the driver's and stay out of it
    _RUNTIME = ("study", "space", "store", "on_change")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.update(dict.fromkeys(self._RUNTIME))

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment checkpoint: which Optuna trial each Tune trial is (diagnostics;
        a restarted driver reconciles from Optuna's storage, the source of truth)."""
        Path(checkpoint_path).write_text(json.dumps({tid: live.number for tid, live in self.live.items()}))

    def restore(self, checkpoint_path: str) -> None:
        pass  # nothing to restore: see save

    def _settle(self, key: str | None, number: int, state, values, *, reused: bool = False) -> None:
        if state == optuna.trial.TrialState.COMPLETE and values is not None:
            self.complete_values.append(tuple(values))
        if key is not None and not reused and key not in self.settled:
            pruned = state == optuna.trial.TrialState.PRUNED
            self.settled[key] = _Settled(number, pruned, None if pruned else tuple(values))

    # -- asking --

    def suggest(self, trial_id: str) -> dict | None:
        # Ray's protocol (Searcher.suggest's docstring: "dict | FINISHED | None"), which its
        # annotation, Optional[Dict], leaves out
        finished: dict = Searcher.FINISHED  # type: ignore[assignment]
        if self.tally.stop_reason is not None:
            return finished
        for draw in range(1, MAX_DRAWS + 1):  # infeasible candidates and copies do not use up a trial
            if self.counted >= self.config.trials:
                return finished
            trial = self.study.ask()
            self.counted += 1  # unless it turns out infeasible or a copy: never trained, not counted
            outcome = self._candidate(trial)
            if outcome is None:
                if draw % EXHAUSTION_CHECK == 0 and self._exhausted():
                    return finished
                continue
            spec, params = outcome
            fixed = self._fixed_columns(spec, params, trial.user_attrs.get("baseline"))
            self.live[trial_id] = _Live(trial.number, trial._trial_id, spec, fixed)
            self.scheduler.cost_points[trial_id] = self._cost_point(spec)
            if "baseline" in trial.user_attrs or "enqueued" in trial.user_attrs:
                self.scheduler.protected.add(trial_id)
            self._write(self.live[trial_id], status="running")
            self.tally.running.add(trial_id)
            self.on_change()
            request = TrialRequest.for_study(self.config, trial.number, spec, self.trial_root)
            return request_to_tune(request)
        if not self._exhausted():
            left = "" if self._distinct is None else f" ({len(self._distinct - self._taken())} remain unevaluated)"
            self.tally.stop_reason = (f"the sampler proposed no new feasible candidate in {MAX_DRAWS} draws{left}; "
                                      "stopping (check the space's constraints, or try another sampler)")
        return finished

    def _taken(self) -> set[str]:
        """The spec keys evaluated or being trained."""
        return set(self.settled) | {live.fixed["spec_key"] for live in self.live.values()}

    def _exhausted(self) -> bool:
        """Whether every distinct feasible candidate of the space is evaluated or training;
        if so, records the stop reason. Enumerating the space (once, then kept) is only worth
        it after a run of copies, and only for spaces of at most ENUMERATION_LIMIT candidates."""
        if self._distinct is None and not self._enumerated:
            self._enumerated = True
            self._distinct = self.space.distinct_keys(limit=ENUMERATION_LIMIT)
        if self._distinct is None or not self._distinct <= self._taken():
            return False
        self.tally.stop_reason = (f"the search space is exhausted: all {len(self._distinct)} distinct candidates "
                                  f"are evaluated ({self.counted} of {self.config.trials} trials used)")
        return True

    def _candidate(self, trial: optuna.Trial) -> tuple[ArchSpec, dict] | None:
        """The trial's spec to train, or None when it was settled without training."""
        from hybridnas.studies.space import Infeasible

        baseline = trial.user_attrs.get("baseline")
        try:
            if baseline and not trial.params and self.space.baseline_params(baseline) is None:
                spec = self.space.baseline_specs()[baseline]  # outside the space: trained as it is
            else:
                spec = self.space.suggest(trial)
        except Infeasible as exc:
            # PRUNED, as the constrained samplers expect: they learn from its constraint values
            trial.set_user_attr("infeasible", exc.reason)
            trial.set_user_attr("stopped", "infeasible")
            trial.set_user_attr("not_counted", True)
            self.counted -= 1
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.tally.infeasible += 1
            return None
        params = dict(trial.params)
        key = spec.key
        twin = self.settled.get(key)
        if twin is not None:  # the same candidate, the same budget: a copy (see the module docstring)
            trial.set_user_attr("reused_from", twin.number)
            trial.set_user_attr("stopped", "reused")
            trial.set_user_attr("not_counted", True)
            trial.set_user_attr("failure", f"a copy of trial {twin.number} (same spec, same budget): not trained")
            self.counted -= 1
            row = self.store.row(self.study.study_name, twin.number) or {}
            columns = {k: row[k] for k in REUSED if k in row}
            fixed = self._fixed_columns(spec, params, baseline)
            # the row before the tell, as every ending (_reconcile repairs a kill in between)
            self._write(_Live(trial.number, trial._trial_id, spec, fixed), status="copy", reused_from=twin.number,
                        **columns)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.tally.reused += 1
            return None
        training = next((live for live in self.live.values() if live.fixed["spec_key"] == key), None)
        if training is not None:  # the same candidate is training now: wait for its result, not train it again
            trial.set_user_attr("reused_from", training.number)
            trial.set_user_attr("stopped", "reused")
            trial.set_user_attr("not_counted", True)
            self.counted -= 1
            waiter = _Live(trial.number, trial._trial_id, spec, self._fixed_columns(spec, params, baseline))
            self.waiting.setdefault(training.number, []).append(waiter)
            # a copy row without a result yet; Optuna keeps the trial RUNNING (TPE's constant liar
            # then treats the point as taken) until the twin ends (_resolve_waiters)
            self._write(waiter, status="copy", reused_from=training.number,
                        failure=f"{WAITING} {training.number} (same spec, same budget), which is training")
            self.tally.reused += 1
            return None
        trial.set_user_attr("spec_key", key)
        return spec, params

    def _resolve_waiters(self, number: int) -> None:
        """The trials that waited for trial ``number`` (an in-flight twin), now that it ended:
        copies of its result if it was settled, else failures not counted toward ``trials``."""
        for waiter in self.waiting.pop(number, []):
            twin = self.settled.get(waiter.fixed["spec_key"])
            if twin is not None and twin.number == number:
                row = self.store.row(self.study.study_name, number) or {}
                columns = {k: row[k] for k in REUSED if k in row}
                self._write(waiter, status="copy", reused_from=number,
                            failure=f"a copy of trial {number} (same spec, same budget): not trained", **columns)
                self.study.tell(waiter.number, state=optuna.trial.TrialState.PRUNED)
            else:
                reason = f"its twin, trial {number}, failed; not trained, not counted"
                self.study._storage.set_trial_user_attr(waiter.trial_id, "failure", reason)
                self._write(waiter, status="fail", reused_from=number, failure=reason)
                self.study.tell(waiter.number, state=optuna.trial.TrialState.FAIL)

    def _cost_point(self, spec: ArchSpec) -> tuple[float, ...]:
        statics = static_values(spec, cost_refs(self.refs), self.config.trainer.seq_len)
        return tuple(statics[r.metric_key] for r in cost_refs(self.refs))

    # -- telling --

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        report = report_from_tune(result)
        if trial_id in self.live and report is not None and not report.final:
            live = self.live[trial_id]
            live.rungs = _with_rung(live.rungs, report)
            live.lr = report.lr
            self._write(live, status="running", hardware=report.hardware)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        live = self.live.pop(trial_id)
        self.tally.running.discard(trial_id)
        report = report_from_tune(result)
        budget = self.config.budget.flops * self.config.seeds_per_candidate
        self.tally.flops_full += budget + self._sweep_flops()
        if trial_id in self.scheduler.stopped:
            # the rung that stopped it: Tune hands a stopped trial's last report to
            # on_trial_complete only, never to on_trial_result
            if report is not None and not report.final:
                live.rungs = _with_rung(live.rungs, report)
                live.lr = report.lr
            spent = live.rungs[-1]["flops"] if live.rungs else 0.0
            self._write(live, status="pruned", val_loss=live.rungs[-1]["val_loss"] if live.rungs else None,
                        flops_spent=spent)
            self._stopped_at_rung(live)
            self.study.tell(live.number, state=optuna.trial.TrialState.PRUNED)
            self._settle(live.fixed["spec_key"], live.number, optuna.trial.TrialState.PRUNED, None)
            self.tally.pruned += 1
            self.tally.flops_spent += spent
        elif error or report is None or not report.final:
            self._fail(live, "the worker process died twice (killed, or out of host memory; Tune's error log is in "
                             "the trial directory)")
            self.tally.flops_spent += budget
        else:
            self._tell_final(live, report)
        self._resolve_waiters(live.number)
        self.on_change()

    def _stopped_at_rung(self, live: _Live) -> None:
        """What Optuna's own tools show of a trial the rung rule stopped: why, and where (its
        last rung's index, validation loss, tokens and FLOPs), as user attributes."""
        storage = self.study._storage
        storage.set_trial_user_attr(live.trial_id, "stopped", "rung")
        if live.rungs:
            last = live.rungs[-1]
            for key in ("rung", "val_loss", "tokens", "flops"):
                storage.set_trial_user_attr(live.trial_id, key if key == "rung" else f"rung_{key}", last.get(key))

    def _sweep_flops(self) -> float:
        """What the first seed's learning-rate sweep adds to a full run: the other rates'
        share of the budget and every rate's cool-down (as planned; whole steps round it)."""
        t, k = self.config.trainer, len(self.config.trainer.lr_grid)
        return (k - 1 + k * t.rung_cooldown_frac) * t.lr_sweep_frac * self.config.budget.flops if k > 1 else 0.0

    def _tell_final(self, live: _Live, report: TrialReport) -> None:
        metrics: dict[str, Any] = {**static_values(live.spec, self.refs, self.config.trainer.seq_len),
                                   **report.metrics, "val_loss": report.val_loss,
                                   "val_loss_seeds": list(report.val_loss_seeds)}
        if report.details:
            metrics["details"] = report.details
        values = objective_values(self.refs, metrics) if report.status == "complete" else None
        self.tally.flops_spent += report.flops_spent or 0.0
        columns = {
            "metrics": metrics, "val_loss": report.val_loss, "loss_curve": report.loss_curve,
            "config": report.config, "tokens": report.tokens, "flops_spent": report.flops_spent,
            "wall_s": report.wall_s, "hardware": report.hardware, "lr": report.lr,
            **metric_columns(self.refs, metrics),
        }
        if values is None:
            reason = report.failure or report.speed_reason or "an objective could not be measured"
            self._fail(live, f"{report.status}: {reason}", **columns)
        else:
            self._write(live, status="complete", **columns)  # the row first: see _reconcile in launch.py
            self.study.tell(live.number, values)
            self._settle(live.fixed["spec_key"], live.number, optuna.trial.TrialState.COMPLETE, values)
            self.tally.done += 1
            self._failure_streak.clear()

    def _fail(self, live: _Live, reason: str, **columns: Any) -> None:
        # before the study's first success a failure is most likely its settings' (a missing
        # corpus, a model too large for the budget): not counted, so that a relaunch with a
        # fixed file still trains its trials, and SAME_FAILURES_STOP alike ones stop the study
        before_any_success = not self.complete_values
        storage = self.study._storage
        # the attributes first: a finished trial's can no longer be set
        storage.set_trial_user_attr(live.trial_id, "failure", reason)
        if before_any_success:
            storage.set_trial_user_attr(live.trial_id, "not_counted", True)
            self.counted -= 1
        self._write(live, status="fail", failure=reason, **columns)
        self.study.tell(live.number, state=optuna.trial.TrialState.FAIL)
        self.tally.failed += 1
        self.tally.first_failure = self.tally.first_failure or reason
        self._failure_streak.append(re.sub(r"\d[\d.e+-]*", "#", reason))  # alike up to the numbers in it
        streak = self._failure_streak[-SAME_FAILURES_STOP:]
        if before_any_success and len(streak) == SAME_FAILURES_STOP and len(set(streak)) == 1:
            self.tally.stop_reason = (f"the study's first {SAME_FAILURES_STOP} trials failed alike, so every trial "
                                      f"would: {reason}; stopping (fix the study file and relaunch)")
            self.tally.failed_out = True

    # -- the table --

    def _fixed_columns(self, spec: ArchSpec, params: dict, baseline: str | None) -> dict[str, Any]:
        """A trial's columns known when it starts: the candidate's, its costs, its baseline."""
        return {**spec_columns(spec, params), **self._cost_columns(spec), "baseline": baseline,
                "budget_flops": self.config.budget.flops}

    def _cost_columns(self, spec: ArchSpec) -> dict[str, Any]:
        """Every static metric's column, on every row (running and pruned ones included): at
        the study's first context of an objective taken at one, else at DEFAULT_CONTEXT."""
        contexts = {r.name: r.context for r in reversed(self.refs) if r.context is not None}
        refs = [ObjectiveRef(name, context=contexts.get(name, DEFAULT_CONTEXT) if m.takes_context else None)
                for name, m in REGISTRY.items() if m.source == "static"]
        values = static_values(spec, refs, self.config.trainer.seq_len)
        return {r.metric.column: values[r.metric_key] for r in refs if r.metric is not None}

    def _write(self, live: _Live, status: str, **columns: Any) -> None:
        row = {"study": self.study.study_name, "optuna_study_id": self.study._study_id, "trial": live.number,
               "status": status, **live.fixed,
               "rungs": live.rungs, "lr": live.lr, "versions": _versions(), **columns}
        self.store.upsert(row)


def _with_rung(rungs: list[dict], report: TrialReport) -> list[dict]:
    """The rung history with ``report``'s rung in it, once (a retried trial reports its
    rungs again)."""
    record = report.rung_record()
    return [*(r for r in rungs if r["rung"] != record["rung"]), record]


_VERSIONS: dict[str, str] = {}


def _versions() -> dict[str, str]:
    """The library versions and the driver's pid: read once per process."""
    if not _VERSIONS:
        import importlib.metadata as md

        for name in ("hybridnas", "torch", "optuna", "ray", "mamba-ssm"):
            try:
                _VERSIONS[name] = md.version(name)
            except md.PackageNotFoundError:
                continue
        _VERSIONS["driver_pid"] = str(os.getpid())
    return dict(_VERSIONS)
