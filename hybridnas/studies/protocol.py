"""What the driver and a trial's worker say to each other, typed.

- :class:`TrialRequest`: what the driver sends a worker (the candidate, its budget and
  rungs, how to train it, what to measure after training).
- :class:`TrialReport`: what a worker reports at a rung (``rung`` set) and at the end
  (``rung`` None).

Ray Tune carries a trial's config to the worker as a dict and the worker's reports back as
dicts; Tune flattens nested dicts in reports (``{"a": {"b": 1}}`` arrives as ``"a/b"``) and
its loggers take scalars. :func:`request_to_tune` / :func:`request_from_tune` and
:func:`report_to_tune` / :func:`report_from_tune` are the only code that knows this: a
report's nested values travel as JSON text under ``*_json`` keys. Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridnas.proxies.recall import RecallConfig
from hybridnas.search_space import ArchSpec
from hybridnas.studies.objectives import REGISTRY
from hybridnas.trainer.config import TrainConfig

__all__ = ["TrialReport", "TrialRequest", "report_from_tune", "report_to_tune", "request_from_tune",
           "request_to_tune"]

FINAL = "final"  # the key that marks a trial's last report in what Tune carries


@dataclass(frozen=True)
class TrialRequest:
    """One trial's work. ``trainer`` is the study's TrainConfig; the worker sets the seed,
    rungs and output folder of each run. ``trial_dir`` is absolute (Tune runs each trial in
    its own working directory), or None where the runs go to a URI (``s3://...``): the worker
    then trains in the local folder Tune gives the trial and Tune uploads its checkpoints.
    ``processes``: data-parallel training processes (one per GPU of the trial). What to measure
    after training: decode / prefill speed at these contexts, the recall tasks of ``recall``
    (None: no recall objective), and the long-context objectives named in ``long_context``
    (registry names)."""

    number: int  # the Optuna trial number
    spec: ArchSpec
    budget_flops: float
    trainer: TrainConfig
    rungs: tuple[float, ...]
    seeds: tuple[int, ...]
    trial_dir: str | None
    processes: int = 1
    decode_contexts: tuple[int, ...] = ()
    prefill_contexts: tuple[int, ...] = ()
    recall: RecallConfig | None = None
    long_context: tuple[str, ...] = ()

    @classmethod
    def for_study(cls, config: Any, number: int, spec: ArchSpec, trial_root: Path | None) -> TrialRequest:
        """The request of trial ``number`` of the study ``config`` (a StudyConfig): what each
        objective needs measured follows from its registry source. ``trial_root``: the local
        or shared folder of the study's trials, None where its runs go to a URI."""
        refs = config.refs
        contexts = {kind: tuple(r.context for r in refs if r.name == f"{kind}_tokens_per_s")
                    for kind in ("decode", "prefill")}
        recall = recall_config(config)
        return cls(
            number=number,
            spec=spec,
            budget_flops=config.budget.flops,
            trainer=config.trainer,
            rungs=tuple(config.budget.rungs),
            seeds=tuple(range(config.seeds_per_candidate)),
            trial_dir=str((trial_root / f"trial-{number:05d}").resolve()) if trial_root is not None else None,
            processes=config.resources.data_parallel,
            decode_contexts=contexts["decode"],
            prefill_contexts=contexts["prefill"],
            recall=recall,
            long_context=tuple(sorted(r.name for r in refs if r.metric is not None
                                      and r.metric.source == "long_context")),
        )


def recall_config(config: Any) -> RecallConfig | None:
    """How the study ``config`` (a StudyConfig) scores recall: its [recall] settings over the
    tasks its objectives name (the "recall" summary's included); None if it scores none."""
    refs = config.refs
    tasks = {r.metric.task for r in refs if r.metric is not None and r.metric.task is not None}
    if any(r.name == "recall" for r in refs):
        tasks |= set(config.recall.tasks)
    if not tasks:
        return None
    settings = config.recall.model_dump()
    return RecallConfig(**{**settings, "tasks": tuple(sorted(tasks)), "lrs": tuple(settings["lrs"])})


def request_to_tune(request: TrialRequest) -> dict[str, Any]:
    """The trial's Tune config: JSON-ready values only (Tune stores it with the trial)."""
    out = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    out["spec"] = request.spec.to_dict()
    out["trainer"] = request.trainer.model_dump(mode="json")
    out["recall"] = dataclasses.asdict(request.recall) if request.recall is not None else None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def request_from_tune(config: Mapping[str, Any]) -> TrialRequest:
    """The inverse of :func:`request_to_tune`."""
    recall = config.get("recall")
    if recall is not None:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in recall.items()}
        recall = RecallConfig(**fields)
    return TrialRequest(
        number=int(config["number"]),
        spec=ArchSpec.from_dict(config["spec"]),
        budget_flops=float(config["budget_flops"]),
        trainer=TrainConfig(**config["trainer"]),
        rungs=tuple(config["rungs"]),
        seeds=tuple(config["seeds"]),
        trial_dir=config["trial_dir"],
        processes=int(config.get("processes", 1)),
        decode_contexts=tuple(config.get("decode_contexts", ())),
        prefill_contexts=tuple(config.get("prefill_contexts", ())),
        recall=recall,
        long_context=tuple(config.get("long_context", ())),
    )


