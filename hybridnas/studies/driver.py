"""The study driver: Optuna decides, Ray Tune executes, the driver records.

- ``OptunaBridge`` (a Tune ``Searcher``) asks Optuna for each new trial (define-by-run through
  ``SearchSpace.suggest``), skips infeasible candidates (their constraints are recorded, they
  are never trained), reuses the result of a candidate identical to one already evaluated,
  and tells Optuna each outcome: complete with its objective values, pruned when the
  scheduler stopped it, fail with a reason. Ray's stock ``OptunaSearch`` cannot be used: it
  hard-codes a no-op pruner and records scheduler-stopped trials as complete.
- ``ParetoScheduler`` (a Tune ``TrialScheduler``) applies :class:`ParetoHalving` at each rung.
- Only this process writes the hybridnas table (``ResultsStore``); workers report through Tune.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from hybridnas.proxies import cost
from hybridnas.search_space import ArchSpec
from hybridnas.studies.config import LONG_CONTEXT_OBJECTIVES, RECALL_OBJECTIVES
from hybridnas.studies.halving import ParetoHalving
from hybridnas.studies.storage import ResultsStore, spec_columns
from hybridnas.studies.worker import FINAL

__all__ = ["OptunaBridge", "ParetoScheduler", "Tally", "objective_values", "static_objectives"]

STATIC = ("params", "params_active", "train_flops", "cache_bytes")  # known before training
REUSED = ("val_loss", "metrics", "rungs", "loss_curve", "decode_tokens_per_s", "prefill_tokens_per_s")  # a twin's


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


def static_objectives(spec: ArchSpec, objectives, seq_len: int) -> dict[str, float]:
    """The analytic objectives of a candidate, by the objective's column name."""
    out = {}
    for objective in objectives:
        if objective.name not in STATIC:
            continue
        context = getattr(objective, "context", None) or seq_len
        c = cost(spec, seq_len=context if objective.name == "cache_bytes" else seq_len)
        out[objective.name] = {
            "params": c.total.params,
            "params_active": c.total.params_active,
            "train_flops": c.total.train_flops_per_token,
            "cache_bytes": c.total.cache_bytes,
        }[objective.name]
    return out


def objective_values(objectives, metrics: dict[str, Any]) -> list[float] | None:
    """The values Optuna is told, in objective order; None if one is missing."""
    values = [metrics.get(_metric_key(o)) for o in objectives]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    return [float(v) for v in values]


