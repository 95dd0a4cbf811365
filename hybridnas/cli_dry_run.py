"""``hybridnas launch --dry-run``: what a launch would do, without doing any of it.

It resolves the study as ``launch`` does (the same ``launch_config`` call, the same
overrides), then reports the search space's size, each trial's FLOPs and tokens, the total
budget, and where the trials would run with which resources. It starts no Ray, trains
nothing, and neither opens nor creates the database or the runs folder: every figure comes
from the config and the cost model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from hybridnas.search_space import cost

__all__ = ["BaselinePlan", "DryRun", "dry_run", "format_dry_run"]

# a cluster that is not contacted: assume its nodes hold any trial, on GPUs of the size
# launch assumes for a remote cluster (resources.ASSUMED_GPU_BYTES)
UNSEEN_NODE = (math.inf, 8.0)


@dataclass(frozen=True)
class BaselinePlan:
    """One baseline, as the trainer would plan it at the study's budget."""

    name: str
    layout: str
    params: float
    flops_per_token: float
    tokens: int  # per seed
    steps: int
    gpus: float
    cpus: float


@dataclass(frozen=True)
class DryRun:
    """Everything the dry run reports; see :func:`format_dry_run`."""

    config: Any  # StudyConfig
    storage: str  # password hidden
    runs: str
    where: str
    device: str  # what the trials train on: this host's device, or trainer.device for a cluster
    distinct: int | None  # distinct feasible candidates; None: more than the enumeration limit
    limit: int
    combinations: int  # the product of the searched parameters' choices (GridSampler's grid)
    searched: dict[str, list]
    trial_flops: float
    baselines: tuple[BaselinePlan, ...]
    at_once: int | None  # trials this host holds at once (None: a cluster not contacted)

    @property
    def total_flops(self) -> float:
        """At most: rungs stop trials early, and a copy of an evaluated candidate costs nothing."""
        return self.config.trials * self.trial_flops


def dry_run(target: str, *, storage: str | None, ray_address: str | None, trials: int | None,
            runs_dir: str | None, settings: dict[str, Any]) -> DryRun:
    """The :class:`DryRun` of ``hybridnas launch TARGET`` with these options (bad input:
    the same UserError launch raises before it writes anything)."""
    from sqlalchemy.engine import make_url

    from hybridnas.studies.driver import ENUMERATION_LIMIT
    from hybridnas.studies.launch import launch_config, runs_location
    from hybridnas.studies.space import SearchSpace
    from hybridnas.studies.storage import normalize_url

    config = launch_config(target, storage=storage, trials=trials, runs_dir=runs_dir, settings=settings)
    space = SearchSpace(config)
    space.check_enqueued()
    url = normalize_url(config.storage)
    local = ray_address in (None, "local")
    cluster, where = _cluster(ray_address)
    device = _local_device(config) if local else None
    baselines = tuple(_plan_baseline(name, spec, config, cluster, device)
                      for name, spec in space.baseline_specs().items())
    distinct = space.distinct_keys(limit=ENUMERATION_LIMIT)
    searched = space.grid()
    return DryRun(
        config=config, storage=make_url(url).render_as_string(hide_password=True),
        runs=str(runs_location(config, url)), where=where,
        device=str(device) if device is not None else f"trainer.device {config.trainer.device}",
        distinct=None if distinct is None else len(distinct), limit=ENUMERATION_LIMIT,
        combinations=math.prod(len(choices) for choices in searched.values()), searched=searched,
        trial_flops=_trial_flops(config), baselines=baselines,
        at_once=_at_once(config.concurrent, baselines, cluster) if local else None,
    )


def _cluster(ray_address: str | None) -> tuple[Any, str]:
    """The Cluster the trials' resources are resolved on, and a line saying where that is:
    this host as a local Ray would see it, or a cluster that is not contacted."""
    from hybridnas.studies.resources import ASSUMED_GPU_BYTES, Cluster

    if ray_address not in (None, "local"):
        return (Cluster((UNSEEN_NODE,), ASSUMED_GPU_BYTES),
                f"the Ray cluster at {ray_address} (not contacted: assumed to hold any trial, on GPUs of "
                f"{ASSUMED_GPU_BYTES / 2**30:.0f} GiB)")
    import torch

    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if gpus else ASSUMED_GPU_BYTES
    return (Cluster(((cpus, float(gpus)),), int(gpu_bytes)),
            f"a Ray instance started on this host ({cpus:g} CPUs, {gpus} GPUs)")


def _local_device(config):
    """The device trials on this host train on; launch's ConfigError where it has none
    (``trainer.device = "cuda"`` without a GPU)."""
    from hybridnas.trainer.train import training_device

    return training_device(config.trainer)


