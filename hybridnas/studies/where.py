"""A safe parser for the ``--where`` filter of ``hybridnas query``.

``parse_where('fusion == "intra" and n_attn <= 2', columns)`` turns a small,
Python-like filter language into a SQLAlchemy boolean expression over the given
columns. Grammar (keywords are case-insensitive)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand [op operand | ["not"] "in" "(" literal ("," literal)* [","] ")"]
    op         := "==" | "!=" | "<" | "<=" | ">" | ">="
    operand    := column | literal
    literal    := ["-" | "+"] number | string | "true" | "false" | "null"

A comparison needs exactly one column; a bare boolean column means "is true";
``== null`` / ``!= null`` become ``IS NULL`` / ``IS NOT NULL``. Literals are
type-checked against the column's SQLAlchemy type.

Safety: the text is never evaluated and never reaches the database as SQL. A
hand-written tokenizer accepts only the tokens above, a recursive-descent
parser builds the expression from SQLAlchemy operators, and every literal
becomes a bound parameter. Anything else raises :class:`QueryError` with a
one-line message naming the position (a 0-based character offset).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import types as satypes

from hybridnas.errors import UserError

__all__ = ["QueryError", "parse_where", "MAX_LENGTH", "MAX_DEPTH"]

MAX_LENGTH = 2000
MAX_DEPTH = 50

_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_CMP_OPS = ("==", "!=", "<=", ">=", "<", ">")
# The operator seen from the other side: `2 < n` is `n > 2`.
_FLIPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_INT64 = 2**63

# ASCII only: `\d` would otherwise accept other scripts' digits, which int() reads.
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class QueryError(UserError):
    """An invalid ``--where`` filter; the message is one line."""


def _error(problem: str, pos: int, extra: str = "") -> QueryError:
    tail = f" ({extra})" if extra else ""
    return QueryError(f"--where: {problem} at position {pos}{tail}")


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "keyword", "number", "string", "op", "end"
    value: Any  # the keyword/op/name text, or the literal's Python value
    pos: int

    def describe(self) -> str:
        if self.kind == "end":
            return "end of input"
        if self.kind == "string":
            return f"string {self.value!r}"
        return repr(str(self.value))


def _tokenize(text: str) -> list[_Token]:
    """Split ``text`` into tokens; any character outside the grammar is an error."""
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif m := _NAME.match(text, i):
            word = m.group()
            if word.lower() in _KEYWORDS:
                tokens.append(_Token("keyword", word.lower(), i))
            else:
                tokens.append(_Token("name", word, i))
            i = m.end()
        elif m := _NUMBER.match(text, i):
            tokens.append(_Token("number", _number(m.group(), i), i))
            i = m.end()
            # `2abc` or `1.2.3` is a typo, not a number followed by a name.
            if i < len(text) and (text[i].isalnum() or text[i] in "_."):
                junk_match = re.match(r"[\w.]*", text[i:])
                assert junk_match is not None, "[\\w.]* matches the empty string at least"
                junk = junk_match.group()
                raise _error(f"malformed number {text[m.start():i] + junk!r}", m.start())
        elif ch in "'\"":
            value, end = _string(text, i)
            tokens.append(_Token("string", value, i))
            i = end
        elif op := next((op for op in _CMP_OPS if text.startswith(op, i)), None):
            tokens.append(_Token("op", op, i))
            i += len(op)
        elif ch in "(),-+":
            tokens.append(_Token("op", ch, i))
            i += 1
        elif ch == "=":
            raise _error("'=' is not an operator, use '==' to compare", i)
        else:
            raise _error(f"unexpected character {ch!r}", i)
    tokens.append(_Token("end", None, len(text)))
    return tokens


def _number(text: str, pos: int) -> int | float:
    """An int when written as one, else a float; both must fit the database."""
    if text.isdigit():
        value: int | float = int(text)
        if value >= _INT64:
            raise _error(f"integer {text} is out of range", pos)
        return value
    value = float(text)
    if math.isinf(value):
        raise _error(f"number {text} is out of range", pos)
    return value


def _string(text: str, start: int) -> tuple[str, int]:
    """Read a quoted string with backslash escapes; return its value and end offset."""
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= len(text):
                break
            esc = text[i + 1]
            if esc not in _ESCAPES:
                raise _error(f"unknown escape '\\{esc}' in string", i)
            out.append(_ESCAPES[esc])
            i += 2
            continue
        if ch == "\0":
            # PostgreSQL text cannot hold NUL; refuse it here rather than in the driver.
            raise _error("NUL character in string", i)
        out.append(ch)
        i += 1
    raise _error("unterminated string", start)


def _kind(column: sa.ColumnElement) -> str:
    """Classify a column's type as boolean, number, string, any (untyped) or other."""
    coltype = column.type
    if isinstance(coltype, satypes.Boolean):
        return "boolean"
    if isinstance(coltype, (satypes.Integer, satypes.Numeric, satypes.Float)):
        return "number"
    if isinstance(coltype, satypes.String):  # Text, Unicode, Enum are Strings
        return "string"
    if isinstance(coltype, satypes.NullType):
        return "any"
    return "other"