def _metric_key(objective) -> str:
    if objective.name in ("decode_tokens_per_s", "prefill_tokens_per_s"):
        return f"{objective.name.split('_')[0]}_tokens_per_s@{objective.context}"
    return objective.name


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

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(FINAL, True) or "rung" not in result:
            return TrialScheduler.CONTINUE
        point = (result["val_loss"], *self.cost_points.get(trial.trial_id, ()))
        decision = self.rule.decide(trial.trial_id, int(result["rung"]), point)  # ranks it for the others too
        if decision == "stop" and trial.trial_id not in self.protected:
            self.stopped.add(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


class OptunaBridge(Searcher):
    """Tune's view of the Optuna study: suggest asks, on_trial_complete tells."""

    def __init__(self, *, study: optuna.Study, space, config, store: ResultsStore, scheduler: ParetoScheduler,
                 trial_root: Path, tally: Tally, on_change=lambda: None) -> None:
        super().__init__()
        self.study, self.space, self.config, self.store = study, space, config, store
        self.scheduler, self.trial_root, self.tally, self.on_change = scheduler, trial_root, tally, on_change
        self.live: dict[str, tuple[int, ArchSpec, dict]] = {}  # tune id -> (optuna number, spec, params)

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
        Path(checkpoint_path).write_text(json.dumps({tid: number for tid, (number, _, _) in self.live.items()}))

    def restore(self, checkpoint_path: str) -> None:
        pass  # nothing to restore: see save

    # -- asking --

    def _trials_counted(self) -> int:
        """Trials that count toward ``trials``: all but the infeasible (never trained) ones,
        those a killed driver left behind (requeued as new trials) and those still waiting in
        the queue (enqueued baselines and requeued candidates, asked for later)."""
        waiting = optuna.trial.TrialState.WAITING
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state != waiting and not t.user_attrs.get("not_counted"))

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(1000):  # infeasible and reused candidates do not use up a Tune trial
            if self._trials_counted() >= self.config.trials:
                return Searcher.FINISHED
            trial = self.study.ask()
            outcome = self._candidate(trial)
            if outcome is not None:
                spec, params = outcome
                self.live[trial_id] = (trial.number, spec, params)
                self.scheduler.cost_points[trial_id] = self._cost_point(spec)
                if "baseline" in trial.user_attrs or "enqueued" in trial.user_attrs:
                    self.scheduler.protected.add(trial_id)
                self._write(trial.number, spec, params, status="running", baseline=trial.user_attrs.get("baseline"))
                self.tally.running.add(trial_id)
                self.on_change()
                return self._worker_config(trial.number, spec)
        raise RuntimeError("no feasible candidate in 1000 draws: check the search space's constraints")

    def _candidate(self, trial: optuna.Trial) -> tuple[ArchSpec, dict] | None:
        """The trial's spec to train, or None when it was settled without training."""
        from hybridnas.studies.space import Infeasible, spec_key

        baseline = trial.user_attrs.get("baseline")
        try:
            if baseline and not trial.params and self.space.baseline_params(baseline) is None:
                spec = self.space.baseline_specs()[baseline]  # outside the space: trained as it is
            else:
                spec = self.space.suggest(trial)
        except Infeasible as exc:
            # PRUNED, as the constrained samplers expect: they learn from its constraint values
            trial.set_user_attr("infeasible", exc.reason)
            trial.set_user_attr("not_counted", True)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.tally.infeasible += 1
            return None
        params = dict(trial.params)
        twin = self._evaluated_twin(spec)
        if twin is not None:  # the same candidate, the same budget: its result, complete or pruned
            trial.set_user_attr("reused_from", twin.number)
            pruned = twin.state == optuna.trial.TrialState.PRUNED
            if pruned:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self.study.tell(trial, twin.values)
            row = self._twin_row(twin.number)
            self._write(trial.number, spec, params, status="pruned" if pruned else "complete", reused_from=twin.number,
                        baseline=baseline, **{k: row[k] for k in (*REUSED, *RECALL_OBJECTIVES, *LONG_CONTEXT_OBJECTIVES)
                                              if k in row})
            self.tally.reused += 1
            if pruned:
                self.tally.pruned += 1
            else:
                self.tally.done += 1
            return None
        trial.set_user_attr("spec_key", spec_key(spec))
        return spec, params

    def _evaluated_twin(self, spec: ArchSpec):
        from hybridnas.studies.space import spec_key

        key = spec_key(spec)
        settled = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for t in self.study.get_trials(deepcopy=False, states=settled):
            if t.user_attrs.get("spec_key") == key and "reused_from" not in t.user_attrs:
                return t
        return None

    def _twin_row(self, number: int) -> dict:
        rows = [r for r in self.store.rows(self.study.study_name) if r["trial"] == number]
        return rows[0] if rows else {}

    def _cost_point(self, spec: ArchSpec) -> tuple[float, ...]:
        statics = static_objectives(spec, self.config.objectives, self.config.trainer.seq_len)
        return tuple(statics[o.name] for o in self.config.objectives if o.name in STATIC)

    def _worker_config(self, number: int, spec: ArchSpec) -> dict:
        measure: dict[str, list[int]] = {}
        for o in self.config.objectives:
            if o.name in ("decode_tokens_per_s", "prefill_tokens_per_s"):
                measure.setdefault(o.name.split("_")[0], []).append(o.context)
        names = {o.name for o in self.config.objectives}
        recall_tasks = sorted({*(names & set(RECALL_OBJECTIVES[:-1])),
                               *(self.config.recall.tasks if "recall" in names else ())})
        return {
            "spec": spec.to_dict(),
            "recall": {**self.config.recall.model_dump(mode="json"), "tasks": recall_tasks} if recall_tasks else None,
            "long_context": sorted(names & set(LONG_CONTEXT_OBJECTIVES)),
            "budget_flops": self.config.budget.flops,
            "trainer": self.config.trainer.model_dump(mode="json", exclude={"rungs", "out_dir", "seed", "progress"}),
            "rungs": list(self.config.budget.rungs),
            "seeds": list(range(self.config.seeds_per_candidate)),
            "measure": measure,
            "trial_dir": str((self.trial_root / f"trial-{number:05d}").resolve()),
            "optuna_number": number,
        }

    # -- telling --

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.live and not result.get(FINAL, True):
            number, spec, params = self.live[trial_id]
            rungs = _with_rung(self._row_rungs(number), result)
            self._write(number, spec, params, status="running", rungs=rungs, hardware=result.get("hardware"))

    def _row_rungs(self, number: int) -> list:
        row = self._twin_row(number)
        return list(row.get("rungs") or [])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        number, spec, params = self.live.pop(trial_id)
        self.tally.running.discard(trial_id)
        result = result or {}
        rungs = self._row_rungs(number)
        budget = self.config.budget.flops * self.config.seeds_per_candidate
        self.tally.flops_full += budget
        if trial_id in self.scheduler.stopped:
            # the rung that stopped it: Tune hands a stopped trial's last report to
            # on_trial_complete only, never to on_trial_result
            rungs = _with_rung(rungs, result) if "rung" in result else rungs
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
            spent = rungs[-1]["flops"] if rungs else 0.0
            self.tally.pruned += 1
            self.tally.flops_spent += spent
            self._write(number, spec, params, status="pruned", rungs=rungs,
                        val_loss=rungs[-1]["val_loss"] if rungs else None, flops_spent=spent)
        elif error or not result.get(FINAL):
            reason = "the worker failed twice (Tune's error log is in the trial directory)"
            self.study._storage.set_trial_user_attr(self._trial_id(number), "failure", reason)
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
            self.tally.failed += 1
            self.tally.flops_spent += budget
            self._write(number, spec, params, status="fail", rungs=rungs, failure=reason)
        else:
            self._tell_final(number, spec, params, result, rungs)
        self.on_change()

    def _tell_final(self, number, spec, params, result, rungs) -> None:
        proxies = {k: result[k] for k in (*RECALL_OBJECTIVES, *LONG_CONTEXT_OBJECTIVES) if result.get(k) is not None}
        metrics = {**static_objectives(spec, self.config.objectives, self.config.trainer.seq_len),
                   **{k: v for k, v in result.items() if k.endswith("tokens_per_s") or "@" in k}, **proxies,
                   "val_loss": result.get("val_loss"),
                   "val_loss_seeds": json.loads(result.get("val_loss_seeds_json") or "[]")}
        values = objective_values(self.config.objectives, metrics) if result.get("status") == "complete" else None
        self.tally.flops_spent += result.get("flops_spent") or 0.0
        columns = {
            "metrics": metrics, "rungs": rungs, "val_loss": result.get("val_loss"),
            "loss_curve": json.loads(result.get("loss_curve_json") or "null"),
            "config": json.loads(result.get("config_json") or "null"),
            "tokens": result.get("tokens"), "flops_spent": result.get("flops_spent"), "wall_s": result.get("wall_s"),
            "hardware": result.get("hardware"), **proxies,
        }
        if values is None:
            reason = result.get("failure") or result.get("speed_reason") or "an objective could not be measured"
            # the reason first: a finished trial's attributes can no longer be set
            self.study._storage.set_trial_user_attr(self._trial_id(number), "failure", f"{result.get('status')}: {reason}")
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
            self.tally.failed += 1
            self._write(number, spec, params, status="fail", failure=f"{result.get('status')}: {reason}", **columns)
        else:
            self.study.tell(number, values)
            self.tally.done += 1
            self._write(number, spec, params, status="complete", **columns)

    def _trial_id(self, number: int) -> int:
        return self.study.get_trials(deepcopy=False)[number]._trial_id

    # -- the table --

    def _cost_columns(self, spec: ArchSpec) -> dict[str, Any]:
        seq_len = self.config.trainer.seq_len
        c = cost(spec, seq_len=seq_len)
        cache = cost(spec, seq_len=_cost_context(self.config.objectives)).total.cache_bytes
        return {"params": c.total.params, "params_active": c.total.params_active,
                "train_flops": c.total.train_flops_per_token, "cache_bytes": cache}

    def _write(self, number: int, spec: ArchSpec, params: dict, status: str, **columns) -> None:
        row = {"study": self.study.study_name, "trial": number, "status": status, **spec_columns(spec, params)}
        metrics = columns.get("metrics") or {}
        row.update(self._cost_columns(spec))  # on every row, running and pruned ones included
        row.update({k: metrics[k] for k in STATIC if metrics.get(k) is not None})
        if "decode_tokens_per_s" not in columns:
            decode = [v for k, v in metrics.items() if k.startswith("decode_tokens_per_s@")]
            prefill = [v for k, v in metrics.items() if k.startswith("prefill_tokens_per_s@")]
            row["decode_tokens_per_s"] = decode[0] if decode else None
            row["prefill_tokens_per_s"] = prefill[0] if prefill else None
        row.update({"budget_flops": self.config.budget.flops, "versions": _versions(), **columns})
        self.store.upsert(row)


def _with_rung(rungs: list[dict], result: dict) -> list[dict]:
    """The rung history with ``result``'s rung report in it, once (a retried trial reports
    its rungs again)."""
    report = {k: result[k] for k in ("rung", "val_loss", "tokens", "flops")}
    return [*(r for r in rungs if r["rung"] != report["rung"]), report]


def _cost_context(objectives) -> int:
    """The context length cache_bytes is stored at: the objective's, else 8192."""
    return next((o.context for o in objectives if o.name == "cache_bytes" and o.context), 8192)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("hybridnas", "torch", "optuna", "ray", "mamba-ssm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    out["driver_pid"] = str(os.getpid())
    return out
