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

from hybridnas.cluster import ensure_ray
from hybridnas.errors import UserError, check_writable_dir
from hybridnas.pareto import pareto_front
from hybridnas.studies.changes import measured_with
from hybridnas.studies.config import URI
from hybridnas.studies.driver import WAITING, OptunaBridge, ParetoScheduler, Tally
from hybridnas.studies.lease import take_lease
from hybridnas.studies.resources import ASSUMED_GPU_BYTES, Cluster, check_placeable, trial_resources
from hybridnas.studies.storage import ResultsStore, normalize_url

__all__ = ["begin_study", "delete_study", "launch", "launch_config", "LaunchReport", "name_metrics",
           "StudyInterrupted", "pareto_rows", "runs_dir_for", "runs_location"]


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
    """Where Tune keeps trial directories and checkpoints by default: beside a SQLite file,
    else under ~/hybridnas-runs. Absolute, since Tune runs each trial in its own directory."""
    from sqlalchemy.engine import make_url

    url = make_url(normalize_url(storage_url))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        base = Path(url.database).expanduser().resolve().parent / "hybridnas-runs"
    else:
        base = Path("~/hybridnas-runs").expanduser().resolve()
    return base / study




def runs_location(config, storage_url: str) -> str | Path:
    """The study's runs folder: ``config.runs_dir`` / its name (a URI stays a URI, for Tune's
    pyarrow storage; a path is made absolute), else :func:`runs_dir_for`."""
    if config.runs_dir is None:
        return runs_dir_for(storage_url, config.name)
    if URI.match(config.runs_dir):
        return f"{config.runs_dir.rstrip('/')}/{config.name}"
    return Path(config.runs_dir).expanduser().resolve() / config.name


def check_runs_location(location: str | Path) -> None:
    """A runs folder that cannot be written is one line (UserError) before anything is: a
    path is made (empty) and a file written in it; a URI is opened through pyarrow (as Tune will), its folder
    made, and a probe file written and removed."""
    if isinstance(location, Path):  # made here: as root, a parent such as /proc passes os.access
        check_writable_dir(location, "the runs folder", create=True)
        return
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(location)
        fs.create_dir(path, recursive=True)
        probe = f"{path}/.hybridnas-probe"
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... per filesystem: each is this line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"runs_dir {location}: cannot be written through pyarrow ({first})") from None


def _reconcile(study: optuna.Study, store: ResultsStore, refs, reason: str) -> int:
    """Trials a stopped driver left RUNNING in Optuna, settled; called only with the study's
    lease held (the driver that ran them is gone: killed, interrupted, or this one after
    Ctrl-C). The driver writes a trial's row before it tells Optuna, so a kill between the two
    leaves a row that already says how the trial ended: Optuna is told the same (complete with
    the row's values, pruned, failed, a copy). A trial whose row still says running was cut
    off mid-training: marked failed (not counted toward ``trials``) and its parameters enqueued
    again, so the study neither loses nor double-counts it; it trains from the start."""
    from hybridnas.studies.objectives import objective_values

    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    requeued = 0
    for trial in stale:
        row = store.row(study.study_name, trial.number)
        status = (row or {}).get("status")
        storage, tid = study._storage, trial._trial_id
        if row is not None and status == "complete":
            study.tell(trial.number, objective_values(refs, row["metrics"]))  # the values the driver computed
            continue
        if row is not None and status == "copy" and (row["failure"] or "").startswith(WAITING):
            # it waited for an in-flight twin that was cut off too (that twin is requeued itself)
            storage.set_trial_user_attr(tid, "not_counted", True)
            storage.set_trial_user_attr(tid, "failure", f"its twin, trial {row['reused_from']}, was cut off")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            continue
        if row is not None and status in ("pruned", "copy"):
            if status == "copy":
                storage.set_trial_user_attr(tid, "reused_from", row["reused_from"])
                storage.set_trial_user_attr(tid, "not_counted", True)
            study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
            continue
        if row is not None and status == "fail":
            storage.set_trial_user_attr(tid, "failure", row["failure"])
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            continue
        kept = {k: v for k, v in trial.user_attrs.items() if k in ("baseline", "enqueued")}
        study.enqueue_trial(trial.params, user_attrs={**kept, "requeued_from": trial.number}, skip_if_exists=False)
        storage.set_trial_user_attr(tid, "not_counted", True)  # its requeued twin counts
        storage.set_trial_user_attr(tid, "failure", reason)
        if row is not None:
            store.upsert({**{k: v for k, v in row.items() if k not in ("id", "updated_at")},
                          "status": "fail", "failure": reason})
        storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
        requeued += 1
    return requeued


