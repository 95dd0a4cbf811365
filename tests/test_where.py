"""The ``--where`` parser against real databases: SQLite and PostgreSQL (``database_url``).

Every filter runs as a real SELECT and must return exactly the expected rows; every
bad or malicious filter must raise a one-line QueryError and leave the table as it was.
"""

import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from hybridnas.studies.where import QueryError, parse_where

metadata = sa.MetaData()
trials = sa.Table(
    "trials",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("fusion", sa.String(40), nullable=False),
    sa.Column("n_attn", sa.Integer, nullable=False),
    sa.Column("merge_op", sa.String(20)),
    sa.Column("moe", sa.Boolean),
    sa.Column("val_loss", sa.Float),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("placement", sa.String(20), nullable=False),
    sa.Column("params", sa.BigInteger, nullable=False),
    sa.Column("started", sa.DateTime),
)

QUOTED = "a \"b\" \\ c's"  # fusion of row 10, for the escape tests
# id, fusion, n_attn, merge_op, moe, val_loss, status, placement, params
ROWS = [
    (1, "intra", 1, "sub", False, 3.2, "complete", "even", 1_500_000),
    (2, "intra", 2, "concat", True, 3.6, "complete", "middle", 800_000),
    (3, "inter", 2, None, False, 3.4, "complete", "even", 2_000_000),
    (4, "inter", 4, None, True, None, "failed", "front", 5_000_000),
    (5, "intra", 3, "sub", True, 2.9, "complete", "back", 1_000_000),
    (6, "none", 0, None, False, 4.1, "complete", "even", 500_000),
    (7, "intra", 2, "mean", None, 3.5, "running", "middle", 1_200_000),
    (8, "inter", 1, None, False, -2.5, "complete", "middle", 999_999),
    (9, "intra", 2, "concat", False, 3.49, "complete", "even", 3_000_000),
    (10, QUOTED, 6, "sub", None, None, "complete", "back", 0),
]
COLUMNS = "id, fusion, n_attn, merge_op, moe, val_loss, status, placement, params, started"


@pytest.fixture
def engine(database_url):
    """A fresh database holding the ``trials`` table with ROWS."""
    engine = sa.create_engine(database_url)
    metadata.create_all(engine)
    keys = [c.name for c in trials.columns if c.name != "started"]
    with engine.begin() as conn:
        conn.execute(trials.insert(), [dict(zip(keys, row, strict=True)) for row in ROWS])
        conn.execute(trials.update().where(trials.c.id == 1).values(started=datetime.datetime(2025, 1, 1)))
    yield engine
    engine.dispose()


def matching_ids(engine, text):
    query = sa.select(trials.c.id).where(parse_where(text, trials.c)).order_by(trials.c.id)
    with engine.connect() as conn:
        return set(conn.scalars(query))


def assert_intact(engine):
    assert sa.inspect(engine).has_table("trials")
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(trials)) == len(ROWS)


FILTERS = [
    ('fusion == "intra" and n_attn <= 2', {1, 2, 7, 9}),
    ("""(merge_op == 'sub' or merge_op == "concat") and not moe""", {1, 9}),
    ('val_loss < 3.5 and status == "complete"', {1, 3, 5, 8, 9}),
    ('placement in ("even", "middle")', {1, 2, 3, 6, 7, 8, 9}),
    ('placement not in ("even", "middle")', {4, 5, 10}),
    ("n_attn in (1, 2,)", {1, 2, 3, 7, 8, 9}),
    ("params >= 1e6", {1, 3, 4, 5, 7, 9}),
    ("params < 1e6", {2, 6, 8, 10}),
    ("merge_op == null", {3, 4, 6, 8}),
    ("merge_op != null", {1, 2, 5, 7, 9, 10}),
    ("moe", {2, 4, 5}),
    ("not moe", {1, 3, 6, 8, 9}),  # NULL is neither true nor false
    ("moe == false", {1, 3, 6, 8, 9}),
    ("True == moe", {2, 4, 5}),
    ("moe == null", {7, 10}),
    ("not not moe", {2, 4, 5}),
    ("2 < n_attn", {4, 5, 10}),
    ("+3 <= n_attn", {4, 5, 10}),
    # 2.5 must stay 2.5: a bind typed by the INTEGER column could round it to 2 or 3.
    ("n_attn == 2.5", set()),
    ("n_attn in (2.5, 4)", {4}),
    ("val_loss > -2.5", {1, 2, 3, 5, 6, 7, 9}),
    ("val_loss == -2.5", {8}),
    ("val_loss >= 3.5 or val_loss == null", {2, 4, 6, 7, 10}),
    ('NOT (fusion == "intra" OR fusion == "inter")', {6, 10}),
    ('status == "complete" and n_attn >= 2 and not moe', {3, 9}),
    ('fusion == "intra"\n  and n_attn <= 2', {1, 2, 7, 9}),
    ("(" * 50 + "moe" + ")" * 50, {2, 4, 5}),  # exactly the nesting limit
    (r'''fusion == "a \"b\" \\ c's"''', {10}),
    (r"""fusion == 'a "b" \\ c\'s'""", {10}),
    ('started == null', set(range(2, 11))),
    # Injection inside a string literal is just a string that matches nothing.
    ("""fusion == "x' OR '1'='1" """, set()),
    ('fusion == "intra\'; DROP TABLE trials; --"', set()),
]


