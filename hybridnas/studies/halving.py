"""Multi-fidelity by Pareto rank: asynchronous successive halving on several objectives.

At each rung (a fraction of the trial's budget) a trial goes on only if its non-dominated
rank among the trials that reached that rung, on (validation loss at the rung, the cost
objectives), is within the top 1/eta; otherwise it stops and is recorded as pruned. Optuna's
pruners handle one objective only; this rule is what lets a multi-objective study prune.

"Within the top 1/eta": fewer than ceil(n / eta) of the n trials at the rung lie in strictly
better fronts. Asynchronous, as in ASHA: a trial is judged against those that reached the
rung before it, so the first trial at a rung always goes on.

Ranks follow :mod:`hybridnas.pareto`: identical points share a front, and a point with a NaN
or an infinity is invalid, in a last front of its own (every valid point is better than it).

Each rung keeps its points in a numpy array and their ranks, updated as a point arrives
instead of re-sorting the rung: a new point p only raises the ranks of the points it
dominates, each to at least rank(p) + 1 + its rank among those points (the longest chain of
dominance from p to it). One decision costs a few vectorised scans of the rung plus, when a
rank can change, in 2 objectives one non-dominated sort of some of the m points p dominates
(O(m log m)), in more one vectorised scan of them per raised rank: about linear in the
rung's size, where re-sorting the rung was quadratic or worse.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hybridnas.pareto import nondominated_ranks

__all__ = ["ParetoHalving"]


class _Rung:
    """The points that reached one rung (minimised), in arrival order, and their ranks.

    ``cols[j]`` holds objective j of every point (a column each, so that comparisons are
    contiguous); ``ranks`` the non-dominated rank among the valid points; invalid rows (NaN or
    inf) are kept but never ranked. Arrays grow by doubling."""

    def __init__(self, k: int) -> None:
        self.k, self.n = k, 0
        self.cols = np.zeros((k, 16))
        self.valid = np.zeros(16, dtype=bool)
        self.ranks = np.zeros(16, dtype=np.int64)
        self.row: dict[str, int] = {}  # trial -> row

    def add(self, trial: str, point: np.ndarray) -> tuple[int, int]:
        """Put trial's point in; (points at the rung, points in strictly better fronts than
        trial's)."""
        ok = bool(np.isfinite(point).all())
        if trial in self.row:  # a point reported again (a restored trial): replace it, re-sort
            i = self.row[trial]
            self.cols[:, i], self.valid[i] = point, ok
            self._rerank()
        else:
            i = self.row[trial] = self.n
            if i == len(self.valid):
                self.cols = np.concatenate([self.cols, np.zeros_like(self.cols)], axis=1)
                self.valid = np.concatenate([self.valid, np.zeros_like(self.valid)])
                self.ranks = np.concatenate([self.ranks, np.zeros_like(self.ranks)])
            self.cols[:, i], self.valid[i], self.ranks[i] = point, ok, 0
            self.n += 1
            if ok:
                self._insert(i)
        n, valid, ranks = self.n, self.valid[: self.n], self.ranks[: self.n]
        if not ok:  # last front: every valid point is better
            return n, int(np.count_nonzero(valid))
        return n, int(np.count_nonzero(valid & (ranks < ranks[i])))

    def _weakly(self, p: np.ndarray, i: int, below: bool) -> np.ndarray:
        """[i] bool over the first i rows: row <= p everywhere (below) or row >= p (not below)."""
        out = np.ones(i, dtype=bool)
        for column, value in zip(self.cols[:, :i], p.tolist(), strict=True):
            out &= column <= value if below else column >= value
        return out

    def _insert(self, i: int) -> None:
        """Rank the new valid row i (the last one) and raise the ranks it changes."""
        valid, ranks = self.valid[:i], self.ranks[:i]
        p = self.cols[:, i]
        le, ge = self._weakly(p, i, True), self._weakly(p, i, False)
        dominating = valid & le & ~ge  # <= everywhere and not equal
        rank = int(ranks[dominating].max()) + 1 if dominating.any() else 0
        self.ranks[i] = rank
        dominated = valid & ge & ~le
        # Only the points p dominates can change: each q to max(its rank, rank(p) + 1 + its rank
        # among the points p dominates), the longest chain through p. Ranks rise by at least one
        # along a chain, so only a chain starting at a seed (a dominated point ranked no worse
        # than p) can beat q's rank. Usually there is no seed, or one or two.
        seeds = np.flatnonzero(dominated & (ranks <= rank))
        if not seeds.size:
            return
        if self.k > 2:  # sorting is O(m^2) here; the few raised ranks are cheaper to chase
            self._raise(np.flatnonzero(dominated), rank)
            return
        # 2 objectives: sort (O(m log m)) the points a seed weakly dominates, where those chains stay
        if seeds.size <= 32:  # else sort them all: the same ranks, fewer scans
            reach = np.zeros(i, dtype=bool)
            for seed in seeds:
                reach |= self._weakly(self.cols[:, seed], i, False)
            dominated &= reach
        idx = np.flatnonzero(dominated)
        chain = rank + 1 + nondominated_ranks(self.cols[:, idx].T, ["minimize"] * self.k)
        ranks[idx] = np.maximum(ranks[idx], chain)

    def _raise(self, idx: np.ndarray, rank: int) -> None:
        """Raise the ranks of rows idx (those the new point, of rank ``rank``, dominates): the
        seeds to rank + 1, then whatever each raised point dominates to one past it, taking
        the points in lexicographic order (every dominator first), so that each raised point
        is final when taken and is scanned once: O(raised x m) vectorised."""
        cols = self.cols[:, idx]
        order = np.lexsort(cols[::-1])
        idx, cols = idx[order], np.ascontiguousarray(cols[:, order])
        new = self.ranks[idx]
        pending = np.flatnonzero(new <= rank).tolist()
        new[pending] = rank + 1
        done = np.zeros(len(idx), dtype=bool)
        while pending:
            a = heapq.heappop(pending)
            if done[a]:
                continue
            done[a] = True
            later = cols[:, a + 1:]
            ge = np.ones(later.shape[1], dtype=bool)
            ne = np.zeros(later.shape[1], dtype=bool)
            for column, value in zip(later, cols[:, a].tolist(), strict=True):
                ge &= column >= value
                ne |= column != value
            up = np.flatnonzero(ge & ne & (new[a + 1:] <= new[a])) + (a + 1)
            if up.size:
                new[up] = new[a] + 1
                for u in up.tolist():
                    heapq.heappush(pending, u)
        self.ranks[idx] = new

    def _rerank(self) -> None:
        n = self.n
        valid = self.valid[:n]
        self.ranks[:n] = 0
        self.ranks[:n][valid] = nondominated_ranks(self.cols[:, :n].T[valid], ["minimize"] * self.k)


@dataclass
class ParetoHalving:
    """The decision rule, free of Ray: ``decide(trial, rung, point)`` -> "continue" | "stop".

    ``signs`` turns each objective into one to minimise (+1 minimise, -1 maximise)."""

    eta: float
    signs: tuple[int, ...]
    reached: dict[int, _Rung] = field(default_factory=dict)

    def decide(self, trial: str, rung: int, point: Sequence[float]) -> str:
        if len(point) != len(self.signs):
            raise ValueError(f"rung point has {len(point)} values, expected {len(self.signs)}")
        at_rung = self.reached.get(rung)
        if at_rung is None:
            at_rung = self.reached[rung] = _Rung(len(self.signs))
        n, better = at_rung.add(trial, np.asarray(point, dtype=float) * np.asarray(self.signs, dtype=float))
        return "continue" if better < math.ceil(n / self.eta) else "stop"