class StudyInterrupted(Exception):
    """Ctrl-C stopped the study: its workers are stopped, no trial is left running, and the
    same command resumes it. ``requeued``: the trials cut off, which train again then."""

    def __init__(self, study: str, requeued: int) -> None:
        super().__init__(f"study {study} interrupted; {requeued} trial(s) cut off were requeued")
        self.study, self.requeued = study, requeued


def begin_study(study: optuna.Study, config, space, store: ResultsStore) -> None:
    """A new study's first writes: the rows an earlier study of its name left (one deleted in
    Optuna, say) go; its config and the defaults it is measured with (what a relaunch is
    checked against); then its baselines and enqueued candidates, in that order."""
    store.forget(config.name)
    name_metrics(study, config)
    study.set_user_attr("config", config.model_dump(mode="json"))
    study.set_user_attr("measured_with", measured_with(config))
    for name in config.baselines:
        # a baseline the space cannot express (e.g. pure attention where fusion is fixed)
        # is enqueued without parameters and trained from its spec as it is
        study.enqueue_trial(space.baseline_params(name) or {}, user_attrs={"baseline": name})
    for i, params in enumerate(config.enqueue):
        study.enqueue_trial(dict(params), user_attrs={"enqueued": i})


def delete_study(url: str, name: str) -> int:
    """Delete the study ``name`` from Optuna's tables and its rows from ``hybridnas_trials``;
    returns the number of rows deleted. UserError if there is no such study; StudyBusy if a
    live driver holds it (its lease is taken for the deletion, so none can start meanwhile).
    Its runs folder (checkpoints) is left alone."""
    reader = ResultsStore(url, readonly=True)  # looking creates nothing
    try:
        optuna_storage = reader.optuna_reader()
        known = {s.study_name for s in optuna_storage.get_all_studies()} if optuna_storage is not None else set()
        rows = set(reader.studies()) if reader.has_table() else set()
    finally:
        reader.dispose()
    if name not in known | rows:
        raise UserError(f"no study {name!r} in {url} (studies: {', '.join(sorted(known | rows)) or 'none'})")
    store = ResultsStore(url)
    try:
        store.create()  # the lease table, and a results table of this version
        with take_lease(store, name):
            if name in known:
                optuna.delete_study(study_name=name, storage=url)
            return store.forget(name)
    finally:
        store.dispose()


def name_metrics(study: optuna.Study, config) -> None:
    """Optuna's metric names are the objectives' labels (``val_loss``, ``decode_tokens_per_s@8192``),
    so optuna-dashboard and ``study.metric_names`` name each value; set where missing."""
    import warnings

    labels = [ref.label for ref in config.refs]
    if study.metric_names != labels:
        with warnings.catch_warnings():  # set_metric_names is marked experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(labels)


def _saved_study(url: str, name: str) -> optuna.Study | None:
    """The study ``name`` if it exists with trials (one created without any is begun afresh)."""
    if name not in optuna.get_all_study_names(url):
        return None
    study = optuna.load_study(study_name=name, storage=url)
    return study if study.get_trials(deepcopy=False) else None


