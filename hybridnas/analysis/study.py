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

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hybridnas.errors import UserError
from hybridnas.studies.objectives import ObjectiveRef, default_direction, names
from hybridnas.studies.storage import TRIALS, ResultsStore, normalize_url, optuna_reader, with_metrics

__all__ = [
    "DIMENSIONS",
    "METRIC_DIRECTIONS",
    "ObjectiveRef",
    "StudyData",
    "StudyNotFound",
    "list_studies",
    "load_study",
    "load_trial",
    "stored_config",
    "study_objectives",
]

# the search dimensions a row records: what filters and effect plots are made of
DIMENSIONS = (
    "status", "fusion", "n_attn", "attn_ratio", "placement", "window",
    "merge_op", "merge_norm", "merge_scale", "merge_gate", "merge_out_proj", "attn_fraction",
    "moe", "moe_experts", "moe_top_k", "moe_shared",
)
# every metric that can be plotted, with the direction that is better
METRIC_DIRECTIONS = {
    name: default_direction(name) for name in (*names(), "flops_spent", "wall_s", "n_attn", "attn_ratio")
}
SUMMARY_COLUMNS = tuple(c.name for c in TRIALS.columns if c.name not in ("spec", "loss_curve", "config", "versions"))


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
        return np.array([[o.value(r) for o in objectives] for r in rows], dtype=float).reshape(
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


class StudyNotFound(UserError, LookupError):
    """No such study (or no hybridnas table) in the database; the message names the studies there."""


def list_studies(storage: str) -> list[str]:
    """The studies with rows in the database at ``storage``."""
    store = ResultsStore(storage, readonly=True)
    try:
        return store.studies() if store.has_table() else []
    finally:
        store.dispose()


def load_study(storage: str, study: str, *, full: bool = False, copies: bool = False) -> StudyData:
    """The rows of ``study`` (every column with ``full``; else without spec, curves, config),
    each candidate once (with ``copies``, also the trials that copied an evaluated one), and
    its objectives. Raises :class:`StudyNotFound` (a LookupError) naming the studies there if
    it is missing."""
    store = ResultsStore(storage, readonly=True)
    try:
        if not store.has_table():
            raise StudyNotFound(f"storage {storage}: no hybridnas studies here (run hybridnas launch first)")
        version = store.version(study)  # before the rows: a write in between makes it stale, not wrong
        rows = store.rows(study, columns=None if full else SUMMARY_COLUMNS, copies=copies)
        if not rows:
            names = store.studies()
            raise StudyNotFound(f"no study {study!r} in {storage} (studies: {', '.join(names) or 'none'})")
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
        objectives = (stored_config(storage, study) or {})["objectives"]
        return [ObjectiveRef(o["name"], o.get("direction"), o.get("context")) for o in objectives]
    except (KeyError, TypeError, ValueError):
        return [ObjectiveRef("val_loss"), ObjectiveRef("params")]


def stored_config(storage: str, study: str) -> dict | None:
    """The study's resolved config as the driver saved it (``StudyConfig.model_dump``) in
    Optuna's study attributes; None for a study no hybridnas driver created."""
    try:
        text = _stored_config(normalize_url(storage), study)
    except KeyError:  # no such Optuna study (not cached: it may be created later)
        return None
    return json.loads(text) if text is not None else None


@lru_cache(maxsize=64)
def _stored_config(storage: str, study: str) -> str | None:
    """Cached (as text, so callers get their own copy): a study's config is fixed when it is
    created, and opening Optuna's storage checks its schema version (a fifth of a second)."""
    import optuna

    reader = optuna_reader(storage)
    if reader is None:  # a database holding hybridnas_trials only
        return None
    config = optuna.load_study(study_name=study, storage=reader).user_attrs.get("config")
    return json.dumps(config) if config is not None else None
