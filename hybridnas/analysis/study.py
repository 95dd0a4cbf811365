"""A study read back for analysis: its rows, its objectives and their directions.

Everything here only reads. The database is opened read-only (SQLite's ``mode=ro``,
PostgreSQL read-only transactions), so the dashboard and the report can run beside a
driver that is writing, and can never change what it wrote.

Rows come from ``hybridnas_trials`` with the metrics JSON merged in (a metric fills a column
left empty); the heavy JSON columns (spec, loss curves, config) are left out unless asked
for, so a study of 10,000 trials loads in a fraction of a second. The objectives are the
study's own (from the config the driver stored in Optuna's study attributes); a database
without them (rows written by other tools) falls back to val_loss and params, minimised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hybridnas.studies.config import MAXIMIZED, OBJECTIVES
from hybridnas.studies.storage import TRIALS, ResultsStore, normalize_url, with_metrics

__all__ = [
    "DIMENSIONS",
    "METRIC_DIRECTIONS",
    "ObjectiveRef",
    "StudyData",
    "list_studies",
    "load_study",
    "load_trial",
    "objective_value",
    "study_objectives",
]

# the search dimensions a row records: what filters and effect plots are made of
DIMENSIONS = (
    "status", "fusion", "n_attn", "attn_ratio", "placement", "window",
    "merge_op", "merge_norm", "merge_scale", "merge_gate", "merge_out_proj", "attn_fraction",
    "moe", "moe_experts", "moe_top_k", "moe_shared",
)
# every metric that can be plotted, with the direction that is better
METRIC_DIRECTIONS = {name: "maximize" if name in MAXIMIZED else "minimize"
                     for name in (*OBJECTIVES, "flops_spent", "wall_s", "n_attn", "attn_ratio")}
SUMMARY_COLUMNS = tuple(c.name for c in TRIALS.columns if c.name not in ("spec", "loss_curve", "config", "versions"))


@dataclass(frozen=True)
class ObjectiveRef:
    """One objective as stored in a study: ``context`` only for cache and speed figures."""

    name: str
    direction: str = "minimize"
    context: int | None = None

    @property
    def label(self) -> str:
        """``val_loss``, ``cache_bytes@8192``, ``decode_tokens_per_s@32768``: the metric's key."""
        return self.name if self.context is None else f"{self.name}@{self.context}"

    @classmethod
    def parse(cls, label: str) -> ObjectiveRef:
        """``"decode_tokens_per_s@32768"`` or ``"params"`` -> an ObjectiveRef (default direction)."""
        name, _, context = label.partition("@")
        direction = METRIC_DIRECTIONS.get(name, "maximize" if name in MAXIMIZED else "minimize")
        return cls(name, direction, int(context) if context else None)


def objective_value(row: dict, objective: ObjectiveRef) -> float:
    """The objective's value in ``row`` (the metric at its context, else the column); NaN
    when it was not measured."""
    value = None
    if objective.context is not None:
        value = (row.get("metrics") or {}).get(objective.label)
    if value is None:
        value = row.get(objective.name)  # load_study has merged the metrics into the row
    if value is None:
        value = (row.get("metrics") or {}).get(objective.name)
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


@dataclass
class StudyData:
    """One study's rows (dicts, ``hybridnas_trials`` columns plus metrics) and objectives."""

    name: str
    objectives: list[ObjectiveRef]
    rows: list[dict]
    version: str = ""  # ResultsStore.version when read: a reader compares it to know it is stale

    def values(self, objectives: Sequence[ObjectiveRef], rows: Sequence[dict] | None = None) -> np.ndarray:
        """[n_rows, n_objectives] float array, NaN where a value is missing."""
        rows = self.rows if rows is None else rows
        return np.array([[objective_value(r, o) for o in objectives] for r in rows], dtype=float).reshape(
            len(rows), len(objectives))

    def complete(self) -> list[dict]:
        """Complete trials that were trained (a reused result is its twin's point again)."""
        return [r for r in self.rows if r["status"] == "complete" and r.get("reused_from") is None]

    def metric_labels(self) -> list[str]:
        """Every metric some row has a value for: objectives first, then the rest."""
        labels = [o.label for o in self.objectives]
        for name in METRIC_DIRECTIONS:
            if name not in labels and any(r.get(name) is not None for r in self.rows):
                labels.append(name)
        for row in self.rows:
            for key, value in (row.get("metrics") or {}).items():
                if "@" in key and key not in labels and isinstance(value, (int, float)):
                    labels.append(key)
        return labels

    def dimension_values(self, dimension: str) -> list:
        """The distinct non-null values of a search dimension, sorted."""
        found = {r.get(dimension) for r in self.rows} - {None}
        return sorted(found, key=lambda v: (isinstance(v, str), v))

    def filtered(self, filters: dict[str, Iterable]) -> list[dict]:
        """Rows whose value of each filtered dimension is one of the chosen values (an empty
        or missing choice keeps every row)."""
        chosen = {d: set(v) for d, v in filters.items() if v}
        return [r for r in self.rows if all(r.get(d) in values for d, values in chosen.items())]


def list_studies(storage: str) -> list[str]:
    """The studies with rows in the database at ``storage``."""
    store = ResultsStore(storage, readonly=True)
    try:
        return store.studies() if store.has_table() else []
    finally:
        store.dispose()


def load_study(storage: str, study: str, *, full: bool = False) -> StudyData:
    """The rows of ``study`` (every column with ``full``; else without spec, curves, config)
    and its objectives. Raises ``LookupError`` naming the studies there if it is missing."""
    store = ResultsStore(storage, readonly=True)
    try:
        if not store.has_table():
            raise LookupError(f"storage {storage}: no hybridnas studies here (run hybridnas launch first)")
        version = store.version(study)  # before the rows: a write in between makes it stale, not wrong
        rows = store.rows(study, columns=None if full else SUMMARY_COLUMNS)
        if not rows:
            names = store.studies()
            raise LookupError(f"no study {study!r} in {storage} (studies: {', '.join(names) or 'none'})")
    finally:
        store.dispose()
    return StudyData(study, study_objectives(storage, study), [with_metrics(row) for row in rows], version)


def load_trial(storage: str, study: str, trial: int) -> dict | None:
    """One trial's full row (spec, loss curves, config), or None."""
    from sqlalchemy import and_

    store = ResultsStore(storage, readonly=True)
    try:
        rows = store.rows(study, where=and_(TRIALS.c.trial == int(trial)))
    finally:
        store.dispose()
    return rows[0] if rows else None


def study_objectives(storage: str, study: str) -> list[ObjectiveRef]:
    """The study's objectives from the config the driver keeps in Optuna's study attributes;
    val_loss and params, minimised, for rows that no hybridnas driver wrote."""
    try:
        return list(_study_objectives(normalize_url(storage), study))
    except (KeyError, TypeError, ValueError):
        return [ObjectiveRef("val_loss"), ObjectiveRef("params")]


@lru_cache(maxsize=64)
def _study_objectives(storage: str, study: str) -> tuple[ObjectiveRef, ...]:
    """Cached: a study's objectives are fixed when it is created, and opening Optuna's
    storage checks its schema version (a fifth of a second)."""
    import optuna

    attrs = optuna.load_study(study_name=study, storage=storage).user_attrs
    return tuple(ObjectiveRef(o["name"], o.get("direction") or "minimize", o.get("context"))
                 for o in attrs["config"]["objectives"])