def _check_saved_config(study: optuna.Study, config, allow_change: tuple[str, ...]) -> dict[str, Any]:
    """A relaunch runs the study it was created as (studies/changes.py): the saved config,
    read with today's defaults for keys it predates, against the new one. Raises StudyChanged
    for a change not accepted; returns the study attributes to save (the new config, and the
    allowed changes in ``config_history``), which launch writes once Ray has been joined."""
    import datetime as dt

    from hybridnas.studies.changes import StudyChanged, check_measured_with, check_relaunch
    from hybridnas.studies.config import StudyConfigError, parse_study_config

    new = config.model_dump(mode="json")
    defaults = measured_with(config)
    saved_defaults = study.user_attrs.get("measured_with")
    if saved_defaults is not None:
        check_measured_with(config.name, saved_defaults, defaults)
    # saved where it differs: a study from before measured_with gets today's (equal ones were checked)
    attrs: dict[str, Any] = {} if saved_defaults == defaults else {"measured_with": defaults}
    saved = study.user_attrs.get("config")
    if saved is None:  # a study no hybridnas driver created, or created before configs were saved
        return {**attrs, "config": new}
    try:
        saved = parse_study_config(saved).model_dump(mode="json")
    except StudyConfigError as exc:
        raise StudyChanged(f"study {config.name}: its saved config no longer reads ({exc}); "
                           "run it under a new study name (--set name=...)") from None
    changes = check_relaunch(config.name, saved, new, allow_change)
    if not changes:
        return attrs
    allowed = [{"key": c.key, "old": c.old, "new": c.new, "at": dt.datetime.now(dt.UTC).isoformat()}
               for c in changes if c.kind == "allowable"]
    history = {"config_history": [*study.user_attrs.get("config_history", []), *allowed]} if allowed else {}
    return {**attrs, **history, "config": new}


def _check_before_writing(config, space, url: str, local: bool) -> None:
    """What would fail every trial, checked before a study row, a baseline or a training
    step exists: the enqueued candidates, the runs folder, the corpus (tokenized here, into
    the token cache the workers then read: once per corpus and tokenizer), and each baseline
    against the budget (one training sequence at least) and, where the trials run on this
    host (``local``), its device and memory (trainer/memory.py)."""
    from hybridnas.studies.config import StudyConfigError
    from hybridnas.trainer import load_tokens
    from hybridnas.trainer.memory import FitError
    from hybridnas.trainer.train import BudgetError, plan_run, training_device

    t = config.trainer
    space.check_enqueued()
    check_runs_location(runs_location(config, url))
    data = load_tokens(t.corpus, t.tokenizer, t.vocab_size, t.val_fraction, t.cache_dir)
    data.check_trainable(t.seq_len)
    device = training_device(t) if local else None
    for name, spec in space.baseline_specs().items():
        try:
            plan_run(spec, config.budget.flops, t, data, device, config.resources.data_parallel)  # as train() does
        except BudgetError as exc:
            raise StudyConfigError(f"budget.flops={config.budget.flops:g}: too small for baseline {name}: "
                                   f"{exc}") from None
        except FitError as exc:
            raise StudyConfigError(f"baseline {name}: {exc}") from None


def launch_config(target: str, *, storage: str | None = None, trials: int | None = None,
                  runs_dir: str | None = None, settings: dict[str, Any] | None = None):
    """The StudyConfig a launch of ``target`` runs: ``settings`` (``--set``) applied, then the
    options given (``--storage``, ``--trials``, ``--runs-dir``), which beat them."""
    from hybridnas.studies.config import load_study_config

    given = {"storage": storage, "trials": trials, "runs_dir": runs_dir}
    return load_study_config(target, **{**(settings or {}), **{k: v for k, v in given.items() if v is not None}})


