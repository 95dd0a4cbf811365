"""Multi-fidelity by Pareto rank: asynchronous successive halving on several objectives.

At each rung (a fraction of the trial's budget) a trial goes on only if its non-dominated
rank among the trials that reached that rung, on (validation loss at the rung, the cost
objectives), is within the top 1/eta; otherwise it stops and is recorded as pruned. Optuna's
pruners handle one objective only; this rule is what lets a multi-objective study prune.

"Within the top 1/eta": fewer than ceil(n / eta) of the n trials at the rung lie in strictly
better fronts. Asynchronous, as in ASHA: a trial is judged against those that reached the
rung before it, so the first trial at a rung always goes on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["ParetoHalving", "front_indices", "dominates"]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b everywhere and better somewhere (all objectives minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def front_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """The non-dominated front of each point, 0 for the Pareto set (all minimised).
    O(n^2) per front: rungs hold tens to hundreds of trials."""
    remaining = set(range(len(points)))
    fronts = [0] * len(points)
    level = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            fronts[i] = level
        remaining -= front
        level += 1
    return fronts


@dataclass
class ParetoHalving:
    """The decision rule, free of Ray: ``decide(trial, rung, point)`` -> "continue" | "stop".

    ``signs`` turns each objective into one to minimise (+1 minimise, -1 maximise)."""

    eta: float
    signs: tuple[int, ...]
    reached: dict[int, dict[str, tuple[float, ...]]] = field(default_factory=dict)

    def decide(self, trial: str, rung: int, point: Sequence[float]) -> str:
        if len(point) != len(self.signs):
            raise ValueError(f"rung point has {len(point)} values, expected {len(self.signs)}")
        at_rung = self.reached.setdefault(rung, {})
        at_rung[trial] = tuple(s * v for s, v in zip(self.signs, point))
        names = list(at_rung)
        fronts = front_indices([at_rung[n] for n in names])
        mine = fronts[names.index(trial)]
        better = sum(f < mine for f in fronts)
        return "continue" if better < math.ceil(len(names) / self.eta) else "stop"

