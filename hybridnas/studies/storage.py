"""The hybridnas results tables, beside Optuna's in the same database (SQLAlchemy 2).

Optuna's tables hold the search (parameters, objective values, trial states); ``hybridnas_trials``
holds one queryable row per trial: the candidate's columns (pattern, attention count and
ratio, placement, fusion, merge fields, MoE fields, sizes), every metric, the rung history and
loss curve, status and failure reason, hardware, library versions and wall time. Only the
study driver writes it; the dashboard and ``hybridnas query`` read it.

SQLite runs in WAL mode, so readers see committed rows while the driver writes; PostgreSQL is
reached through psycopg 3 (``postgresql://`` URLs are read as ``postgresql+psycopg://``), with
a bounded connect timeout. A read-only store (``readonly=True``, every read command's) and its
:meth:`ResultsStore.optuna_reader` cannot write: SQLite's ``mode=ro`` (no file, folder, table
or WAL switch is ever created; a reader of a WAL database shares its ``-shm`` file as SQLite
requires) and PostgreSQL's ``default_transaction_read_only``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from hybridnas.errors import UserError
from hybridnas.search_space import ArchSpec
from hybridnas.studies.objectives import REGISTRY

__all__ = ["SCHEMA_VERSION", "STATUSES", "TRIALS", "ResultsStore", "StorageError", "normalize_url", "optuna_reader",
           "spec_columns", "status_counts", "with_metrics"]


class StorageError(UserError):
    """A storage URL that cannot be used; the message is one line."""


metadata = MetaData()

TRIALS = Table(
    "hybridnas_trials",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study", String(200), nullable=False, index=True),
    # Optuna's id of the study (its studies.study_id), for joins with Optuna's tables; a new
    # study of a name removes the rows of its predecessor first (ResultsStore.forget)
    Column("optuna_study_id", Integer, index=True),
    Column("trial", Integer, nullable=False),  # Optuna's trial number
    Column("status", String(16), nullable=False),  # complete | pruned | fail | running | copy
    Column("failure", Text),  # why a trial failed or was not trained
    Column("reused_from", Integer),  # an identical candidate's trial, whose result this reuses
    Column("lr", Float),  # the peak learning rate it trained at: trainer.lr, or the one its lr_grid sweep chose
    Column("baseline", String(32)),  # the baseline this trial was enqueued as, if any
    # the candidate
    Column("pattern", String(2000), nullable=False),
    Column("spec_key", String(64), nullable=False, index=True),  # ArchSpec.key, as Optuna's spec_key attribute
    Column("spec", JSON, nullable=False),
    Column("d_model", Integer),
    Column("n_layers", Integer),
    Column("n_mixers", Integer),
    Column("n_attn", Integer),
    Column("attn_ratio", Float),
    Column("placement", String(32)),
    Column("fusion", String(16)),  # inter | intra | none (pure attention or pure Mamba-2)
    Column("window", Integer),  # keys per query of W layers, if any
    Column("merge_op", String(32)),  # intra-layer merge fields; null for inter-layer layouts
    Column("merge_norm", String(16)),
    Column("merge_scale", String(16)),
    Column("merge_gate", String(16)),
    Column("merge_out_proj", String(16)),
    Column("attn_fraction", Float),
    Column("moe", Boolean),
    Column("moe_experts", Integer),
    Column("moe_top_k", Integer),
    Column("moe_shared", Integer),
    # the objectives' columns (studies/objectives.py): each holds the value at the study's first context
    *(Column(m.column, BigInteger if m.column_type == "bigint" else Float) for m in REGISTRY.values()),
    Column("metrics", JSON),  # every objective and measured figure, by name
    Column("budget_flops", Float),
    Column("flops_spent", Float),
    Column("tokens", BigInteger),
    Column("rungs", JSON),  # [{"rung", "tokens", "val_loss"}, ...]
    Column("loss_curve", JSON),  # {"train": [...], "val": [...]}
    # the run
    Column("hardware", String(200)),
    Column("versions", JSON),
    Column("wall_s", Float),
    Column("config", JSON),  # the resolved trainer config of the run
    Column("updated_at", DateTime),
    UniqueConstraint("study", "trial", name="uq_hybridnas_trials_study_trial"),
)


# The table's schema version, kept in hybridnas_schema (one row). create() upgrades an older
# table in place, one step per version; a newer one is refused (an older hybridnas would
# write it wrong).
#   1  (no hybridnas_schema table) spec_key held ArchSpec.short_id; a never-written seed column
#   2  spec_key holds ArchSpec.key, the same as Optuna's spec_key trial attribute; no seed
#   3  optuna_study_id: each row names its Optuna study by id, not by name alone
SCHEMA_VERSION = 3
SCHEMA = Table("hybridnas_schema", metadata, Column("version", Integer, nullable=False))


def normalize_url(url: str) -> str:
    """The SQLAlchemy URL for ``url``: psycopg 3 for PostgreSQL; a clear error otherwise."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage {url!r}: not a database URL (e.g. sqlite:///hybridnas.db)") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"storage {url!r}: use sqlite:///path.db or postgresql://user@host/db")
    return parsed.render_as_string(hide_password=False)