def launch(target: str, *, storage: str | None = None, ray_address: str | None = None, trials: int | None = None,
           runs_dir: str | None = None, progress: bool = True, settings: dict[str, Any] | None = None,
           allow_change: tuple[str, ...] = ()) -> LaunchReport:
    """Run the study ``target`` (a preset or a study file) with ``settings`` (dotted keys, as
    ``load_study_config`` takes them: ``{"budget.flops": 1.6e15, "name": "bae-small-4x"}``).
    Relaunching a study with a changed config raises StudyChanged unless every change is
    free or named in ``allow_change`` (studies/changes.py)."""
    from hybridnas.studies.space import SearchSpace, make_sampler

    config = launch_config(target, storage=storage, trials=trials, runs_dir=runs_dir, settings=settings)
    space = SearchSpace(config)
    url = normalize_url(config.storage)
    _check_before_writing(config, space, url, local=ray_address in (None, "local"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress line says what Optuna's INFO lines did
    store = ResultsStore(url)
    store.create()  # the tables only: storage that cannot be written is one line before Ray starts
    with take_lease(store, config.name):  # a live driver of this study: StudyBusy, nothing touched
        resumed = _saved_study(url, config.name)
        accepted = _check_saved_config(resumed, config, allow_change) if resumed is not None else {}
        ensure_ray(ray_address)  # before the study is written to: a cluster that refuses this driver changes nothing
        cluster = _check_resources(config, space, local=ray_address in (None, "local"))
        study = optuna.create_study(
            study_name=config.name, storage=url, sampler=make_sampler(config), load_if_exists=True,
            directions=list(config.directions),
        )
        for key, value in accepted.items():
            study.set_user_attr(key, value)
        if resumed is None:
            begin_study(study, config, space, store)
        else:
            name_metrics(study, config)  # a study from before metric names were set
        _reconcile(study, store, config.refs, "the driver stopped while it ran; its candidate was requeued")
        tally = _run(study, space, config, store, url, progress, cluster)
    report = LaunchReport(config.name, url, tally, pareto_rows(store, config), list(config.refs))
    store.dispose()
    return report


def _sized_per_candidate(config, cluster: Cluster) -> bool:
    """Whether trials hold different resources by candidate: "auto" GPUs where there are GPUs."""
    return config.resources.gpus_per_trial == "auto" and cluster.has_gpus and config.trainer.device != "cpu"


def _check_resources(config, space, *, local: bool) -> Cluster:
    """The Ray cluster as the trials' resources see it, once Ray is up; ResourcesError (one
    line, before the study is written) if no node can hold a trial as the study file asks, or
    a baseline's "auto" share. The GPU memory "auto" sizes by is this host's where Ray runs here."""
    import ray
    import torch

    nodes = tuple((float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                  for n in ray.nodes() if n.get("Alive"))
    gpu_bytes = (torch.cuda.get_device_properties(0).total_memory if local and torch.cuda.is_available()
                 else ASSUMED_GPU_BYTES)
    cluster = Cluster(nodes, int(gpu_bytes))
    specs = list(space.baseline_specs().values())
    sized = _sized_per_candidate(config, cluster)
    # GPUs given (or none to size): one check holds for every candidate; "auto": each baseline's
    # share (at most one GPU, and CPUs at most a GPU node's: a candidate sampled later fits too)
    for spec in specs if sized else [None]:
        check_placeable(trial_resources(config.resources, spec, config.trainer, cluster), cluster)
    return cluster


def _run(study: optuna.Study, space, config, store: ResultsStore, url: str, progress: bool,
         cluster: Cluster) -> Tally:
    """Tune runs the study's trials on Ray (started or joined by launch) until it has its
    number of trials (or the space is exhausted), each holding what ``[resources]`` gives its
    candidate. Ctrl-C stops the workers, settles every trial they ran and raises StudyInterrupted."""
    import ray
    from ray import tune

    from hybridnas.studies.protocol import request_from_tune
    from hybridnas.studies.worker import run_trial

    def per_trial(trial_config: dict) -> tune.PlacementGroupFactory:
        spec = request_from_tune(trial_config).spec
        return tune.PlacementGroupFactory([trial_resources(config.resources, spec, config.trainer, cluster).bundle()])

    # one request for every trial unless "auto" sizes each candidate's share of a GPU
    same_for_all = trial_resources(config.resources, None, config.trainer, cluster).bundle()
    resources = per_trial if _sized_per_candidate(config, cluster) else same_for_all

    tally = Tally()
    scheduler = ParetoScheduler.for_study(config)
    runs = runs_location(config, url)
    if isinstance(runs, Path):
        runs.mkdir(parents=True, exist_ok=True)
    bridge = OptunaBridge(study=study, space=space, config=config, store=store, scheduler=scheduler,
                          trial_root=runs / "trials" if isinstance(runs, Path) else None, tally=tally)
    if progress:
        bridge.on_change = _ProgressLine(bridge, config.trials)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables on stdout
    # Ctrl-C reaches this process as KeyboardInterrupt, not Tune's handler, whose "resume with
    # Tuner.restore" is wrong for hybridnas (the same launch command resumes a study)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        tune_config=tune.TuneConfig(search_alg=bridge, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=config.concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=str(runs), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        ray.shutdown()  # the workers are this driver's actors: they stop with it
        reason = "interrupted (Ctrl-C) while it ran; its candidate was requeued"
        requeued = _reconcile(study, store, config.refs, reason)
        raise StudyInterrupted(config.name, requeued) from None
    return tally


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
