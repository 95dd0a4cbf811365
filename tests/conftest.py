"""Shared fixtures.

GPU tests carry ``@pytest.mark.gpu`` and are skipped where CUDA is not available, except
those also marked ``calibration`` when pytest runs with ``--calibration``: claims that need a
GPU's speed to fit CI, not its kernels, so a CPU can settle them given the time.

Databases: ``database_url`` runs a test once on SQLite (a file in ``tmp_path``) and once
on PostgreSQL; ``postgres_url`` gives PostgreSQL only. PostgreSQL comes from
``HYBRIDNAS_TEST_POSTGRES_URL`` (``scripts/test-postgres.sh`` starts a throwaway server
and prints it); every test gets a fresh schema of its own, dropped afterwards. Without
the variable those tests are skipped, except under CI (``CI`` set), where they fail so
the PostgreSQL coverage cannot silently vanish.
"""

import os
import uuid

import pytest
import sqlalchemy as sa
import torch

POSTGRES_ENV = "HYBRIDNAS_TEST_POSTGRES_URL"


def pytest_addoption(parser):
    parser.addoption("--calibration", action="store_true",
                     help="run the tests marked calibration on a CPU too (the recall calibration: ~45 min on 2 cores)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (or --calibration, for a calibration test)")
    on_cpu = config.getoption("--calibration")
    for item in items:
        if "gpu" in item.keywords and not (on_cpu and "calibration" in item.keywords):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _postgres_admin():
    """An AUTOCOMMIT engine on HYBRIDNAS_TEST_POSTGRES_URL, to create and drop schemas."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        reason = (
            f"{POSTGRES_ENV} is not set (start a server with "
            "`bash scripts/test-postgres.sh start` and export its `url`)"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but {reason}; PostgreSQL tests must run in CI", pytrace=False)
        pytest.skip(reason)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(_postgres_admin):
    """A PostgreSQL URL whose connections see only a fresh, empty schema, dropped afterwards.

    A schema rather than a database: CREATE DATABASE takes about half a second, a schema
    a few milliseconds. The URL pins ``search_path`` to the schema, so unqualified tables
    land there, and tags connections with the schema's name as ``application_name`` so the
    teardown can end any the test left open (which would otherwise block the drop).
    """
    # A name we generate, so quoting it into the statements is safe.
    name = f"hybridnas_test_{uuid.uuid4().hex[:12]}"
    with _postgres_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    url = _postgres_admin.url.update_query_dict(
        {"options": f"-csearch_path={name}", "application_name": name}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _postgres_admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database URL: once SQLite (a file), once PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def stored(tmp_path):
    """A SQLite database with a hybridnas table and one Optuna study "s" of two rows."""
    import optuna

    from hybridnas.search_space import ArchSpec
    from hybridnas.studies.storage import ResultsStore, spec_columns

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=url, directions=["minimize", "minimize"])
    store = ResultsStore(url)
    store.create()
    for trial, pattern in enumerate(["M-M-", "M-*-"]):
        spec = ArchSpec.from_pattern(pattern, d_model=64)
        store.upsert(
            {"study": "s", "trial": trial, "status": "complete", "val_loss": 3.0 + trial, **spec_columns(spec)}
        )
    store.dispose()
    return url


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    """A token cache shared by one module's training runs (the corpus is tokenized once)."""
    return str(tmp_path_factory.mktemp("token-cache"))
