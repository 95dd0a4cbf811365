"""The database fixtures of conftest.py: every test starts from an empty database."""

import sqlalchemy as sa


def test_database_starts_empty_and_is_writable(database_url):
    engine = sa.create_engine(database_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE leftover (x INTEGER)"))
            conn.execute(sa.text("INSERT INTO leftover VALUES (1)"))
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT x FROM leftover")) == 1
    finally:
        engine.dispose()


def test_postgres_url_is_a_private_schema(postgres_url):
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            schema = conn.scalar(sa.text("SELECT current_schema()"))
        assert schema.startswith("hybridnas_test_")
        # Unqualified tables go to the private schema, never to the shared `public`.
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        assert sa.inspect(engine).get_table_names() == ["t"]
        assert sa.inspect(engine).get_table_names(schema="public") == []
    finally:
        engine.dispose()
