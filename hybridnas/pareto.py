"""Pareto analysis of objective values: non-dominated ranks, fronts, hypervolume, knees.

Pure numpy and a leaf module (it imports nothing of hybridnas), so everything can use it: the
analysis figures, the studies' Pareto halving and ``hybridnas query``. It works on values from
anywhere (Optuna trials, a CSV, a dashboard callback) without importing Optuna; only the
hypervolume of more than three objectives borrows Optuna's exact (WFG) code, imported when it
is needed.

Conventions shared by every function:

* ``points`` is array-like [n, k]: row i holds trial i's k objective values.
* ``directions`` is a sequence of k strings, each "minimize" or "maximize" (Optuna's spelling).
  Internally each maximised objective has its sign flipped, so that all are minimised.
* a dominates b when a is no worse than b in every objective and strictly better in at least
  one. Identical points do not dominate each other, so they share a front.
* A row with a NaN or an infinity in any objective is *invalid* (a failed or diverged trial).
  Invalid rows dominate nothing and are dominated by every valid row; they are left out of
  fronts, hypervolumes, knee points and reference points, and ``nondominated_ranks`` puts them
  all in one final front of their own: one past the last valid front (0 if no row is valid).
  Infinities count as invalid as well as NaN because -inf in a minimised objective would
  otherwise dominate everything and make every hypervolume infinite.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import cast

import numpy as np

__all__ = [
    "DIRECTIONS",
    "default_reference",
    "dominates",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "nondominated_ranks",
    "pareto_front",
]

DIRECTIONS = ("minimize", "maximize")


# ---------------------------------------------------------------------------------------------
# Validation and conversion to "all minimised"


def _signs(directions: Sequence[str]) -> np.ndarray:
    """[k] of +1.0 (minimize) / -1.0 (maximize); ValueError naming any bad direction."""
    if isinstance(directions, str):  # a str is a sequence too: "minimize" would be 8 objectives
        raise ValueError(
            f"directions must be a sequence with one string per objective, not the string {directions!r}"
        )
    directions = list(directions)
    if not directions:
        raise ValueError("directions is empty: need one direction per objective")
    allowed = ", ".join(repr(d) for d in DIRECTIONS)
    for d in directions:
        if not isinstance(d, str) or d not in DIRECTIONS:
            raise ValueError(f"bad direction {d!r}: each direction must be one of {allowed}")
    return np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def _minimised(points, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """points [n, k] -> (values to minimise [n, k] float, valid [n] bool: all finite)."""
    x = np.asarray(points, dtype=float)
    if x.ndim == 1 and x.size == 0:  # [] : no trials yet
        x = x.reshape(0, len(signs))
    if x.ndim != 2:
        raise ValueError(f"points must be 2-D [n, k], got shape {x.shape}")
    if x.shape[1] != len(signs):
        raise ValueError(
            f"points have {x.shape[1]} objectives per row but directions has {len(signs)} entries"
        )
    x = x * signs
    return x, np.isfinite(x).all(axis=1)


def _reference(reference, signs: np.ndarray) -> np.ndarray:
    """reference [k] -> the same point in minimised space [k]; must be finite."""
    r = np.asarray(reference, dtype=float)
    if r.shape != signs.shape:
        raise ValueError(
            f"reference must have {len(signs)} values (one per direction), got shape {r.shape}"
        )
    if not np.isfinite(r).all():
        raise ValueError(f"reference must be finite, got {r.tolist()}")
    return r * signs


# ---------------------------------------------------------------------------------------------
# Non-dominated sorting on finite, minimised values


def _unique_lex(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [m, k] -> (distinct rows [u, k] sorted lexicographically, first column first;
    inverse [m] with x == u[inverse]).

    Working on distinct, lex-sorted rows is what makes the sweeps simple: every point that
    dominates p comes before p, and no earlier row equals p, so "earlier and <= everywhere"
    means "dominates". Duplicates then get their rank back through ``inverse``."""
    if len(x) == 0:
        return x, np.zeros(0, dtype=np.intp)
    order = np.lexsort(x.T[::-1])  # lexsort's primary key is the last one
    xs = x[order]
    new = np.ones(len(xs), dtype=bool)
    new[1:] = (xs[1:] != xs[:-1]).any(axis=1)  # != also makes -0.0 and 0.0 the same value
    inverse = np.empty(len(x), dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    return xs[new], inverse


def _ranks_2d(u: np.ndarray) -> np.ndarray:
    """Ranks [u] of distinct lex-sorted 2-objective rows u [u, 2]; O(u log u).

    Patience sorting: ``lasts[f]`` is the second objective of the latest point put in front f.
    Within a front the second objective strictly falls, so ``lasts[f]`` is that front's
    minimum, and ``lasts`` is non-decreasing in f. An earlier point q dominates p iff
    q[1] <= p[1], so p joins the first front whose minimum is > p[1]: bisect_right."""
    lasts: list[float] = []
    ranks: list[int] = []
    for y in u[:, 1].tolist():
        f = bisect_right(lasts, y)
        if f == len(lasts):
            lasts.append(y)
        else:
            lasts[f] = y
        ranks.append(f)
    return np.array(ranks, dtype=np.int64)


def _ranks_nd(u: np.ndarray) -> np.ndarray:
    """Ranks [u] of distinct lex-sorted rows u [u, k], k >= 3; O(u^2 k), vectorised per point.

    A point's rank is one past the largest rank of the points dominating it (all of which
    come earlier). Column 0 needs no comparison: the sort already puts it in order."""
    n, k = u.shape
    cols = [np.ascontiguousarray(u[:, j]) for j in range(1, k)]
    ranks = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        dom = cols[0][:i] <= u[i, 1]
        for j in range(1, k - 1):
            dom &= cols[j][:i] <= u[i, j + 1]
        dominating = ranks[:i][dom]
        if dominating.size:
            ranks[i] = dominating.max() + 1
    return ranks


def _ranks_finite(x: np.ndarray) -> np.ndarray:
    """Ranks [m] of finite minimised rows x [m, k]."""
    u, inverse = _unique_lex(x)
    if x.shape[1] == 1:
        ranks = np.arange(len(u), dtype=np.int64)  # distinct sorted values: rank = position
    elif x.shape[1] == 2:
        ranks = _ranks_2d(u)
    else:
        ranks = _ranks_nd(u)
    return ranks[inverse]


def _front_mask(x: np.ndarray) -> np.ndarray:
    """[m] bool: which finite minimised rows x [m, k] are non-dominated. Cheaper than the full
    ranks: k <= 2 is one vectorised sweep; k >= 3 compares each point with the front only."""
    u, inverse = _unique_lex(x)
    keep = np.zeros(len(u), dtype=bool)
    if len(u) == 0:
        return keep[inverse]
    if x.shape[1] == 1:
        keep[0] = True
    elif x.shape[1] == 2:
        # an earlier distinct row with second objective <= p's dominates p
        keep[0] = True
        keep[1:] = u[1:, 1] < np.minimum.accumulate(u[:-1, 1])
    else:
        front = np.empty_like(u)
        m = 0
        for i in range(len(u)):
            if m and (front[:m, 1:] <= u[i, 1:]).all(axis=1).any():
                continue  # an earlier front point dominates it (column 0 is already in order)
            front[m] = u[i]
            m += 1
            keep[i] = True
    return keep[inverse]


def _front_sorted(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Indices of the valid non-dominated rows of minimised x [n, k], best first objective
    first; ties go on to the next objectives, then to the lower index (lexsort is stable)."""
    idx = np.flatnonzero(valid)
    on = idx[_front_mask(x[idx])]
    return on[np.lexsort(x[on].T[::-1])]


# ---------------------------------------------------------------------------------------------
# Hypervolume on minimised values strictly inside the reference box


class _Staircase:
    """The 2-D non-dominated set of the points inserted so far, and the area it dominates up to
    the reference (rx, ry). Points must be strictly better than the reference in both.

    xs rises and ys falls strictly. An insert is a binary search, a list insert/delete (a
    memmove) and area bookkeeping over the points it removes; each point is removed at most
    once, so n inserts cost O(n log n) plus the memmoves."""

    def __init__(self, rx: float, ry: float):
        self.rx, self.ry = rx, ry
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.area = 0.0

    def insert(self, x: float, y: float) -> None:
        xs, ys = self.xs, self.ys
        j = bisect_right(xs, x) - 1
        if j >= 0 and ys[j] <= y:
            return  # weakly dominated by the set: adds nothing
        i = bisect_left(xs, x)
        # Points i..e-1 have xs >= x and ys >= y: the new point dominates them.
        e = i
        while e < len(xs) and ys[e] >= y:
            e += 1
        # Gain: over [x, right edge of the last removed point's step), the staircase height
        # drops to y from what it was (the left neighbour's y, then each removed point's y).
        edge, height = x, (ys[i - 1] if i else self.ry)
        gain = 0.0
        for t in range(i, e):
            gain += (xs[t] - edge) * (height - y)
            edge, height = xs[t], ys[t]
        gain += ((xs[e] if e < len(xs) else self.rx) - edge) * (height - y)
        xs[i:e] = [x]
        ys[i:e] = [y]
        self.area += gain


def _hv2(x: np.ndarray, r: np.ndarray) -> float:
    """Area dominated by x [m, 2] up to r [2]; O(m log m): sort, keep the front, sum strips."""
    u, _ = _unique_lex(x)
    keep = np.ones(len(u), dtype=bool)
    keep[1:] = u[1:, 1] < np.minimum.accumulate(u[:-1, 1])
    front = u[keep]  # first objective rising, second falling
    widths = np.diff(np.append(front[:, 0], r[0]))
    return float(np.dot(widths, r[1] - front[:, 1]))


def _hv3(x: np.ndarray, r: np.ndarray) -> float:
    """Volume dominated by x [m, 3] up to r [3]: sweep the third objective upwards, keeping
    the 2-D staircase of the points seen so far; each slab adds area * thickness. O(m^2) worst
    case (list memmoves), O(m log m) comparisons."""
    order = np.argsort(x[:, 2], kind="stable")
    pts = x[order]
    z = pts[:, 2].tolist() + [float(r[2])]
    stair = _Staircase(float(r[0]), float(r[1]))
    volume = 0.0
    for i, (a, b) in enumerate(pts[:, :2].tolist()):
        stair.insert(a, b)
        volume += stair.area * (z[i + 1] - z[i])
    return volume


def _hv(x: np.ndarray, r: np.ndarray) -> float:
    """Hypervolume of minimised rows x [m, k], each strictly better than r [k] everywhere."""
    if len(x) == 0:
        return 0.0
    k = len(r)
    if k == 1:
        return float(r[0] - x[:, 0].min())
    if k == 2:
        return _hv2(x, r)
    if k == 3:
        return _hv3(x, r)
    # Private Optuna API (exact WFG): compute_hypervolume(loss_vals [m, k], reference_point [k],
    # assume_pareto=False), everything minimised. Imported here so the module needs no Optuna.
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(x, r))


def _inside(x: np.ndarray, valid: np.ndarray, r: np.ndarray) -> np.ndarray:
    """[n] bool: valid rows strictly better than r [k] in every objective; only they bound
    any volume (a point level with the reference in one objective spans a zero-width box)."""
    with np.errstate(invalid="ignore"):
        return valid & (x < r).all(axis=1)


# ---------------------------------------------------------------------------------------------
# Public API


def nondominated_ranks(points, directions: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting: int64 [n], 0 for the Pareto set, 1 for the front left when it is
    removed, and so on. Identical points share a rank.

    points [n, k]. Invalid rows (any NaN or inf) all get one extra final rank: one past the
    largest valid rank, or 0 if no row is valid.

    k == 1: rank = number of distinct strictly better values. k == 2: O(n log n) sweep.
    k >= 3: O(n^2 k) vectorised sweep, meant for up to several thousand points."""
    x, valid = _minimised(points, _signs(directions))
    ranks = np.empty(len(x), dtype=np.int64)
    ranks[valid] = _ranks_finite(x[valid])
    ranks[~valid] = ranks[valid].max() + 1 if valid.any() else 0
    return ranks


def pareto_front(points, directions: Sequence[str]) -> np.ndarray:
    """Indices [m] of the non-dominated valid rows of points [n, k] (rank 0 of
    ``nondominated_ranks``, never an invalid row), sorted by the first objective best first,
    ties by the next objectives, then by index."""
    x, valid = _minimised(points, _signs(directions))
    return _front_sorted(x, valid)


def dominates(a, b, directions: Sequence[str]) -> bool:
    """Whether point a [k] dominates point b [k]: no worse everywhere, strictly better somewhere.

    An invalid point (any NaN or inf) dominates nothing and is dominated by any valid one."""
    signs = _signs(directions)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != signs.shape or b.shape != signs.shape:
        raise ValueError(
            f"a and b must each have {len(signs)} values (one per direction), "
            f"got shapes {a.shape} and {b.shape}"
        )
    a, b = a * signs, b * signs
    if not np.isfinite(a).all():
        return False
    if not np.isfinite(b).all():
        return True
    return bool((a <= b).all() and (a < b).any())


def hypervolume(points, reference, directions: Sequence[str]) -> float:
    """The volume of the objective space dominated by points [n, k] and bounded by reference [k].

    reference should be worse than the front in every objective (``default_reference`` gives
    one). A point that is not strictly better than the reference in every objective, and an
    invalid row, contribute nothing.

    Exact: k == 1 the length (reference - best); k == 2 a sort sweep, O(n log n); k == 3 a
    sweep over the third objective keeping the 2-D front, O(n^2) worst case; k > 3 Optuna's
    ``optuna._hypervolume.compute_hypervolume`` (WFG), imported on demand."""
    signs = _signs(directions)
    x, valid = _minimised(points, signs)
    r = _reference(reference, signs)
    return _hv(x[_inside(x, valid, r)], r)


def hypervolume_history(points, reference, directions: Sequence[str]) -> np.ndarray:
    """float [n]: entry i is ``hypervolume(points[:i + 1], reference, directions)``, points [n, k]
    taken in trial order. Invalid rows add nothing: the previous value is carried forward
    (0.0 before any point counts).

    k == 2 is incremental (one staircase insert per point, O(n log n) in all); k >= 3
    recomputes over the current front, only when a point joins it."""
    signs = _signs(directions)
    x, valid = _minimised(points, signs)
    r = _reference(reference, signs)
    inside = _inside(x, valid, r)
    out = np.zeros(len(x))
    k = len(r)
    if k == 1:
        return np.maximum.accumulate(np.where(inside, r[0] - x[:, 0], 0.0))
    if k == 2:
        stair = _Staircase(float(r[0]), float(r[1]))
        for i, (row, ok) in enumerate(zip(x.tolist(), inside.tolist(), strict=True)):
            if ok:
                stair.insert(*row)
            out[i] = stair.area
        return out
    front = np.empty((0, k))
    hv = 0.0
    for i in range(len(x)):
        if inside[i] and not (front <= x[i]).all(axis=1).any():
            # x[i] is weakly dominated by nothing on the front: drop what it dominates, recompute
            front = np.vstack([front[~(x[i] <= front).all(axis=1)], x[i]])
            hv = _hv(front, r)
        out[i] = hv
    return out


def knee_point(points, directions: Sequence[str]) -> int:
    """The index (into points [n, k]) of the knee of the Pareto front.

    Each objective is normalised over the front to [0, 1], best = 0 (a constant objective
    becomes 0). Then:

    * k == 2 with more than two front points: the point farthest from the chord joining the two
      extreme points, (0, 1) and (1, 0), on the ideal point's side of it (signed distance
      (1 - f1 - f2) / sqrt 2). A point beyond the chord (a concave stretch of front) is a worse
      trade-off than the extremes and scores below them, so a wholly concave front gives an
      extreme point.
    * otherwise (k == 1, k >= 3, or at most two front points): the point closest (Euclidean) to
      the ideal point (0, ..., 0).

    Ties go to the first point in ``pareto_front`` order. ValueError when no row is valid."""
    x, valid = _minimised(points, _signs(directions))
    front = _front_sorted(x, valid)
    if len(front) == 0:
        raise ValueError("no valid points (rows without NaN or inf): the Pareto front is empty")
    f = x[front]
    lo, hi = f.min(axis=0), f.max(axis=0)
    z = (f - lo) / np.where(hi > lo, hi - lo, 1.0)
    if f.shape[1] == 2 and len(front) > 2:
        score = (1.0 - z[:, 0] - z[:, 1]) / np.sqrt(2.0)
    else:
        score = -np.linalg.norm(z, axis=1)
    return int(front[np.argmax(score)])  # argmax keeps the first of equal scores


def default_reference(points, directions: Sequence[str], margin: float = 0.1) -> np.ndarray:
    """A reference point [k] for ``hypervolume``: the nadir of the Pareto set of points [n, k]
    (its worst value in each objective) pushed further out, in each objective's own direction
    (up for minimize, down for maximize), by ``margin`` times that objective's range over the
    front; where the range is 0, by margin * |nadir value|, or by 1.0 if that is 0 too.

    The push keeps every front point strictly better than the reference, so even the extreme
    points add volume. ValueError when no row is valid or margin is not a positive number."""
    # np.isscalar (a TypeIs) narrows the declared float to numpy's whole scalar union (str,
    # bytes, ...), which has no `>`; the guard is for callers that break the annotation, and
    # the comparison is of the float the signature declares (cast: no runtime effect)
    if not (np.isscalar(margin) and np.isfinite(margin) and cast(float, margin) > 0):
        raise ValueError(f"margin must be a positive finite number, got {margin!r}")
    signs = _signs(directions)
    x, valid = _minimised(points, signs)
    front = _front_sorted(x, valid)
    if len(front) == 0:
        raise ValueError("no valid points (rows without NaN or inf): the Pareto front is empty")
    f = x[front]
    nadir = f.max(axis=0)
    span = nadir - f.min(axis=0)
    push = np.where(span > 0, margin * span, margin * np.abs(nadir))
    push = np.where(push > 0, push, 1.0)
    # at large magnitudes a small push can round away; keep the reference strictly worse
    ref = np.maximum(nadir + push, np.nextafter(nadir, np.inf))
    return ref * signs
