"""Layout builders: from (how many mixers, how many with attention, where) to a pattern.

Placements, for ``n`` mixers of which ``a`` carry attention (0-indexed mixer positions):

- ``even``: Megatron-LM's hybrid allocator — attention evenly spaced between ``a + 1``
  equal runs of Mamba, so the first and last mixers stay Mamba.
  even(56, 4) = (10, 22, 33, 45), the attention layers of Megatron's 8B Mamba-2-Hybrid;
  even(13, 2) = (4, 8).
- ``middle``: evenly spaced through the middle half of the stack (Bae et al.: spread
  attention through the middle, not at the first layer). middle(12, 2) = (4, 7).
- ``front`` / ``back``: the first / last ``a`` mixers. front(12, 2) = (0, 1).
- ``sandwich``: ceil(a/2) at the front, floor(a/2) at the back. sandwich(12, 3) = (0, 1, 11).
- ``cluster``: one contiguous block in the centre. cluster(12, 2) = (5, 6).
- explicit indices: any sequence of distinct positions, e.g. ``(4, 12, 20, 28)`` (Jamba).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from hybridnas.search_space.errors import SpecError

__all__ = ["PLACEMENTS", "placement_indices", "layout", "n_attn_for_ratio"]

PLACEMENTS = ("even", "middle", "front", "back", "sandwich", "cluster")
Placement = Literal["even", "middle", "front", "back", "sandwich", "cluster"]


def _even(n: int, a: int) -> list[int]:
    # Megatron's allocator: walk the stack spending a Mamba budget of one run length;
    # when less than half a layer of the run is left, place attention and start a new run.
    run = (n - a) / (a + 1)
    left = run
    picked: list[int] = []
    for i in range(n):
        if left < 0.5 and len(picked) < a:
            picked.append(i)
            left += run
        else:
            left -= 1
    return picked


def _middle(n: int, a: int) -> list[int]:
    lo, hi = n // 4, n - n // 4
    if hi - lo < a:  # too many to fit the middle half: widen the window around the centre
        lo = (n - a) // 2
        hi = lo + a
    span = hi - lo
    return [lo + math.floor((k + 0.5) * span / a) for k in range(a)]


def placement_indices(n_mixers: int, n_attn: int, placement: Placement | Sequence[int]) -> tuple[int, ...]:
    """The 0-indexed mixer positions that carry attention, sorted."""
    if not isinstance(n_mixers, int) or n_mixers < 1:
        raise SpecError(f"layout: n_mixers={n_mixers!r} must be a positive integer")
    if not isinstance(n_attn, int) or not 0 <= n_attn <= n_mixers:
        raise SpecError(f"layout: n_attn={n_attn!r} must be an integer in 0..n_mixers={n_mixers}")
    if not isinstance(placement, str):
        indices = tuple(sorted(placement))
        if len(set(indices)) != len(indices) or any(not 0 <= i < n_mixers for i in indices):
            raise SpecError(
                f"layout: placement={list(placement)} must be distinct indices in 0..{n_mixers - 1}"
            )
        if len(indices) != n_attn:
            raise SpecError(f"layout: placement gives {len(indices)} indices but n_attn={n_attn}")
        return indices
    a, n = n_attn, n_mixers
    if a == 0:
        return ()
    builders: dict[str, Callable[[], Iterable[int]]] = {
        "even": lambda: _even(n, a),
        "middle": lambda: _middle(n, a),
        "front": lambda: range(a),
        "back": lambda: range(n - a, n),
        "sandwich": lambda: [*range((a + 1) // 2), *range(n - a // 2, n)],
        "cluster": lambda: range((n - a) // 2, (n - a) // 2 + a),
    }
    if placement not in builders:
        raise SpecError(f"layout: placement={placement!r} unknown, expected one of {', '.join(PLACEMENTS)} or indices")
    return tuple(sorted(builders[placement]()))


def layout(
    n_mixers: int,
    n_attn: int,
    placement: Placement | Sequence[int] = "even",
    fusion: Literal["inter", "intra"] = "inter",
    ffn: bool = True,
    moe_every: int = 0,
    *,
    window: bool = False,
) -> str:
    """A layout pattern.

    Args:
        n_mixers: number of mixer layers.
        n_attn: how many of them carry attention.
        placement: one of PLACEMENTS or explicit mixer indices.
        fusion: ``inter`` puts attention in its own mixers (``*``, or ``W`` with
            ``window=True``); ``intra`` makes those mixers intra-layer hybrids (``H``).
        ffn: follow every mixer with an FFN.
        moe_every: 0 for dense FFNs only; k makes every k-th FFN an MoE (``E``), counting
            from the k-th (k=2 gives Jamba's every-other-layer MoE).

    ``layout(13, 2)`` is ``"M-M-M-M-*-M-M-M-*-M-M-M-M-"``.
    """
    if fusion not in ("inter", "intra"):
        raise SpecError(f"layout: fusion={fusion!r} unknown, expected inter or intra")
    if not isinstance(moe_every, int) or moe_every < 0:
        raise SpecError(f"layout: moe_every={moe_every!r} must be a non-negative integer")
    if moe_every and not ffn:
        raise SpecError("layout: moe_every needs ffn=True (MoE replaces FFN layers)")
    attn_symbol = "H" if fusion == "intra" else ("W" if window else "*")
    attn_at = set(placement_indices(n_mixers, n_attn, placement))
    layers = []
    for i in range(n_mixers):
        layers.append(attn_symbol if i in attn_at else "M")
        if ffn:
            layers.append("E" if moe_every and i % moe_every == moe_every - 1 else "-")
    return "".join(layers)


def n_attn_for_ratio(n_mixers: int, ratio: str | tuple[float, float]) -> int:
    """Attention mixers for an ``attention:mamba`` ratio such as ``"1:5"`` or ``(1, 5)``
    (already parsed, as a study's ratios are) (rounded half up).

    Bae et al.'s Inter 1:5 at 13 mixers has n_attn_for_ratio(13, "1:5") = 2."""
    if isinstance(ratio, tuple):
        attn, mamba = ratio
    else:
        try:
            attn, mamba = (float(x) for x in ratio.split(":"))
        except ValueError:
            raise SpecError(f"ratio={ratio!r}: expected attention:mamba such as 1:5") from None
    if attn < 0 or mamba < 0 or attn + mamba == 0:
        raise SpecError(f"ratio={ratio!r}: parts must be non-negative and not both zero")
    return math.floor(n_mixers * attn / (attn + mamba) + 0.5)