@dataclass(frozen=True)
class TrialReport:
    """A worker's report. At a rung: ``rung`` (its index), ``val_loss`` there, ``tokens``
    and ``flops`` spent to reach it. At the end (``rung`` None): the run's ``status``
    (complete | stopped | diverged | oom | error) and ``failure``, ``val_loss`` (mean over
    the seeds' complete runs), everything measured, and ``metrics``: the measured objective
    values by metric key (``decode_tokens_per_s@8192``, ``mqar``, ``recall``, ``passkey``,
    ``val_loss_2x``...), None where a measurement had no value. ``details`` holds the
    proxies' per-run records (``recall``, ``passkey``, ``lr_sweep``) for the results row."""

    rung: int | None
    val_loss: float | None = None
    tokens: int | None = None
    flops: float | None = None
    train_loss: float | None = None
    lr: float | None = None  # the peak learning rate the candidate trains at (chosen when trainer.lr_grid is set)
    hardware: str | None = None
    status: str | None = None
    failure: str | None = None
    val_loss_seeds: tuple[float, ...] = ()
    flops_spent: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    device: str | None = None
    wall_s: float | None = None
    speed_reason: str | None = None
    loss_curve: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.rung is None

    def rung_record(self) -> dict[str, Any]:
        """The rung as the results row's ``rungs`` history keeps it."""
        return {"rung": self.rung, "val_loss": self.val_loss, "tokens": self.tokens, "flops": self.flops}


# nested values travel as JSON text: Tune would flatten dicts and its loggers take scalars
_JSON_FIELDS = ("val_loss_seeds", "loss_curve", "config", "metrics", "details")


def report_to_tune(report: TrialReport) -> dict[str, Any]:
    """What the worker passes to ``tune.report``: scalars only, ``FINAL`` marking the end."""
    out: dict[str, Any] = {FINAL: report.final}
    for f in dataclasses.fields(report):
        value = getattr(report, f.name)
        if f.name in _JSON_FIELDS:
            out[f"{f.name}_json"] = json.dumps(list(value) if isinstance(value, tuple) else value)
        elif value is not None:
            out[f.name] = value
    return out


def report_from_tune(result: Mapping[str, Any] | None) -> TrialReport | None:
    """The worker's report in what Tune hands the driver or scheduler (which adds keys of
    its own); None for a result no worker of ours reported (e.g. a trial that errored)."""
    if not result or FINAL not in result:
        return None
    values: dict[str, Any] = {}
    for f in dataclasses.fields(TrialReport):
        if f.name in _JSON_FIELDS:
            text = result.get(f"{f.name}_json")
            if text is not None:
                decoded = json.loads(text)
                values[f.name] = tuple(decoded) if f.name == "val_loss_seeds" else decoded
        elif f.name in result:
            values[f.name] = result[f.name]
    if result[FINAL]:
        values["rung"] = None
    for key in (values.get("metrics") or {}):  # a metric key: "name", or "name@context" where it takes one
        name, at, context = key.partition("@")
        metric = REGISTRY.get(name)
        if metric is None or bool(at) != metric.takes_context or (at and not context.isdigit()):
            raise ValueError(f"trial report: {key!r} is not a registered objective's metric key")
    return TrialReport(**values)
