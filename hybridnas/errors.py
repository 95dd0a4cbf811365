"""The package's one error type, and pydantic's errors as one line naming the field.

Every domain error (SpecError, StudyConfigError, StorageError, QueryError, the trainer's
ConfigError, ...) subclasses :class:`UserError`, so the CLI catches bad input once. This module
imports nothing from hybridnas: it is the bottom of the import graph.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

__all__ = ["UserError", "check_writable_dir", "format_validation_error"]


class UserError(ValueError):
    """Bad input from the user: reported by the CLI as one ``error:`` line, exit 2."""


def check_writable_dir(path: str | Path, what: str, *, create: bool = False) -> Path:
    """``path`` as a folder this process can write, checked before any work whose result
    would be lost there; else a UserError naming ``what`` (e.g. ``--out``). With ``create`` a
    missing folder is made; without, nothing is created: its nearest existing parent is checked."""
    folder = Path(path).expanduser().absolute()
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{what} {folder}: cannot be created ({exc.strerror or exc})") from None
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {folder}: {existing} is not a folder")
    if existing == folder:
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise UserError(f"{what} {folder}: not a folder that can be written ({exc.strerror or exc})") from None
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder}: cannot be created ({existing} is not writable)")
    return folder


Style = Literal["spec", "toml"]


def format_validation_error(exc: ValidationError, root: type[BaseModel], *, style: Style = "spec") -> str:
    """All of pydantic's errors for a ``root`` model as one line, each naming its field.

    ``style="spec"`` (ArchSpec, TrainConfig): ``field=value: problem``, a validator's message
    as it is, ``field: unknown key, expected one of ...``; "missing" errors are dropped when
    there are others. ``style="toml"`` (a study file): paths are TOML keys (list indices and
    union branches left out), ``unknown key 'a.b' (allowed: ...)``, literals as ``is not one
    of``, and a validator's message prefixed by its section."""
    errors = exc.errors(include_url=False)
    # A bad d_model stops derivation, so derived fields also show up as "missing": noise.
    if style == "spec" and any(e["type"] != "missing" for e in errors):
        errors = [e for e in errors if e["type"] != "missing"]
    messages: list[str] = []
    for error in errors:
        text = _format_one(error, root, toml=style == "toml")
        if text not in messages:
            messages.append(text)
    return "; ".join(messages)


# Union branch names that pydantic puts in a location ("int", "function-after[...]" has a "[")
_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "IntRange", "none", "tuple"})
_UNKNOWN_KEY = re.compile(r"([\w.]+): unknown key, expected one of (.*)")  # the "spec" style's wording


def _format_one(error: ErrorDetails, root: type[BaseModel], *, toml: bool) -> str:
    if toml:  # list indices and union branch names are noise in a path a user reads: keep the TOML keys
        keys = [str(p) for p in error["loc"] if isinstance(p, str) and "[" not in p and p not in _TYPE_TAGS]
    else:
        keys = [str(p) for p in error["loc"]]
    path = ".".join(keys)
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "value_error":  # raised by our validators: the message is complete
        message = str(ctx.get("error", error["msg"]))
        return _prefixed(root, path, message) if toml else message
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(root, keys[:-1]))
        if toml:
            return f"unknown key {path!r} (allowed: {allowed})"
        return f"{path}: unknown key, expected one of {allowed}"
    if kind == "literal_error" and toml:
        allowed = ", ".join(part.strip("'") for part in re.split(r", | or ", ctx["expected"]))
        return f"{path}: {error['input']!r} is not one of {allowed}"
    if kind == "missing":
        return f"{path}: required"
    return f"{path}={error['input']!r}: {error['msg'][0].lower()}{error['msg'][1:]}"


def _prefixed(root: type[BaseModel], path: str, message: str) -> str:
    """``path: message``, unless the message already starts with a key of the section
    (``trainer.warmup_frac=0.5 + ...`` reads better than ``trainer: warmup_frac=0.5 + ...``)."""
    if not path:
        return message
    if "; " in message:  # a nested model (TrainConfig) reports all its errors in one message
        return "; ".join(_prefixed(root, path, part) for part in message.split("; "))
    unknown = _UNKNOWN_KEY.fullmatch(message)
    if unknown:  # the nested model's wording, in ours
        return f"unknown key '{path}.{unknown[1]}' (allowed: {unknown[2]})"
    model = _model_at(root, path.split("."))
    first = re.match(r"[a-z_]+", message)
    if model is not None and first and first[0] in model.model_fields:
        return f"{path}.{message}"
    return f"{path}: {message}"


def _model_at(root: type[BaseModel], keys: list[str]) -> type[BaseModel] | None:
    model: Any = root
    for key in keys:
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return None
        model = _model_of(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _model_of(annotation: Any) -> Any:
    """The BaseModel inside an annotation (``X``, ``X | None``, ``tuple[X, ...]``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(root: type[BaseModel], keys: list[str]) -> list[str]:
    model = _model_at(root, keys)
    return list(model.model_fields) if model is not None else []