@pytest.mark.parametrize("text, expected", FILTERS, ids=[f[0][:40] for f in FILTERS])
def test_filter_returns_expected_rows(engine, text, expected):
    assert matching_ids(engine, text) == expected
    assert_intact(engine)


ERRORS = [
    ("", "empty filter at position 0"),
    ("   ", "empty filter"),
    ("moe moe", "unexpected 'moe', expected 'and', 'or' or the end at position 4"),
    ("(moe", "expected ')', found end of input at position 4"),
    ("moe)", "unexpected ')'"),
    ("((moe)", "expected ')'"),
    ("fusion == merge_op", "cannot compare column 'fusion' with column 'merge_op'"),
    ("fuson == 'intra'", f"unknown column 'fuson' at position 0 (columns: {COLUMNS})"),
    ('fusion == "x"; DROP TABLE trials', "unexpected character ';' at position 13"),
    ("1=1 --", "'=' is not an operator, use '==' to compare at position 1"),
    ("fusion == 'x' or 1 == 1", "one side must be a column at position 19"),
    ('fusion == "x" union select id from trials', "unexpected 'union'"),
    ('fusion == "x" --', "unexpected '-'"),
    ('-moe', "expected a number after '-' at position 1"),
    ('fusion == "x" /* c */', "unexpected character '/'"),
    ('__import__("os")', "unknown column '__import__' at position 0"),
    ("fusion.__class__", "unexpected character '.' at position 6"),
    ("lambda: moe", "unexpected character ':'"),
    ("fusion == `x`", "unexpected character '`'"),
    ("x" * 2001, "filter is 2001 characters long, the limit is 2000"),
    ("(" * 51 + "moe" + ")" * 51, "nesting deeper than 50 at position 50"),
    ("not " * 51 + "moe", "nesting deeper than 50"),
    ('n_attn == "2"', "column 'n_attn' is INTEGER (number), cannot compare it with string '2'"),
    ("fusion > 3", "column 'fusion' is VARCHAR(40) (string), cannot compare it with number 3"),
    ("val_loss == true", "column 'val_loss' is FLOAT (number)"),
    ("moe == 1", "column 'moe' is BOOLEAN (boolean), cannot compare it with number 1"),
    ("moe < true", "booleans only work with '==' or '!='"),
    ('started == "2025"', "column 'started' has type DATETIME"),
    ("n_attn", "column 'n_attn' is INTEGER, not boolean"),
    ("n_attn < null", "null only works with '==' or '!='"),
    ("placement in ()", "empty 'in' list"),
    ("placement in ('a', fusion)", "not columns"),
    ("placement in ('a', null)", "null in an 'in' list"),
    ("'a' in placement", "'in' needs a column on its left"),
    ('fusion == "abc', "unterminated string at position 10"),
    (r'fusion == "\q"', "unknown escape '\\q'"),
    ('fusion == "a\x00"', "NUL character in string"),
    ("n_attn == 2abc", "malformed number '2abc'"),
    ("n_attn == 0x10", "malformed number '0x10'"),
    ("n_attn == 1e999", "out of range"),
    ("n_attn == 99999999999999999999", "out of range"),
    ("n_attn < 1 < 2", "unexpected '<'"),
    ("'intra'", "a bare value 'intra' is not a condition"),
    ("moe and\n;", "unexpected character ';' at position 8"),
]


@pytest.mark.parametrize("text, message", ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_bad_filter_raises_one_line_error(engine, text, message):
    with pytest.raises(QueryError) as caught:
        matching_ids(engine, text)
    error = str(caught.value)
    assert error.startswith("--where: ")
    assert "\n" not in error and "\r" not in error
    assert message in error
    assert_intact(engine)


def test_query_error_is_a_value_error():
    assert issubclass(QueryError, ValueError)


def test_literals_travel_as_bound_parameters():
    """No user text reaches the SQL string: literals are parameters, names are ours."""
    text = 'fusion == "x\'; DROP TABLE trials; --" or placement in ("even", \'a"b\')'
    compiled = parse_where(text, trials.c).compile(dialect=postgresql.psycopg.dialect())
    sql = str(compiled)
    assert "DROP" not in sql and "even" not in sql and "a\"b" not in sql
    assert set(compiled.params.values()) == {"x'; DROP TABLE trials; --", "even", 'a"b'}


def test_columns_may_be_a_plain_dict():
    where = parse_where("n > 1 and tag == 'a'", {"n": trials.c.n_attn, "tag": trials.c.fusion})
    sql = str(where.compile(dialect=postgresql.psycopg.dialect()))
    assert sql.startswith("trials.n_attn > ") and "trials.fusion = " in sql


def test_untyped_column_accepts_any_literal():
    """Without a type (e.g. ``sa.column("x")``) there is nothing to check against."""
    where = parse_where("x == 'a' or x > 1 or x", {"x": sa.column("x")})
    assert str(where.compile()) == "x = :param_1 OR x > :param_2 OR x = true"
