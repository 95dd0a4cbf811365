"""Reading a study back: ``hybridnas studies`` and ``hybridnas query``.

Filters are parsed by :mod:`hybridnas.studies.where` into SQLAlchemy expressions over the
columns of ``hybridnas_trials``; no text is ever passed to the database as SQL.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

import optuna

from hybridnas.pareto import pareto_front
from hybridnas.studies.objectives import ObjectiveRef
from hybridnas.studies.storage import TRIALS, ResultsStore, StorageError, status_counts, with_metrics
from hybridnas.studies.where import QueryError, parse_where

__all__ = ["QUERY_COLUMNS", "list_studies", "query_study", "format_rows", "QueryError"]

# every scalar column; JSON ones (spec, metrics, rungs, curves) are shown only by --format json
QUERY_COLUMNS = {c.name: c for c in TRIALS.columns if c.name not in ("id", "study", "spec", "versions", "config")
                 and c.type.__class__.__name__ != "JSON"}
TABLE_COLUMNS = ("trial", "status", "pattern", "fusion", "merge_op", "n_attn", "params", "val_loss")


def _open(storage: str) -> ResultsStore:
    """The study database, read-only: a reader never creates a file, a table or a WAL."""
    store = ResultsStore(storage, readonly=True)
    if not store.has_table():
        raise StorageError(f"storage {storage}: no hybridnas studies here (run hybridnas launch first)")
    return store


def list_studies(storage: str) -> list[dict[str, Any]]:
    """[{study, trials, complete, pruned, fail, running, copy, best_val_loss}] for every
    study; ``trials`` counts Optuna's trials (copies and infeasible suggestions included)."""
    store = _open(storage)
    reader = store.optuna_reader()
    summaries = optuna.get_all_study_summaries(reader, include_best_trial=False) if reader is not None else []
    out = []
    for summary in summaries:
        rows = store.rows(summary.study_name)
        counts = status_counts(rows)
        losses = [r["val_loss"] for r in rows if r["status"] == "complete" and r["val_loss"] is not None]
        out.append({"study": summary.study_name, "trials": summary.n_trials, **counts,
                    "best_val_loss": min(losses) if losses else None})
    store.dispose()
    return out


def query_study(storage: str, study: str, *, where: str | None = None, pareto: list[str] | None = None,
                sort: str | None = None, copies: bool = False) -> list[dict[str, Any]]:
    """Rows of ``study`` that pass ``where``, each candidate once (with ``copies``, also the
    trials that were a copy of an evaluated candidate); with ``pareto``, only the first front
    on those columns (val_loss minimised, tokens/s maximised, costs minimised); sorted by
    ``sort`` (a column, ``-column`` for descending)."""
    store = _open(storage)
    try:
        known = _optuna_studies(store)
        if study not in known:
            raise QueryError(f"no study {study!r} in {storage} (studies: {', '.join(sorted(known)) or 'none'})")
        condition = parse_where(where, QUERY_COLUMNS) if where else None
        order = []
        if sort:
            name = sort.lstrip("-")
            if name not in QUERY_COLUMNS:
                raise QueryError(f"--sort: unknown column {name!r} (columns: {', '.join(QUERY_COLUMNS)})")
            order = [QUERY_COLUMNS[name].desc() if sort.startswith("-") else QUERY_COLUMNS[name]]
        # with pareto: the front from the scalar columns and metrics (decoding every row's spec,
        # curves and config was most of a 10,000-row query), then the front's full rows
        light = [c.name for c in TRIALS.columns if c.name == "metrics" or c.type.__class__.__name__ != "JSON"]
        rows = [with_metrics(row) for row in store.rows(study, where=condition, order_by=order,
                                                        columns=light if pareto else None, copies=copies)]
        if pareto:
            front = [r["trial"] for r in _first_front(rows, pareto)]
            full = {r["trial"]: with_metrics(r) for start in range(0, len(front), 500)
                    for r in store.rows(study, where=TRIALS.c.trial.in_(front[start:start + 500]))}
            rows = [full[t] for t in front if t in full]  # in the first read's order
    finally:
        store.dispose()
    return rows


def _optuna_studies(store: ResultsStore) -> set[str]:
    """The names of the Optuna studies in the store's database, read from Optuna's ``studies``
    table: ``optuna.get_all_study_summaries`` imports and runs Alembic's schema check first,
    which was a third of a 10,000-row ``hybridnas query``."""
    from sqlalchemy import column, inspect, select, table

    if not inspect(store.engine).has_table("studies"):
        return set()
    with store.engine.connect() as conn:
        return set(conn.scalars(select(column("study_name")).select_from(table("studies"))))


def _first_front(rows: list[dict], objectives: list[str]) -> list[dict]:
    for name in objectives:
        if name not in QUERY_COLUMNS and not any(name in r for r in rows):
            raise QueryError(
                f"--pareto: unknown objective {name!r} (e.g. val_loss, params, cache_bytes, decode_tokens_per_s)"
            )
        column = QUERY_COLUMNS.get(name)
        if column is not None and column.type.python_type not in (int, float):
            raise QueryError(f"--pareto: {name!r} is not a number; a front needs numeric columns "
                             "(e.g. val_loss, params, cache_bytes)")
    refs = [ObjectiveRef.parse(name) for name in objectives]  # a registered objective's direction, else minimised
    candidates = [r for r in rows if r["status"] == "complete" and all(r.get(n) is not None for n in objectives)]
    if not candidates:
        return []
    points = [[float(r[n]) for n in objectives] for r in candidates]
    keep = set(pareto_front(points, [ref.direction for ref in refs]).tolist())
    return [r for i, r in enumerate(candidates) if i in keep]


def format_rows(rows: list[dict], fmt: str, extra: Sequence[str] = ()) -> str:
    """``json``: a list of row objects (every column and metric); ``csv`` and ``table``: the
    main columns plus ``extra`` (the objectives asked for)."""
    if fmt == "json":
        return json.dumps([{k: _plain(v) for k, v in r.items() if k != "id"} for r in rows], indent=2)
    columns = list(dict.fromkeys([*TABLE_COLUMNS, *extra]))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: r.get(c) for c in columns} for r in rows)
        return buffer.getvalue()
    raise ValueError(f"format {fmt!r}: expected table, csv or json")


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value
