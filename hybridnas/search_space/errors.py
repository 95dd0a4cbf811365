"""The search space's error type; its pydantic errors are formatted by :mod:`hybridnas.errors`."""

from __future__ import annotations

from hybridnas.errors import UserError

__all__ = ["SpecError"]


class SpecError(UserError):
    """An invalid candidate description; the message names the offending field."""