def _literal_kind(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def _bind(value: Any, column: sa.ColumnElement) -> sa.BindParameter:
    """A bound parameter typed by the literal rather than by the column.

    A float compared with an INTEGER column must stay a float: a bind of the
    column's type may be rendered with a cast (``::INTEGER``) that rounds 2.5.
    Strings do take the column's own type, which may be an ENUM.
    """
    if isinstance(value, bool):
        return sa.literal(value, sa.Boolean())
    if isinstance(value, int):
        return sa.literal(value, sa.BigInteger())
    if isinstance(value, float):
        return sa.literal(value, sa.Float())
    string_type = column.type if _kind(column) == "string" else sa.String()
    return sa.literal(value, string_type)


@dataclass(frozen=True)
class _Column:
    name: str
    element: sa.ColumnElement
    pos: int


@dataclass(frozen=True)
class _Literal:
    value: Any  # None for null
    pos: int


class _Parser:
    """Recursive descent over the token list; builds SQLAlchemy expressions."""

    def __init__(self, text: str, columns: Mapping[str, sa.ColumnElement]):
        self.tokens = _tokenize(text)
        # keys(), not iteration: a Table's `.c` iterates over columns, not names.
        self.columns = {name: columns[name] for name in columns.keys()}
        self.i = 0
        self.depth = 0

    # -- token helpers ---------------------------------------------------------
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def at(self, kind: str, value: Any = None) -> bool:
        return self.tok.kind == kind and (value is None or self.tok.value == value)

    def take(self) -> _Token:
        tok = self.tok
        self.i += 1
        return tok

    def expect(self, kind: str, value: str, what: str) -> _Token:
        if not self.at(kind, value):
            raise _error(f"expected {what}, found {self.tok.describe()}", self.tok.pos)
        return self.take()

    def nest(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(f"nesting deeper than {MAX_DEPTH}", pos)

    # -- grammar ---------------------------------------------------------------
    def parse(self) -> sa.ColumnElement[bool]:
        if self.at("end"):
            raise _error("empty filter", 0)
        expr = self.or_expr()
        if not self.at("end"):
            raise _error(
                f"unexpected {self.tok.describe()}, expected 'and', 'or' or the end",
                self.tok.pos,
            )
        return expr

    def or_expr(self) -> sa.ColumnElement[bool]:
        parts = [self.and_expr()]
        while self.at("keyword", "or"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else sa.or_(*parts)

    def and_expr(self) -> sa.ColumnElement[bool]:
        parts = [self.not_expr()]
        while self.at("keyword", "and"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else sa.and_(*parts)

    def not_expr(self) -> sa.ColumnElement[bool]:
        if self.at("keyword", "not"):
            self.nest(self.take().pos)
            expr = sa.not_(self.not_expr())
            self.depth -= 1
            return expr
        if self.at("op", "("):
            self.nest(self.take().pos)
            expr = self.or_expr()
            self.expect("op", ")", "')'")
            self.depth -= 1
            return expr
        return self.comparison()

    def comparison(self) -> sa.ColumnElement[bool]:
        left = self.operand()
        if self.at("op") and self.tok.value in _CMP_OPS:
            op_tok = self.take()
            right = self.operand()
            return self.compare(left, op_tok, right)
        nxt = self.tokens[self.i + 1] if self.at("keyword", "not") else None
        negate = nxt is not None and nxt.kind == "keyword" and nxt.value == "in"
        if negate or self.at("keyword", "in"):
            in_pos = self.take().pos
            if negate:
                self.take()
            if not isinstance(left, _Column):
                raise _error("'in' needs a column on its left", in_pos)
            values = self.literal_list()
            for lit in values:
                self.check(left, lit, "in")
            binds = [_bind(lit.value, left.element) for lit in values]
            col = left.element
            return col.not_in(binds) if negate else col.in_(binds)
        if isinstance(left, _Column):
            # A bare column stands for "is true" and only makes sense for booleans.
            if _kind(left.element) not in ("boolean", "any"):
                raise _error(
                    f"column '{left.name}' is {self.type_name(left)}, not boolean; "
                    "compare it with a value",
                    left.pos,
                )
            return left.element == sa.true()
        raise _error(f"a bare {self.tok_for(left)} is not a condition", left.pos)

    def operand(self) -> _Column | _Literal:
        tok = self.tok
        if tok.kind == "name":
            self.take()
            if tok.value not in self.columns:
                raise _error(
                    f"unknown column '{tok.value}'",
                    tok.pos,
                    "columns: " + ", ".join(self.columns),
                )
            return _Column(tok.value, self.columns[tok.value], tok.pos)
        return self.literal()

    def literal(self) -> _Literal:
        tok = self.tok
        if tok.kind == "op" and tok.value in ("-", "+"):
            self.take()
            if not self.at("number"):
                raise _error(f"expected a number after '{tok.value}'", self.tok.pos)
            value = self.take().value
            return _Literal(-value if tok.value == "-" else value, tok.pos)
        if tok.kind in ("number", "string"):
            return _Literal(self.take().value, tok.pos)
        if tok.kind == "keyword" and tok.value in ("true", "false", "null"):
            self.take()
            return _Literal({"true": True, "false": False, "null": None}[tok.value], tok.pos)
        raise _error(f"expected a column or a value, found {tok.describe()}", tok.pos)

    def literal_list(self) -> list[_Literal]:
        self.expect("op", "(", "'(' after 'in'")
        values: list[_Literal] = []
        while not self.at("op", ")"):
            if self.at("name"):
                raise _error("'in' takes a list of values, not columns", self.tok.pos)
            lit = self.literal()
            if lit.value is None:
                raise _error("null in an 'in' list; use '== null'", lit.pos)
            values.append(lit)
            if not self.at("op", ","):
                break
            self.take()
        self.expect("op", ")", "',' or ')' in the 'in' list")
        if not values:
            raise _error("empty 'in' list", self.tokens[self.i - 1].pos)
        return values

    # -- building comparisons --------------------------------------------------
    def compare(self, left, op_tok: _Token, right) -> sa.ColumnElement[bool]:
        op = op_tok.value
        if isinstance(left, _Column) and isinstance(right, _Column):
            raise _error(
                f"cannot compare column '{left.name}' with column '{right.name}'; "
                "compare a column with a value",
                op_tok.pos,
            )
        if isinstance(left, _Literal) and isinstance(right, _Literal):
            raise _error("comparison of two values; one side must be a column", op_tok.pos)
        if isinstance(left, _Literal):  # `2 < n` -> `n > 2`
            left, right, op = right, left, _FLIPPED[op]
        self.check(left, right, op)
        col = left.element
        if right.value is None:
            return col.is_(None) if op == "==" else col.is_not(None)
        value = _bind(right.value, col)
        return {
            "==": col.__eq__, "!=": col.__ne__, "<": col.__lt__,
            "<=": col.__le__, ">": col.__gt__, ">=": col.__ge__,
        }[op](value)

    def check(self, col: _Column, lit: _Literal, op: str) -> None:
        """Refuse a literal whose type does not fit the column (or the operator)."""
        if lit.value is None:
            if op not in ("==", "!="):
                raise _error(f"null only works with '==' or '!=', not '{op}'", lit.pos)
            return
        kind, lit_kind = _kind(col.element), _literal_kind(lit.value)
        if kind == "other":
            raise _error(
                f"column '{col.name}' has type {self.type_name(col)}, "
                "which --where cannot compare",
                col.pos,
            )
        if kind not in ("any", lit_kind):
            raise _error(
                f"column '{col.name}' is {self.type_name(col)} ({kind}), "
                f"cannot compare it with {lit_kind} {lit.value!r}",
                lit.pos,
            )
        if lit_kind == "boolean" and op not in ("==", "!=", "in"):
            raise _error(f"booleans only work with '==' or '!=', not '{op}'", lit.pos)

    @staticmethod
    def type_name(col: _Column) -> str:
        try:
            return str(col.element.type)
        except sa.exc.CompileError:  # some types need a dialect to print
            return type(col.element.type).__name__

    @staticmethod
    def tok_for(lit: _Literal) -> str:
        return "value" if lit.value is None else f"value {lit.value!r}"


def parse_where(text: str, columns: Mapping[str, sa.ColumnElement]) -> sa.ColumnElement[bool]:
    """Parse a ``--where`` filter into a boolean expression over ``columns``.

    ``columns`` maps the names a user may write to SQLAlchemy column
    expressions (e.g. ``table.c``); the result uses only those and bound
    parameters. Raises :class:`QueryError` (one line) on any invalid input.
    """
    if not isinstance(text, str):
        raise QueryError(f"--where: expected text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise QueryError(f"--where: filter is {len(text)} characters long, the limit is {MAX_LENGTH}")
    return _Parser(text, columns).parse()
