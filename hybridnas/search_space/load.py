"""``load_spec``: a candidate from what a user types: an example name, a SPEC.json path, or a pattern."""

from __future__ import annotations

import json
from pathlib import Path

from hybridnas.search_space.errors import SpecError
from hybridnas.search_space.examples import EXAMPLES
from hybridnas.search_space.spec import ArchSpec

__all__ = ["load_spec"]


def load_spec(target: str, d_model: int | None = None) -> ArchSpec:
    """A spec from an example name, a SPEC.json path, or a layout pattern, with ``d_model``
    overridden if given (sizes re-derived). Bad input raises :class:`SpecError`."""
    overrides = {} if d_model is None else {"d_model": d_model}
    if target in EXAMPLES:
        return EXAMPLES[target].spec(**overrides)
    path = Path(target)
    if target.endswith(".json") or "/" in target or path.is_file():
        if not path.is_file():
            raise SpecError(f"{target}: no such file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{target}: cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{target}: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        if isinstance(data, dict):
            data.update(overrides)
        return ArchSpec.from_dict(data)
    if any(ch.islower() for ch in target):
        raise SpecError(f"{target!r} is neither an example ({', '.join(EXAMPLES)}), a .json file, nor a layout pattern")
    return ArchSpec.from_pattern(target, **overrides)
