"""The one error type of the search space: every message names the field it is about."""

__all__ = ["SpecError"]


class SpecError(ValueError):
    """An invalid candidate description; the message names the offending field."""