def _plan_baseline(name: str, spec, config, cluster, device) -> BaselinePlan:
    """A baseline's plan (tokens, steps) and its trial's resources, with the checks launch
    makes before it starts: the budget, and where the trials run on this host (``device``
    given), the memory and the placement."""
    from hybridnas.studies.config import StudyConfigError
    from hybridnas.studies.resources import check_placeable, trial_resources
    from hybridnas.trainer.memory import FitError, check_fits
    from hybridnas.trainer.train import BudgetError, forward_seqs, make_plan

    t = config.trainer
    try:
        plan = make_plan(spec, config.budget.flops, t)
        if device is not None:  # as plan_run does in launch's checks
            check_fits(spec, plan.seq_len, forward_seqs(plan, t, config.resources.data_parallel), device)
    except BudgetError as exc:
        raise StudyConfigError(f"budget.flops={config.budget.flops:g}: too small for baseline {name}: {exc}") from None
    except FitError as exc:
        raise StudyConfigError(f"baseline {name}: {exc}") from None
    wanted = trial_resources(config.resources, spec, t, cluster)
    if device is not None:
        check_placeable(wanted, cluster)
    return BaselinePlan(name, spec.describe(), cost(spec, plan.seq_len).total.params, plan.flops_per_token,
                        plan.total_seqs * plan.seq_len, plan.steps, wanted.gpus, wanted.cpus)


def _trial_flops(config) -> float:
    """A trial's FLOPs at full budget: every seed's run plus the learning-rate sweep, as the
    driver counts them (its ``_sweep_flops`` reads only the config: one home for the rule)."""
    from hybridnas.studies.driver import OptunaBridge

    sweep = OptunaBridge._sweep_flops(cast(Any, SimpleNamespace(config=config)))
    return config.budget.flops * config.seeds_per_candidate + sweep


def _at_once(concurrent: int, baselines: tuple[BaselinePlan, ...], cluster) -> int:
    """Trials running together on this host: ``concurrent``, or fewer where the largest
    baseline's trials do not fit that many times."""
    (cpus, gpus), = cluster.nodes
    fits = [concurrent]
    for b in baselines:
        fits.append(int(cpus // b.cpus) if b.cpus else concurrent)
        if b.gpus:
            fits.append(int(gpus // b.gpus))
    return max(0, min(fits))


def _human(x: float) -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _space_lines(run: DryRun) -> list[str]:
    searched = ", ".join(f"{name} ({len(choices)})" for name, choices in run.searched.items()) or "nothing"
    if run.distinct is not None:
        size = f"{run.distinct} distinct feasible candidates"
    else:  # every dimension is a finite set of choices: too many to list, never continuous
        size = f"more than {run.limit:,} candidates (finite; not enumerated)"
    return [f"search space: {size}; {run.combinations:,} combinations of the searched parameters: {searched}"]


def _budget_lines(run: DryRun) -> list[str]:
    c = run.config
    sweep = run.trial_flops - c.budget.flops * c.seeds_per_candidate
    per = (f"{_human(c.budget.flops)}FLOPs x {c.seeds_per_candidate} seed(s)"
           + (f" + {_human(sweep)}FLOPs learning-rate sweep" if sweep else ""))
    return [f"per trial: {_human(run.trial_flops)}FLOPs at full budget ({per}); rungs at "
            f"{', '.join(f'{r:g}' for r in c.budget.rungs) or 'none'} of it",
            f"total: at most {c.trials} trials x {_human(run.trial_flops)}FLOPs = {_human(run.total_flops)}FLOPs "
            "(rungs stop trials early; a copy of an evaluated candidate costs nothing)"]


def _baseline_lines(run: DryRun) -> list[str]:
    rows = ["baselines (tokens per seed; sampled candidates differ by their FLOPs/token):"]
    for b in run.baselines:
        rows.append(f"  {b.name}: {b.layout}, {_human(b.params)} params, {_human(b.flops_per_token)}FLOPs/token, "
                    f"{_human(b.tokens)} tokens in {b.steps} steps; {b.gpus:g} GPU, {b.cpus:g} CPU per trial")
    return rows


def format_dry_run(run: DryRun) -> str:
    """The dry run as text: the resolved config (JSON, as launch saves it), then the plan."""
    c = run.config
    concurrency = f"concurrent = {c.concurrent}"
    if run.at_once is not None and run.at_once < c.concurrent:
        concurrency += f"; this host holds {run.at_once} at once"
    lines = [
        "resolved config:",
        json.dumps(c.model_dump(mode="json"), indent=2),
        f"study {c.name}: {c.trials} trials; storage {run.storage} (not opened); runs in {run.runs}",
        *_space_lines(run),
        *_budget_lines(run),
        f"runs on: {run.where}, training on {run.device}; {concurrency}",
        *_baseline_lines(run),
        "dry run: nothing was started, trained or written",
    ]
    return "\n".join(lines)

