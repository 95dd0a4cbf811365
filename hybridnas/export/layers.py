"""Groupings of a layout that the "one block = mixer + FFN" formats (mamba-ssm, the Hugging
Face hybrids) need, checked symbol by symbol so a refusal names the layer."""

from __future__ import annotations

from dataclasses import dataclass

from hybridnas.export.errors import refuse
from hybridnas.search_space import ArchSpec

__all__ = ["Pair", "pair_layers"]


@dataclass(frozen=True)
class Pair:
    """One block of a mixer + FFN format: ``mixer`` is the pattern index of an ``M`` or ``*``,
    ``ffn`` the index of the ``-`` after it (None in a format whose blocks have no FFN)."""

    mixer: int
    ffn: int | None

    def symbol(self, spec: ArchSpec) -> str:
        return spec.pattern[self.mixer]


def pair_layers(spec: ArchSpec, fmt: str, *, mixers: str = "M*", ffn_required: bool | None = None) -> list[Pair]:
    """Split ``spec.pattern`` into blocks of one mixer (a symbol in ``mixers``) and at most one
    dense ``-`` after it. ``ffn_required``: True, every mixer must have its ``-``; False, none may;
    None, decided by the first mixer (a format with one FFN width for every block, or none).
    Raises :class:`UnsupportedLayerError` naming the first layer that does not fit."""
    p = spec.pattern
    if ffn_required is None:
        ffn_required = len(p) > 1 and p[1] == "-"
    pairs: list[Pair] = []
    i = 0
    while i < len(p):
        symbol = p[i]
        if symbol not in mixers:
            raise refuse(fmt, i, symbol, _why_not_mixer(symbol, pairs, ffn_required))
        if i + 1 < len(p) and p[i + 1] == "E":  # name the MoE layer itself, not its mixer
            raise refuse(fmt, i + 1, "E", _why_not_mixer("E", pairs, ffn_required))
        has_ffn = i + 1 < len(p) and p[i + 1] == "-"
        if has_ffn != ffn_required:
            if ffn_required:
                why = "a mixer without one '-' after it (its blocks are one mixer and one SwiGLU FFN each)"
                raise refuse(fmt, i, symbol, why)
            why = "an FFN here (its blocks are mixers without FFNs, as the first one is)"
            raise refuse(fmt, i + 1, "-", why)
        pairs.append(Pair(i, i + 1 if has_ffn else None))
        i += 2 if has_ffn else 1
    return pairs


def _why_not_mixer(symbol: str, pairs: list[Pair], ffn_required: bool) -> str:
    if symbol == "W":
        return "sliding-window attention"
    if symbol == "H":
        return "the intra-layer hybrid block (attention and Mamba-2 merged in one layer)"
    if symbol == "E":
        return "an MoE FFN"
    if not pairs:  # a '-' first: no mixer to attach it to
        return "an FFN before the first mixer: its blocks are a mixer and then its FFN"
    return "two FFNs in a row: its blocks are one mixer and one SwiGLU FFN each"
