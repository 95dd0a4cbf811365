"""``load_spec``: a candidate from what a user types: an example name, a SPEC.json path, or a pattern."""

from __future__ import annotations

import json
from pathlib import Path

from hybridnas.search_space.errors import SpecError
from hybridnas.search_space.examples import EXAMPLES
from hybridnas.search_space.spec import MAX_LAYERS, ArchSpec

__all__ = ["load_spec"]


MAX_SPEC_BYTES = 1_000_000  # a spec is a few hundred bytes; a megabyte leaves room for comments and layouts
MAX_TARGET_CHARS = 4096  # PATH_MAX on Linux


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name longer than the file system allows
        return False


def load_spec(target: str, d_model: int | None = None) -> ArchSpec:
    """A spec from an example name, a SPEC.json path, or a layout pattern, with ``d_model``
    overridden if given (sizes re-derived). Bad input raises :class:`SpecError`."""
    overrides = {} if d_model is None else {"d_model": d_model}
    if target in EXAMPLES:
        return EXAMPLES[target].spec(**overrides)
    if len(target) > MAX_TARGET_CHARS:
        raise SpecError(f"{target[:40]}...: {len(target)} characters; a pattern has at most {MAX_LAYERS} layers "
                        f"and a path at most {MAX_TARGET_CHARS} characters")
    path = Path(target)
    if target.endswith(".json") or "/" in target or _is_file(path):
        if not _is_file(path):
            raise SpecError(f"{target}: no such file")
        try:
            if path.stat().st_size > MAX_SPEC_BYTES:
                raise SpecError(f"{target}: {path.stat().st_size:,} bytes; a spec file is at most {MAX_SPEC_BYTES:,}")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{target}: cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{target}: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except RecursionError:
            raise SpecError(f"{target}: JSON nested too deeply to be a spec") from None
        if isinstance(data, dict):
            data.update(overrides)
        return ArchSpec.from_dict(data)
    if any(ch.islower() for ch in target):
        raise SpecError(f"{target!r} is neither an example ({', '.join(EXAMPLES)}), a .json file, nor a layout pattern")
    return ArchSpec.from_pattern(target, **overrides)
