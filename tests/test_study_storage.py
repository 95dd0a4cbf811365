"""The hybridnas results table on real SQLite and PostgreSQL databases."""

import sqlite3

import pytest

from hybridnas import ArchSpec
from hybridnas.search_space import layout
from hybridnas.studies.storage import TRIALS, ResultsStore, StorageError, normalize_url, spec_columns

INTRA = ArchSpec.from_pattern(layout(6, 2, fusion="intra"), d_model=128, hybrid={"merge": "concat"})
INTER = ArchSpec.from_pattern(layout(6, 2), d_model=128)


def row(trial, spec, status="complete", **more):
    return {"study": "s", "trial": trial, "status": status, **spec_columns(spec, {"placement": "even"}), **more}


def test_rows_round_trip_and_upsert(database_url):
    store = ResultsStore(database_url)
    store.create()
    store.create()  # idempotent: a resumed study calls it again
    store.upsert(row(0, INTRA, status="running"))
    store.upsert(row(1, INTER, val_loss=3.25, metrics={"val_loss": 3.25}, rungs=[{"rung": 0, "val_loss": 4.0}]))
    store.upsert(row(0, INTRA, val_loss=3.5, loss_curve={"val": [{"tokens": 0, "val_loss": 9.0}]}))  # an update
    rows = store.rows("s")
    assert [(r["trial"], r["status"]) for r in rows] == [(0, "complete"), (1, "complete")]
    assert rows[0]["fusion"] == "intra" and rows[0]["merge_op"] == "concat" and rows[0]["n_attn"] == 2
    assert rows[0]["loss_curve"] == {"val": [{"tokens": 0, "val_loss": 9.0}]}
    assert rows[1]["fusion"] == "inter" and rows[1]["merge_op"] is None and rows[1]["rungs"][0]["val_loss"] == 4.0
    assert ArchSpec.from_dict(rows[0]["spec"]) == INTRA
    only_inter = store.rows("s", where=TRIALS.c.fusion == "inter")
    assert [r["trial"] for r in only_inter] == [1]
    assert store.rows("other") == []
    store.dispose()


def test_spec_columns_describe_the_candidate():
    pure = spec_columns(ArchSpec.from_pattern("M-M-", d_model=64))
    assert (pure["fusion"], pure["n_attn"], pure["attn_ratio"], pure["moe"]) == ("none", 0, 0.0, False)
    moe = spec_columns(ArchSpec.from_pattern("M*ME", d_model=64))
    assert moe["moe"] is True and moe["moe_experts"] == 8 and moe["window"] is None
    assert spec_columns(ArchSpec.from_pattern("MWM-", d_model=64))["window"] == 512


def test_sqlite_runs_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "study.db"  # the parent directory is created
    store = ResultsStore(f"sqlite:///{path}")
    store.create()
    store.dispose()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("url", ["nonsense", "mysql://u@h/db", "http://example.com"])
def test_unusable_urls_are_one_line_errors(url):
    with pytest.raises(StorageError) as info:
        normalize_url(url)
    assert "\n" not in str(info.value) and url in str(info.value)


def test_postgresql_urls_use_psycopg3():
    assert normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg://")


def test_a_readonly_store_reads_and_cannot_write(database_url):
    """What the dashboard and the report open: rows and studies read, every write refused."""
    from sqlalchemy.exc import SQLAlchemyError

    writer = ResultsStore(database_url)
    writer.create()
    writer.upsert(row(0, INTER, val_loss=3.0))
    reader = ResultsStore(database_url, readonly=True)
    assert reader.studies() == ["s"]
    assert [(r["trial"], r["val_loss"]) for r in reader.rows("s", columns=["trial", "val_loss"])] == [(0, 3.0)]
    with pytest.raises(SQLAlchemyError, match="read-only|readonly"):
        reader.upsert(row(1, INTRA))
    assert [r["trial"] for r in writer.rows("s")] == [0]
    reader.dispose()
    writer.dispose()


def test_the_version_changes_with_every_write_and_only_then(database_url):
    """What the dashboard compares to know its copy of a study is stale."""
    writer = ResultsStore(database_url)
    writer.create()
    reader = ResultsStore(database_url, readonly=True)
    seen = [reader.version("s")]
    writer.upsert(row(0, INTER, status="running"))
    seen.append(reader.version("s"))
    writer.upsert(row(0, INTER, val_loss=3.0))  # the same row again, now complete
    seen.append(reader.version("s"))
    writer.upsert(row(1, INTRA))
    seen.append(reader.version("s"))
    assert len(set(seen)) == 4
    assert reader.version("s") == seen[-1] and reader.version("other") == seen[0]  # unchanged: the same
    reader.dispose()
    writer.dispose()


def test_an_older_table_gains_new_columns_and_reads_as_none(tmp_path):
    """A study database written before a column existed: readers see None for it, and
    create() (a resumed driver) adds it, keeping every row."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = ResultsStore(url)
    store.create()
    store.upsert(row(0, INTER, val_loss=3.0))
    store.dispose()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("ALTER TABLE hybridnas_trials DROP COLUMN baseline")
    reader = ResultsStore(url, readonly=True)
    assert reader.rows("s")[0]["baseline"] is None and reader.rows("s")[0]["val_loss"] == 3.0
    reader.dispose()
    store = ResultsStore(url)
    store.create()
    store.upsert(row(0, INTER, baseline="mamba2"))
    assert store.rows("s")[0]["baseline"] == "mamba2" and store.rows("s")[0]["val_loss"] == 3.0
    store.dispose()
