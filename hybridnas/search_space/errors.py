"""The one error type of the search space, and pydantic errors as one line naming the field."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

__all__ = ["SpecError", "format_validation_error"]


class SpecError(ValueError):
    """An invalid candidate description; the message names the offending field."""


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    """All of pydantic's errors for a ``root`` model as one line, each naming its field."""
    errors = exc.errors(include_url=False)
    # A bad d_model stops derivation, so derived fields also show up as "missing": noise.
    if any(e["type"] != "missing" for e in errors):
        errors = [e for e in errors if e["type"] != "missing"]
    return "; ".join(_format_error(e, root) for e in errors)


def _format_error(error: dict, root: type[BaseModel]) -> str:
    loc = error["loc"]
    path = ".".join(str(part) for part in loc)
    kind = error["type"]
    if kind == "value_error":  # raised by our validators: the message is complete
        return str(error["ctx"]["error"])
    if kind == "extra_forbidden":
        return f"{path}: unknown key, expected one of {', '.join(_fields_at(root, loc[:-1]))}"
    if kind == "missing":
        return f"{path}: required"
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"{path}={error['input']!r}: {message}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return list(model.model_fields)
