"""The objective registry: the one home of every objective a study can optimise.

Each :class:`Metric` says what an objective is called, which way is better, whether it is
taken at a context length, where its value comes from (:data:`SOURCES`) and how the results
table stores it. Everything else derives from :data:`REGISTRY`: the names a study file may
list (``studies/config.py``), the metric columns of ``hybridnas_trials``
(``studies/storage.py``), what the driver computes, asks a worker to measure and tells
Optuna (``studies/driver.py``, ``studies/protocol.py``), the fronts of ``launch`` and
``query`` and the objectives the dashboard and report read (``analysis/study.py``).

Adding an objective: one :class:`Metric` here, and the code that measures it (a cost-model
field for ``static``, a proxy for ``recall`` / ``long_context``, a speed figure for ``speed``).

A study's objective at its context is an :class:`ObjectiveRef`. Its value in a row is found
under :attr:`ObjectiveRef.metric_key` in the row's ``metrics`` JSON (``name@context`` for an
objective taken at a context, else ``name``); the table column of the same name holds the
value at the study's first context, so ``--where 'cache_bytes < 1e6'`` reads it directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from hybridnas.search_space import ArchSpec

__all__ = [
    "DEFAULT_CONTEXT",
    "Direction",
    "Metric",
    "ObjectiveRef",
    "REGISTRY",
    "SOURCES",
    "Source",
    "default_direction",
    "names",
    "metric_columns",
    "objective_values",
    "static_values",
]

Direction = Literal["minimize", "maximize"]
# where a value comes from:
#   static        the analytic cost model, before training (hybridnas.search_space.cost)
#   training      the FLOP-budgeted training run (hybridnas.trainer)
#   speed         measured on the trial's GPU after training (hybridnas.proxies.speed)
#   recall        a shrunk copy trained on a synthetic task (hybridnas.proxies.recall)
#   long_context  a probe of the trained model (hybridnas.proxies.longctx)
Source = Literal["static", "training", "speed", "recall", "long_context"]
SOURCES: tuple[Source, ...] = ("static", "training", "speed", "recall", "long_context")
DEFAULT_CONTEXT = 8192  # tokens, for an objective taken at a context when the study names none


@dataclass(frozen=True)
class Metric:
    """One registered objective.

    ``column_type`` is the SQL type of its column in ``hybridnas_trials`` ("float" or
    "bigint"). ``cost_field`` (static only) is the attribute of the cost model's totals
    (:func:`hybridnas.search_space.cost`) that holds it. ``task`` (recall only) is the synthetic
    task it scores, None for the "recall" summary (the mean over the study's ``[recall] tasks``). ``factor``
    (``val_loss_*x`` only) is the multiple of the training length it is measured at."""

    name: str
    direction: Direction
    source: Source
    takes_context: bool = False
    column_type: Literal["float", "bigint"] = "float"
    cost_field: str | None = None
    task: str | None = None
    factor: int | None = None
    description: str = ""

    @property
    def column(self) -> str:
        """Its column in ``hybridnas_trials``."""
        return self.name


def _recall(task: str, description: str) -> Metric:
    return Metric(task, "maximize", "recall", task=task, description=description)


REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric("val_loss", "minimize", "training", description="validation loss (nats/token) at the full budget"),
    Metric("params", "minimize", "static", column_type="bigint", cost_field="params", description="parameters"),
    Metric("params_active", "minimize", "static", column_type="bigint", cost_field="params_active",
           description="parameters active per token (MoE)"),
    Metric("train_flops", "minimize", "static", cost_field="train_flops_per_token",
           description="training FLOPs per token"),
    Metric("cache_bytes", "minimize", "static", takes_context=True, column_type="bigint", cost_field="cache_bytes",
           description="inference cache per sequence at the context"),
    Metric("decode_tokens_per_s", "maximize", "speed", takes_context=True, description="decode throughput"),
    Metric("prefill_tokens_per_s", "maximize", "speed", takes_context=True, description="prefill throughput"),
    _recall("mqar", "multi-query associative recall (Zoology)"),
    _recall("in_context_recall", "MAD in-context recall"),
    _recall("fuzzy_recall", "MAD fuzzy recall"),
    _recall("noisy_recall", "MAD noisy recall"),
    _recall("selective_copying", "MAD selective copying"),
    _recall("compression", "MAD compression"),
    _recall("memorization", "MAD memorization"),
    Metric("recall", "maximize", "recall", description="mean accuracy over the study's [recall] tasks"),
    Metric("passkey", "maximize", "long_context", description="passkey retrieval at 0.5x to 2x the training length"),
    Metric("val_loss_2x", "minimize", "long_context", factor=2,
           description="validation loss at 2x the training length"),
    Metric("val_loss_4x", "minimize", "long_context", factor=4,
           description="validation loss at 4x the training length"),
)}


def names(source: Source | None = None) -> tuple[str, ...]:
    """Registered objective names, in registry order; only those of ``source`` if given."""
    return tuple(n for n, m in REGISTRY.items() if source is None or m.source == source)


def default_direction(name: str) -> Direction:
    """The better direction of a registered objective; "minimize" for any other metric."""
    metric = REGISTRY.get(name)
    return metric.direction if metric is not None else "minimize"


@dataclass(frozen=True, init=False)
class ObjectiveRef:
    """One objective of a study as read and compared: a name, its direction (the registry's
    when None is given) and, for an objective taken at a context, the context in tokens.

    Also stands for any other plotted metric (``flops_spent``, a ``metrics`` key): then
    :attr:`metric` is None and the direction defaults to "minimize"."""

    name: str
    direction: Direction
    context: int | None

    def __init__(self, name: str, direction: Direction | None = None, context: int | None = None) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "direction", direction or default_direction(name))
        object.__setattr__(self, "context", context)

    @property
    def metric(self) -> Metric | None:
        """Its registry entry; None for a metric that is not a registered objective."""
        return REGISTRY.get(self.name)

    @property
    def label(self) -> str:
        """A short unique name, ``val_loss`` or ``decode_tokens_per_s@32768``; also its key
        in a row's ``metrics``."""
        return self.name if self.context is None else f"{self.name}@{self.context}"

    @property
    def metric_key(self) -> str:
        """Where its value lives in a row's ``metrics`` JSON (and a worker's report)."""
        return self.label

    @property
    def sign(self) -> int:
        """+1 to minimise, -1 to maximise: multiplied in, every objective is minimised."""
        return 1 if self.direction == "minimize" else -1

    @classmethod
    def parse(cls, label: str) -> ObjectiveRef:
        """``"decode_tokens_per_s@32768"`` or ``"params"`` -> an ObjectiveRef (default direction)."""
        name, _, context = label.partition("@")
        return cls(name, None, int(context) if context else None)

    def value(self, row: Mapping[str, Any]) -> float:
        """Its value in ``row`` (a ``hybridnas_trials`` row): the metric at its context, else
        the column, else the metric by name (rows written before metrics carried contexts);
        NaN when it was not measured."""
        metrics = row.get("metrics") or {}
        value = metrics.get(self.metric_key) if self.context is not None else None
        if value is None:
            value = row.get(self.name)
        if value is None:
            value = metrics.get(self.name)
        try:
            return float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            return math.nan


def static_values(spec: ArchSpec, refs: tuple[ObjectiveRef, ...] | list[ObjectiveRef], seq_len: int
                  ) -> dict[str, float]:
    """The static objectives among ``refs`` of a candidate, by metric key, from the cost
    model: at the objective's context where it takes one, else at the training ``seq_len``."""
    from hybridnas.search_space import cost

    out: dict[str, float] = {}
    totals = {}  # context -> the cost model's totals there: one evaluation per context
    for ref in refs:
        metric = ref.metric
        if metric is None or metric.source != "static" or metric.cost_field is None:
            continue
        context = ref.context or seq_len
        if context not in totals:
            totals[context] = cost(spec, seq_len=context).total
        out[ref.metric_key] = getattr(totals[context], metric.cost_field)
    return out


def objective_values(refs: tuple[ObjectiveRef, ...] | list[ObjectiveRef], metrics: Mapping[str, Any]
                     ) -> list[float] | None:
    """The values Optuna is told, in objective order, from ``metrics`` (by metric key);
    None if one is missing or NaN."""
    values = [metrics.get(ref.metric_key) for ref in refs]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    return [float(v) for v in values if v is not None]  # all are not None (checked above): narrows the type


def metric_columns(refs: tuple[ObjectiveRef, ...] | list[ObjectiveRef], metrics: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The table columns of the objectives measured in ``metrics``: each column holds the
    value at the study's first context of that objective."""
    out: dict[str, Any] = {}
    for ref in refs:
        if ref.metric is not None and ref.metric.column not in out and metrics.get(ref.metric_key) is not None:
            out[ref.metric.column] = metrics[ref.metric_key]
    for name, metric in REGISTRY.items():  # measured without being an objective (e.g. recall tasks)
        if metric.column not in out and not metric.takes_context and metrics.get(name) is not None:
            out[metric.column] = metrics[name]
    return out
