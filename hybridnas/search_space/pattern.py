"""The layout-pattern language: one symbol per layer.

The convention is Megatron-LM / Nemotron-H's ``hybrid_override_pattern``, extended by
``W`` (sliding-window attention) and ``H`` (intra-layer hybrid)::

    M  Mamba-2 mixer            -  dense SwiGLU FFN
    *  global causal attention  E  MoE FFN
    W  sliding-window attention
    H  intra-layer hybrid (attention and Mamba-2 side by side, merged)

Every layer is pre-norm residual, ``x = x + layer(norm(x))``. Bae et al.'s Inter 1:5 at 13
mixers reads ``M-M-M-M-*-M-M-M-M-*-M-M-M-``.
"""

from __future__ import annotations

from enum import StrEnum

from hybridnas.search_space.errors import SpecError

__all__ = [
    "Symbol",
    "SYMBOLS",
    "MIXER_SYMBOLS",
    "ATTENTION_SYMBOLS",
    "FFN_SYMBOLS",
    "PatternError",
    "check_pattern",
]


class Symbol(StrEnum):
    MAMBA = "M"
    ATTENTION = "*"
    WINDOW = "W"
    HYBRID = "H"
    FFN = "-"
    MOE = "E"


SYMBOLS: tuple[str, ...] = tuple(s.value for s in Symbol)
MIXER_SYMBOLS = frozenset("M*WH")
# Mixers that carry an attention branch, so a KV cache that grows with context.
ATTENTION_SYMBOLS = frozenset("*WH")
FFN_SYMBOLS = frozenset("-E")


class PatternError(SpecError):
    """A layout string that is not in the pattern language."""


def check_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid layout, else raise PatternError naming the position."""
    if not isinstance(pattern, str):
        raise PatternError(f"pattern={pattern!r}: expected a string of layer symbols")
    if not pattern:
        raise PatternError("pattern='': empty, expected at least one mixer (M * W H)")
    for i, ch in enumerate(pattern):
        if ch not in SYMBOLS:
            raise PatternError(
                f"pattern[{i}]={ch!r}: unknown symbol, expected one of {' '.join(SYMBOLS)}"
            )
    if not MIXER_SYMBOLS & set(pattern):
        raise PatternError(
            f"pattern={pattern!r}: no mixer layer, expected at least one of M * W H"
        )
    return pattern
