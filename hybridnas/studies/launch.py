"""``launch``: run (or resume) a study to its number of trials and return its Pareto set.

The same call runs on a laptop (an embedded SQLite database, ``ray.init()`` in-process, one
CPU per trial) and on a cluster (a PostgreSQL URL, ``ray_address`` of a running Ray head,
one GPU per trial). Rerunning a finished study's command adds no trials.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hybridnas.pareto import pareto_front
from hybridnas.studies.driver import OptunaBridge, ParetoScheduler, Tally
from hybridnas.studies.storage import ResultsStore, normalize_url

__all__ = ["launch", "LaunchReport", "pareto_rows", "runs_dir_for"]


@dataclass
class LaunchReport:
    study: str
    storage: str
    tally: Tally
    pareto: list[dict]
    objectives: list  # the config's objectives, in order

    @property
    def compute_saved(self) -> float:
        """The fraction of full-budget FLOPs that pruning saved on the trials run this time."""
        full = self.tally.flops_full
        return 1 - self.tally.flops_spent / full if full else 0.0


def runs_dir_for(storage_url: str, study: str) -> Path:
    """Where Tune keeps trial directories and checkpoints: beside a SQLite file, else under
    ~/hybridnas-runs. Absolute, since Tune runs each trial in its own directory."""
    from sqlalchemy.engine import make_url

    url = make_url(normalize_url(storage_url))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        base = Path(url.database).expanduser().resolve().parent / "hybridnas-runs"
    else:
        base = Path("~/hybridnas-runs").expanduser().resolve()
    return base / study


def _reconcile(study: optuna.Study, store: ResultsStore) -> int:
    """Trials a killed driver left RUNNING: marked failed (not counted toward ``trials``) and
    their parameters enqueued again, so the restarted study neither loses nor double-counts
    them. The requeued trial trains from the start: its worker died with the driver."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    reason = "the driver stopped while it ran; its candidate was requeued"
    for trial in stale:
        kept = {k: v for k, v in trial.user_attrs.items() if k in ("baseline", "enqueued")}
        study.enqueue_trial(trial.params, user_attrs={**kept, "requeued_from": trial.number}, skip_if_exists=False)
        study._storage.set_trial_user_attr(trial._trial_id, "not_counted", True)  # its requeued twin counts
        study._storage.set_trial_user_attr(trial._trial_id, "failure", reason)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        rows = [r for r in store.rows(study.study_name) if r["trial"] == trial.number]
        if rows:
            store.upsert({**{k: v for k, v in rows[0].items() if k not in ("id", "updated_at")},
                          "status": "fail", "failure": reason})
    return len(stale)


def launch(target: str, *, storage: str | None = None, ray_address: str | None = None, trials: int | None = None,
           progress: bool = True, settings: dict[str, Any] | None = None) -> LaunchReport:
    """Run the study ``target`` (a preset or a study file) with ``settings`` (dotted keys, as
    ``load_study_config`` takes them: ``{"budget.flops": 1.6e15, "name": "bae-small-4x"}``)."""
    import ray
    from ray import tune

    from hybridnas.studies.config import load_study_config
    from hybridnas.studies.space import SearchSpace, make_sampler
    from hybridnas.studies.worker import run_trial

    given = {"storage": storage, "trials": trials}
    overrides = {**(settings or {}), **{k: v for k, v in given.items() if v is not None}}
    config = load_study_config(target, **overrides)
    space = SearchSpace(config)
    space.check_enqueued()  # before anything is written
    url = normalize_url(config.storage)
    store = ResultsStore(url)
    store.create()
    study = optuna.create_study(
        study_name=config.name, storage=url, sampler=make_sampler(config), load_if_exists=True,
        directions=list(config.directions),
    )
    if not study.get_trials(deepcopy=False):
        study.set_user_attr("config", config.model_dump(mode="json"))
        for name in config.baselines:
            # a baseline the space cannot express (e.g. pure attention where fusion is fixed)
            # is enqueued without parameters and trained from its spec as it is
            study.enqueue_trial(space.baseline_params(name) or {}, user_attrs={"baseline": name})
        for i, params in enumerate(config.enqueue):
            study.enqueue_trial(dict(params), user_attrs={"enqueued": i})
    _reconcile(study, store)

    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    resources: dict[str, float] = {"gpu": 1, "cpu": 2} if gpus else {"cpu": 1}

    tally = Tally()
    scheduler = ParetoScheduler.for_study(config)
    runs = runs_dir_for(url, config.name)
    runs.mkdir(parents=True, exist_ok=True)
    bridge = OptunaBridge(study=study, space=space, config=config, store=store, scheduler=scheduler,
                          trial_root=runs / "trials", tally=tally)
    if progress:
        bridge.on_change = _ProgressLine(bridge, config.trials)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables on stdout
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        tune_config=tune.TuneConfig(search_alg=bridge, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=config.concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=str(runs), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    tuner.fit()
    report = LaunchReport(config.name, url, tally, pareto_rows(store, config), list(config.refs))
    store.dispose()
    return report


def pareto_rows(store: ResultsStore, config) -> list[dict]:
    """The complete trials on the first front of the study's objectives (a reused result is
    its twin's point again, so left out), by the first objective."""
    refs = config.refs
    rows = [r for r in store.rows(config.name) if r["status"] == "complete" and r.get("reused_from") is None]
    points = [[ref.value(r) for ref in refs] for r in rows]
    front: list[int] = pareto_front(points, [ref.direction for ref in refs]).tolist() if rows else []
    return sorted((rows[i] for i in front), key=lambda r: refs[0].value(r))


class _ProgressLine:
    """One status line on stderr whenever a count changes (a bar on an interactive terminal
    would fight Ray's own output)."""

    def __init__(self, bridge: OptunaBridge, total: int) -> None:
        self.bridge, self.total = bridge, total
        self.last: str | None = None  # the line last printed

    def __call__(self) -> None:
        t = self.bridge.tally
        # the first front of the complete trials' values; a reused result is the same point
        points = sorted(set(self.bridge.complete_values))
        pareto = len(pareto_front(points, list(self.bridge.config.directions))) if points else 0
        text = (f"trials {t.done + t.pruned + t.failed}/{self.total}: {t.done} complete, {len(t.running)} running, "
                f"{t.failed} failed, {t.pruned} pruned, {t.reused} reused, {t.infeasible} infeasible; "
                f"Pareto set {pareto}")
        if text != self.last:
            print(text, file=sys.stderr, flush=True)
            self.last = text