# JSON columns (metrics, rungs, curves) are decoded by orjson: a few times faster than json
# for the 10,000 rows of a large study
_loads = orjson.loads


def _engine(url: str, readonly: bool = False) -> tuple[Engine, Any]:
    """The engine for ``url`` and, for a read-only SQLite file, its connection factory (which
    Optuna's reader shares). Read-only never creates anything: a missing file is an error."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        creator = None
        if readonly and path and path != ":memory:":
            file = Path(path).expanduser()
            if not file.is_file():
                raise StorageError(f"storage {url}: no such file {file}" if not file.exists()
                                   else f"storage {url}: {file} is not a file")
            # SQLite's own read-only mode: a reader can never change the file (no WAL switch either)
            uri = file.resolve().as_uri() + "?mode=ro"
            creator = partial(_sqlite_connect_readonly, uri)
            engine = create_engine("sqlite://", creator=creator, json_deserializer=_loads)
        else:
            if path and path != ":memory:":
                try:
                    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(f"storage {url}: its folder cannot be created ({exc.strerror or exc})") from None
            engine = create_engine(url, connect_args={"timeout": 60}, json_deserializer=_loads)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            if not readonly:  # WAL: readers see committed rows while the driver writes; it stays with the file
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        return engine, creator
    if readonly:  # the URL's own options (a search_path, say) kept
        url = _readonly_postgres_url(url)
    try:
        # a bounded connect: a closed port or an unreachable host fails in seconds, not minutes
        return create_engine(url, pool_pre_ping=True, json_deserializer=_loads,
                             connect_args={"connect_timeout": CONNECT_TIMEOUT_S}), None
    except ImportError as exc:  # the PostgreSQL driver
        raise StorageError(
            f"storage {parsed.render_as_string()}: needs psycopg 3 (pip install psycopg): {exc}"
        ) from None


CONNECT_TIMEOUT_S = 10


def _readonly_postgres_url(url: str) -> str:
    """``url`` with every transaction read-only (``default_transaction_read_only``)."""
    parsed = make_url(url)
    options = f"{parsed.query.get('options', '')} -c default_transaction_read_only=on".strip()
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


def _add_missing_columns(conn) -> None:
    from sqlalchemy import inspect, text

    present = {c["name"] for c in inspect(conn).get_columns(TRIALS.name)}
    for column in TRIALS.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE {TRIALS.name} ADD COLUMN "{column.name}" {kind}'))


def _upgrade_1_to_2(conn) -> None:
    """spec_key becomes ArchSpec.key (it held short_id), computed from each row's spec; the
    seed column, never written, goes."""
    from sqlalchemy import inspect, text

    for row_id, spec in conn.execute(select(TRIALS.c.id, TRIALS.c.spec)).all():
        data = orjson.loads(spec) if isinstance(spec, str | bytes) else spec
        conn.execute(TRIALS.update().where(TRIALS.c.id == row_id).values(spec_key=ArchSpec.from_dict(data).key))
    if "seed" in {c["name"] for c in inspect(conn).get_columns(TRIALS.name)}:
        conn.execute(text(f'ALTER TABLE {TRIALS.name} DROP COLUMN "seed"'))


def _upgrade_2_to_3(conn) -> None:
    """optuna_study_id from Optuna's studies table, by name, where Optuna's tables are here.
    A row whose study Optuna no longer has keeps None: an orphan, left for ``forget`` (a new
    study of its name removes it) rather than deleted by an upgrade."""
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("studies"):
        return
    conn.execute(text(f"UPDATE {TRIALS.name} SET optuna_study_id = (SELECT studies.study_id FROM studies "
                      f"WHERE studies.study_name = {TRIALS.name}.study) WHERE optuna_study_id IS NULL"))


_UPGRADES = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3}  # from version -> the step to the next


def _sqlite_connect_readonly(uri: str):
    import sqlite3

    return sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)


class ResultsStore:
    """Read and write ``hybridnas_trials`` in the database at ``url``; ``readonly`` opens it
    so that nothing can be written (SQLite's read-only mode, PostgreSQL read-only transactions)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = normalize_url(url)
        self.given_url = url  # as the user wrote it, for messages
        self.readonly = readonly
        self.engine, self._creator = _engine(self.url, readonly)
        self._columns: list | None = None

    def optuna_reader(self):
        """Optuna's storage in the same database, opened as this store is (read-only: SQLite's
        read-only mode, or read-only transactions), creating no table; None where Optuna's
        tables are absent (a database that only holds ``hybridnas_trials``). A read-write
        store returns a plain RDBStorage of its URL."""
        import optuna
        from sqlalchemy import inspect

        if not self.readonly:
            return optuna.storages.RDBStorage(self.url)
        try:
            tables = set(inspect(self.engine).get_table_names())
        except DBAPIError as exc:
            raise self._unusable(exc, "read") from None
        if not {"studies", "version_info", "alembic_version"} <= tables:
            return None
        if self._creator is not None:  # SQLite: the same read-only connections
            return optuna.storages.RDBStorage("sqlite://", engine_kwargs={"creator": self._creator},
                                              skip_table_creation=True)
        return optuna.storages.RDBStorage(_readonly_postgres_url(self.url), skip_table_creation=True,
                                          engine_kwargs={"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}})

    def _unusable(self, exc: DBAPIError, verb: str) -> StorageError:
        """The driver's error as one line: ``storage URL: cannot be read (OperationalError: ...)``."""
        cause = exc.orig if exc.orig is not None else exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return StorageError(f"storage {self.given_url}: cannot be {verb} ({type(cause).__name__}: {first})")

    def create(self) -> None:
        """Create the tables, or upgrade those an older hybridnas wrote to SCHEMA_VERSION, so
        that a study can be resumed across versions. Raises StorageError for a table written
        by a newer hybridnas."""
        try:
            self._create()
        except DBAPIError as exc:  # a refused connection, not a database, a read-only file or folder
            raise self._unusable(exc, "written") from None
        self._columns = None

    def _create(self) -> None:
        from sqlalchemy import inspect

        with self.engine.begin() as conn:
            existed = inspect(conn).has_table(TRIALS.name)
            metadata.create_all(conn)
            version = conn.execute(select(SCHEMA.c.version)).scalar()
            if version is None:
                version = 1 if existed else SCHEMA_VERSION
                conn.execute(SCHEMA.insert().values(version=version))
            if version > SCHEMA_VERSION:
                raise StorageError(f"storage {self.given_url}: its results table has schema version {version}, "
                                   f"newer than this hybridnas's {SCHEMA_VERSION}: upgrade hybridnas")
            _add_missing_columns(conn)  # columns added within a version are nullable
            for step in range(version, SCHEMA_VERSION):
                _UPGRADES[step](conn)
            conn.execute(SCHEMA.update().values(version=SCHEMA_VERSION))

    def schema_version(self) -> int | None:
        """The results table's schema version; None when there is no table."""
        if not self.has_table():
            return None
        from sqlalchemy import inspect

        if not inspect(self.engine).has_table(SCHEMA.name):
            return 1
        with self.engine.connect() as conn:
            return conn.execute(select(SCHEMA.c.version)).scalar() or 1

    def row(self, study: str, trial: int) -> dict[str, Any] | None:
        """The row of one trial, or None (one indexed read, whatever the study's size)."""
        rows = self.rows(study, where=TRIALS.c.trial == int(trial))
        return rows[0] if rows else None

    def upsert(self, row: Mapping[str, Any]) -> None:
        """Insert or update the row of (study, trial): a trial's row is written when it
        starts, at each rung and when it ends."""
        values = {**row, "updated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None)}
        key = (TRIALS.c.study == values["study"]) & (TRIALS.c.trial == values["trial"])
        with self.engine.begin() as conn:
            if conn.execute(select(TRIALS.c.id).where(key)).first() is None:
                conn.execute(TRIALS.insert().values(**values))
            else:
                conn.execute(TRIALS.update().where(key).values(**values))

    def rows(self, study: str, where=None, order_by: Sequence = (), columns: Sequence[str] | None = None,
             *, copies: bool = True) -> list[dict[str, Any]]:
        """Rows of ``study`` (optionally filtered by a SQLAlchemy expression), as dicts: every
        column, or only ``columns``. A column an older table lacks reads as None. With
        ``copies=False``, each candidate once: the rows of trials that were a copy of an
        evaluated candidate (``reused_from`` set) are left out, as readers show a study."""
        wanted = [c for c in TRIALS.columns if columns is None or c.name in columns]
        present = self._present_columns()
        query = select(*[c for c in wanted if c.name in present]).where(TRIALS.c.study == study)
        if where is not None:
            query = query.where(where)
        if not copies and "reused_from" in present:
            query = query.where(TRIALS.c.reused_from.is_(None))
        query = query.order_by(*order_by, TRIALS.c.trial)
        missing = dict.fromkeys(c.name for c in wanted if c.name not in present)
        with self.engine.connect() as conn:
            result = conn.execute(query)
            names = list(result.keys())
            return [{**missing, **dict(zip(names, r, strict=True))} for r in result]  # a row has every key

    def forget(self, study: str) -> int:
        """Delete every row of ``study``; returns how many went. A new Optuna study of a name
        that rows still carry (one deleted with ``optuna delete-study``) starts with this:
        SQLite gives a new study the id of a deleted one, so the id alone cannot tell them apart."""
        with self.engine.begin() as conn:
            return int(conn.execute(TRIALS.delete().where(TRIALS.c.study == study)).rowcount or 0)

    def version(self, study: str) -> str:
        """A cheap stamp that changes whenever the rows of ``study`` do: their number, the
        newest id and the newest write (every upsert sets ``updated_at``). Readers keep what
        they read until it changes instead of reading 10,000 rows again."""
        query = select(func.count(), func.max(TRIALS.c.id), func.max(TRIALS.c.updated_at)).where(
            TRIALS.c.study == study)
        with self.engine.connect() as conn:
            count, newest, written = conn.execute(query).one()
        return f"{count}:{newest}:{written}"

    def studies(self) -> list[str]:
        """The names of the studies with rows here, sorted."""
        query = select(TRIALS.c.study).distinct().order_by(TRIALS.c.study)
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(query)]

    def _present_columns(self) -> set[str]:
        if self._columns is None:
            from sqlalchemy import inspect

            self._columns = [c["name"] for c in inspect(self.engine).get_columns(TRIALS.name)]
        return set(self._columns)

    def has_table(self) -> bool:
        from sqlalchemy import inspect

        try:
            return inspect(self.engine).has_table(TRIALS.name)
        except DBAPIError as exc:  # the first read: a refused connection, not a database, a locked file
            raise self._unusable(exc, "read") from None

    def dispose(self) -> None:
        self.engine.dispose()


def optuna_reader(url: str):
    """Optuna's storage at ``url``, read-only (:meth:`ResultsStore.optuna_reader`), for a reader
    that needs Optuna's tables only; None where they are absent. The store opened to find them
    is closed: the reader keeps its own engine."""
    store = ResultsStore(url, readonly=True)
    try:
        return store.optuna_reader()
    finally:
        store.dispose()


# Optuna's states as the table spells them, and "copy": a suggestion identical to an evaluated
# candidate, whose row carries that candidate's result (reused_from) and which Optuna keeps as
# a PRUNED trial not counted toward the study's trials (so best_trials lists each candidate once)
STATUSES = ("complete", "pruned", "fail", "running", "copy")


def status_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{status: number of rows} for every status in STATUSES."""
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def with_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with each metric in its ``metrics`` JSON copied to the top level where the row
    has no value of that name (a column left empty, or a metric without a column)."""
    row.update({k: v for k, v in (row.get("metrics") or {}).items() if row.get(k) is None})
    return row


def spec_columns(spec: ArchSpec, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The queryable columns of a candidate. ``params`` are the trial's sampled parameters,
    which name what the spec alone does not keep (e.g. the placement rule)."""
    mixers = spec.mixers
    n_attn = spec.n_attention_mixers
    has_intra = "H" in mixers
    fusion = "intra" if has_intra else ("inter" if 0 < n_attn < len(mixers) else "none")
    moe = "E" in spec.pattern
    h = spec.hybrid
    return {
        "pattern": spec.pattern,
        "spec_key": spec.key,
        "spec": spec.to_dict(),
        "d_model": spec.d_model,
        "n_layers": len(spec.pattern),
        "n_mixers": len(mixers),
        "n_attn": n_attn,
        "attn_ratio": n_attn / len(mixers) if mixers else None,
        "placement": (params or {}).get("placement"),
        "fusion": fusion,
        "window": spec.attn.window if "W" in mixers else None,
        "merge_op": h.merge if has_intra else None,
        "merge_norm": h.norm if has_intra else None,
        "merge_scale": h.scale if has_intra else None,
        "merge_gate": h.gate if has_intra else None,
        "merge_out_proj": h.out_proj if has_intra else None,
        "attn_fraction": h.attn_fraction if has_intra else None,
        "moe": moe,
        "moe_experts": spec.moe.n_experts if moe else None,
        "moe_top_k": spec.moe.top_k if moe else None,
        "moe_shared": spec.moe.n_shared if moe else None,
    }
