"""Schema versions of the results table: a database written before the schema was versioned
(tests/data/v1-study.db, a real study run by hybridnas at git 52a2f17) is upgraded in place
and resumes; a table newer than this hybridnas is refused before anything is written."""

import shutil
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from hybridnas import ArchSpec
from hybridnas.analysis.study import load_study
from hybridnas.studies.config import load_study_config
from hybridnas.studies.query import query_study
from hybridnas.studies.simulate import simulate
from hybridnas.studies.storage import SCHEMA_VERSION, TRIALS, ResultsStore, StorageError

V1 = Path(__file__).parent / "data" / "v1-study.db"
STUDY = "v1-study"


def _v1_copy(database_url: str) -> None:
    """The v1 study copied into the empty database at ``database_url``: Optuna's study by
    ``optuna.copy_study``, and hybridnas_trials as v1 defined it (today's columns that the
    file has, plus seed)."""
    optuna.copy_study(from_study_name=STUDY, from_storage=f"sqlite:///{V1}", to_storage=database_url)
    source, target = sa.create_engine(f"sqlite:///{V1}"), sa.create_engine(database_url)
    present = {c["name"] for c in sa.inspect(source).get_columns("hybridnas_trials")}
    v1 = sa.Table("hybridnas_trials", sa.MetaData(), *(c._copy() for c in TRIALS.columns if c.name in present),
                  sa.Column("seed", sa.Integer))
    try:
        v1.create(target)
        with source.connect() as read, target.begin() as write:
            rows = read.execute(v1.select().order_by(v1.c.id))  # new ids, so the id sequence moves past them
            write.execute(v1.insert(), [{k: v for k, v in r._mapping.items() if k != "id"} for r in rows])
    finally:
        source.dispose()
        target.dispose()


@pytest.fixture
def v1_url(database_url):
    if database_url.startswith("sqlite"):
        path = sa.engine.make_url(database_url).database
        shutil.copy(V1, path)
    else:
        _v1_copy(database_url)
    return database_url


def _columns(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns("hybridnas_trials")}
    finally:
        engine.dispose()


def test_v1_table_is_upgraded_in_place(v1_url):
    store = ResultsStore(v1_url)
    assert store.schema_version() == 1
    before = store.rows(STUDY)
    assert "seed" in _columns(v1_url) and len(before) == 5
    assert all(r["spec_key"] == ArchSpec.from_dict(r["spec"]).short_id for r in before)  # what v1 stored

    store.create()
    assert store.schema_version() == SCHEMA_VERSION == 3
    assert "seed" not in _columns(v1_url)
    after = store.rows(STUDY)
    store.dispose()
    # nothing else changed; spec_key is now Optuna's spec_key attribute of the trained trials,
    # and each row names its Optuna study by id (v3)
    keep = lambda r: {k: v for k, v in r.items() if k not in ("spec_key", "seed", "optuna_study_id")}  # noqa: E731
    assert [keep(r) for r in after] == [keep(r) for r in before]
    optuna_study = optuna.load_study(study_name=STUDY, storage=v1_url)
    assert {r["optuna_study_id"] for r in before} == {None} and {r["optuna_study_id"] for r in after} == {
        optuna_study._study_id}
    trials = optuna_study.trials
    for row in after:
        assert row["spec_key"] == ArchSpec.from_dict(row["spec"]).key
        if row["reused_from"] is None:
            assert trials[row["trial"]].user_attrs["spec_key"] == row["spec_key"]
    store.create()  # idempotent
    assert ResultsStore(v1_url).schema_version() == SCHEMA_VERSION


def test_v1_study_reads_and_resumes(v1_url, tmp_path):
    assert len(query_study(v1_url, STUDY, pareto=["val_loss", "cache_bytes"])) >= 1
    data = load_study(v1_url, STUDY)  # read-only: reads a v1 table as it is
    assert [o.label for o in data.objectives] == ["val_loss", "cache_bytes@4096"]
    assert len(data.complete()) == 2  # two distinct candidates, three reuses

    config = load_study_config(str(V1.with_suffix(".toml")), storage=v1_url, trials=7)
    # the upgraded table's keys find the v1 trials: an identical candidate reuses their results
    result = simulate(config, runs_dir=tmp_path / "runs")
    rows = ResultsStore(v1_url).rows(STUDY)
    assert ResultsStore(v1_url).schema_version() == SCHEMA_VERSION
    # v1's three reuses counted as trials, so 2 more to 7; copies (v3's) count for nothing
    assert result.tally.done + result.tally.pruned + result.tally.failed == 2
    assert len([r for r in rows if r["status"] != "copy"]) == 7
    copies_of_v1 = [r for r in rows[5:] if r["reused_from"] is not None and r["reused_from"] < 5]
    trained_v1 = {r["spec_key"] for r in rows[:5]}
    assert copies_of_v1 and all(r["spec_key"] in trained_v1 and r["status"] == "copy" for r in copies_of_v1)
    assert all(r["spec_key"] not in trained_v1 for r in rows[5:] if r["reused_from"] is None)


def test_newer_schema_is_refused(database_url):
    store = ResultsStore(database_url)
    store.create()
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE hybridnas_schema SET version = 99"))
    engine.dispose()
    with pytest.raises(StorageError, match="schema version 99, newer than this hybridnas's 3"):
        ResultsStore(database_url).create()


V2 = Path(__file__).parent / "data" / "v2-study.db"  # the test-tiny study, 6 trials simulated by hybridnas at 46b162b


def test_v2_table_gets_each_rows_optuna_study_id_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    shutil.copy(V2, tmp_path / "v2.db")
    store = ResultsStore(url)
    assert store.schema_version() == 2
    before = store.rows("v2-study")
    store.create()
    after = store.rows("v2-study")
    study_id = optuna.load_study(study_name="v2-study", storage=url)._study_id
    assert store.schema_version() == SCHEMA_VERSION == 3 and len(after) == len(before) > 0
    assert [{**r, "optuna_study_id": None} for r in after] == before
    assert {r["optuna_study_id"] for r in after} == {study_id}

    config = load_study_config("test-tiny", storage=url, trials=8, name="v2-study")
    simulate(config, runs_dir=tmp_path / "runs")  # resumes: the old rows stay, new ones carry the id too
    resumed = store.rows("v2-study")
    store.dispose()
    assert len(resumed) > len(after) and {r["optuna_study_id"] for r in resumed} == {study_id}
    assert [r for r in resumed if r["id"] in {a["id"] for a in after}] == after
