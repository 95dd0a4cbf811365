"""The export errors: both are :class:`~hybridnas.errors.UserError`, so the CLI prints one
``error: ...`` line and exits 2."""

from __future__ import annotations

from hybridnas.errors import UserError

__all__ = ["ExportError", "UnsupportedLayerError", "refuse"]


class ExportError(UserError):
    """Bad export input: an unknown format, a missing output folder, weights that do not load."""


class UnsupportedLayerError(ExportError):
    """A layer of the spec that the target format cannot express exactly."""


def refuse(fmt: str, index: int, symbol: str, why: str) -> UnsupportedLayerError:
    """The one line for a layer ``fmt`` cannot express, e.g.
    ``pattern[3]='W': megatron cannot express sliding-window attention``."""
    return UnsupportedLayerError(f"pattern[{index}]={symbol!r}: {fmt} cannot express {why}")
