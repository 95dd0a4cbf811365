"""hybridnas.pareto against brute force: ranks by front peeling, hypervolume by exact
grid-cell counting and by Optuna's WFG, plus knee points, reference points and validation."""

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume

from hybridnas.pareto import (
    default_reference,
    dominates,
    hypervolume,
    hypervolume_history,
    knee_point,
    nondominated_ranks,
    pareto_front,
)
from hybridnas.studies.halving import ParetoHalving

# ----------------------------------------------------------------------------------------------
# Brute force, written independently of the module: everything minimised after a sign flip.


def signs_of(directions):
    return np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def brute_ranks(points, directions):
    """Peel fronts: O(n^2) dominance matrix, then remove the undominated rows repeatedly.
    Rows with NaN/inf go in one final front of their own."""
    x = np.asarray(points, dtype=float) * signs_of(directions)
    valid = np.isfinite(x).all(axis=1)
    le = (x[None, :, :] <= x[:, None, :]).all(axis=2)  # le[i, j]: x[j] <= x[i] everywhere
    lt = (x[None, :, :] < x[:, None, :]).any(axis=2)
    dominated_by = le & lt & valid[None, :] & valid[:, None]  # [i, j]: j dominates i
    ranks = np.full(len(x), -1)
    remaining = valid.copy()
    level = 0
    while remaining.any():
        front = remaining & ~(dominated_by & remaining[None, :]).any(axis=1)
        ranks[front] = level
        remaining &= ~front
        level += 1
    ranks[~valid] = level
    return ranks


def grid_hypervolume(points, reference, directions):
    """Exact volume of the union of boxes [p, reference]: split space into the grid cells made
    by every coordinate, and add up the cells whose lower corner some point is <= to."""
    s = signs_of(directions)
    x = np.asarray(points, dtype=float) * s
    r = np.asarray(reference, dtype=float) * s
    x = x[np.isfinite(x).all(axis=1)]
    x = x[(x < r).all(axis=1)]
    if len(x) == 0:
        return 0.0
    axes = [np.unique(np.append(x[:, j], r[j])) for j in range(len(r))]
    lower = np.stack([g.ravel() for g in np.meshgrid(*[a[:-1] for a in axes], indexing="ij")], axis=1)
    sizes = np.prod([g.ravel() for g in np.meshgrid(*[np.diff(a) for a in axes], indexing="ij")], axis=0)
    covered = (x[None, :, :] <= lower[:, None, :]).all(axis=2).any(axis=1)
    return float(sizes[covered].sum())


def random_directions(rng, k):
    return [str(d) for d in rng.choice(["minimize", "maximize"], size=k)]


def random_points(rng, n, k, kind):
    if kind == "ints":  # a small range: many ties and exact duplicates
        return rng.integers(0, 5, size=(n, k)).astype(float)
    return rng.normal(size=(n, k))


# ----------------------------------------------------------------------------------------------
# Ranks and fronts


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["ints", "floats"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_peeling(k, kind, seed):
    rng = np.random.default_rng(seed * 10 + k)
    points = random_points(rng, 150, k, kind)
    points[rng.integers(0, 150, size=20)] = points[rng.integers(0, 150, size=20)]  # duplicates
    directions = random_directions(rng, k)
    np.testing.assert_array_equal(nondominated_ranks(points, directions), brute_ranks(points, directions))


def test_ranks_many_fronts_two_objectives():
    """2000 points on a coarse grid: dozens of fronts, every kind of tie."""
    rng = np.random.default_rng(7)
    points = rng.integers(0, 40, size=(2000, 2))
    directions = ["maximize", "minimize"]
    ranks = nondominated_ranks(points, directions)
    assert ranks.max() > 20
    np.testing.assert_array_equal(ranks, brute_ranks(points, directions))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("trend", [0, 8])  # 8: later points dominate many earlier ones
def test_ranks_agree_with_the_halving_rules_incremental_ranks(k, trend):
    """ParetoHalving keeps each rung's ranks up to date point by point; after every arrival
    they are the non-dominated ranks of the points so far."""
    rng = np.random.default_rng(3)
    points = rng.integers(0, 6, size=(150, k)) - np.round(np.linspace(0, trend, 150))[:, None]
    rule = ParetoHalving(eta=3, signs=(1,) * k)
    for i, p in enumerate(points.tolist()):
        rule.decide(f"t{i}", 0, p)
        rung = rule.reached[0]
        assert rung.ranks[: rung.n].tolist() == nondominated_ranks(points[: i + 1], ["minimize"] * k).tolist()


def test_ranks_by_hand():
    # (1,5) (2,2) (5,1) front 0; (2,5) dominated only by (1,5)/(2,2): equal first objective,
    # worse second; (2,2) twice: duplicates share a front; (3,3) front 1; (6,6) front 2
    points = [(1, 5), (2, 2), (5, 1), (2, 5), (2, 2), (3, 3), (6, 6)]
    assert nondominated_ranks(points, ["minimize", "minimize"]).tolist() == [0, 0, 0, 1, 0, 1, 2]
    # one objective: the number of distinct strictly better values
    assert nondominated_ranks([[3], [1], [3], [2], [1]], ["minimize"]).tolist() == [2, 0, 2, 1, 0]
    assert nondominated_ranks([[3], [1], [3], [2], [1]], ["maximize"]).tolist() == [0, 2, 0, 1, 2]


def test_invalid_rows_rank_last():
    rng = np.random.default_rng(4)
    points = rng.normal(size=(50, 3))
    bad = [3, 17, 40]
    points[3, 1] = np.nan
    points[17] = np.nan
    points[40, 0] = -np.inf  # would dominate everything if it counted
    directions = ["minimize", "maximize", "minimize"]
    ranks = nondominated_ranks(points, directions)
    good = np.setdiff1d(np.arange(50), bad)
    assert (ranks[bad] == ranks[good].max() + 1).all()
    np.testing.assert_array_equal(ranks[good], nondominated_ranks(points[good], directions))
    assert not set(pareto_front(points, directions)) & set(bad)
    assert nondominated_ranks([[np.nan, 1.0]], ["minimize"] * 2).tolist() == [0]
    assert pareto_front([[np.nan, 1.0]], ["minimize"] * 2).tolist() == []


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["ints", "floats"])
def test_pareto_front_is_rank_zero_sorted_by_first_objective(k, kind):
    rng = np.random.default_rng(20 + k)
    points = random_points(rng, 200, k, kind)
    directions = random_directions(rng, k)
    front = pareto_front(points, directions)
    assert sorted(front.tolist()) == np.flatnonzero(brute_ranks(points, directions) == 0).tolist()
    first = points[front, 0] * signs_of(directions)[0]
    assert (np.diff(first) >= 0).all()  # best first in the first objective's own direction


def test_empty_input():
    assert nondominated_ranks([], ["minimize", "minimize"]).shape == (0,)
    assert pareto_front(np.zeros((0, 3)), ["minimize"] * 3).shape == (0,)
    assert hypervolume([], [1.0, 1.0], ["minimize"] * 2) == 0.0
    assert hypervolume_history([], [1.0, 1.0], ["minimize"] * 2).shape == (0,)


def test_dominates_matches_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(300):
        k = int(rng.integers(1, 5))
        directions = random_directions(rng, k)
        a, b = rng.integers(0, 3, size=(2, k)).astype(float)
        s = signs_of(directions)
        expected = bool(((a * s) <= (b * s)).all() and ((a * s) < (b * s)).any())
        assert dominates(a, b, directions) == expected
    assert not dominates([1, 1], [1, 1], ["minimize"] * 2)
    assert dominates([1, 2], [1, 1], ["minimize", "maximize"])
    # invalid points: dominated by every valid point, dominating nothing
    assert dominates([9, 9], [np.nan, 0], ["minimize"] * 2)
    assert not dominates([np.nan, 0], [9, 9], ["minimize"] * 2)
    assert not dominates([np.inf, 0], [np.nan, 9], ["minimize"] * 2)


# ----------------------------------------------------------------------------------------------
# Hypervolume


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["ints", "floats"])
@pytest.mark.parametrize("seed", [0, 1])
def test_hypervolume_matches_grid(k, kind, seed):
    n = {1: 30, 2: 40, 3: 30, 4: 10}[k]  # keep the grid (about n^k cells) small
    rng = np.random.default_rng(100 + 10 * seed + k)
    points = random_points(rng, n, k, kind)
    directions = random_directions(rng, k)
    s = signs_of(directions)
    # some points are outside the box in some objective, some level with it
    reference = np.quantile(points * s, 0.7 if k < 4 else 0.9, axis=0)  # minimised space
    if kind == "ints":
        reference = np.ceil(reference)
    reference = reference * s
    expected = grid_hypervolume(points, reference, directions)
    assert expected > 0
    assert hypervolume(points, reference, directions) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("k,n", [(2, 500), (3, 300)])
def test_hypervolume_matches_optuna(k, n):
    rng = np.random.default_rng(200 + k)
    points = rng.random(size=(n, k)) ** 2 + rng.normal(scale=0.01, size=(n, k))
    directions = random_directions(rng, k)
    s = signs_of(directions)
    x = points * s
    reference = np.quantile(x, 0.9, axis=0)
    inside = x[(x < reference).all(axis=1)]
    expected = compute_hypervolume(inside, reference)
    assert hypervolume(points, reference * s, directions) == pytest.approx(expected, rel=1e-10)


def test_hypervolume_by_hand():
    # boxes [1,4]x[3,4] (area 3) and [2,4]x[1,4] (area 6) overlap in [2,4]x[3,4] (area 2);
    # (3, 3) is dominated and adds nothing
    assert hypervolume([[1, 3], [2, 1], [3, 3]], [4, 4], ["minimize"] * 2) == 7.0
    # the same maximised, mirrored
    assert hypervolume([[-1, -3], [-2, -1]], [-4, -4], ["maximize"] * 2) == 7.0
    assert hypervolume([[2.0], [0.5], [3.0]], [4.0], ["minimize"]) == 3.5
    assert hypervolume([[1, 1, 1]], [2, 3, 4], ["minimize"] * 3) == 6.0
    # level with the reference in one objective: contributes nothing
    assert hypervolume([[1, 4], [4, 1]], [4, 4], ["minimize"] * 2) == 0.0
    # invalid rows are ignored
    assert hypervolume([[1, 3], [np.nan, 0], [-np.inf, 0]], [4, 4], ["minimize"] * 2) == 3.0


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_hypervolume_history_is_prefix_hypervolume(k):
    n = {1: 60, 2: 200, 3: 60, 4: 25}[k]
    rng = np.random.default_rng(300 + k)
    points = rng.normal(size=(n, k))
    points[rng.integers(0, n, size=5), 0] = np.nan
    directions = random_directions(rng, k)
    s = signs_of(directions)
    reference = np.nanquantile(points * s, 0.8, axis=0) * s
    history = hypervolume_history(points, reference, directions)
    assert history.shape == (n,)
    assert (np.diff(history) >= 0).all()
    assert history[-1] == pytest.approx(hypervolume(points, reference, directions), rel=1e-10)
    expected = [hypervolume(points[: i + 1], reference, directions) for i in range(n)]
    np.testing.assert_allclose(history, expected, rtol=1e-10, atol=1e-12)
    assert history[-1] > history[0]


def test_hypervolume_history_carries_forward_over_nan():
    points = [[np.nan, np.nan], [2, 2], [np.nan, 0], [1, 3], [3, 3]]
    assert hypervolume_history(points, [4, 4], ["minimize"] * 2).tolist() == [0, 4, 4, 5, 5]


def test_hypervolume_history_of_many_points_in_2d():
    # its speed (the 2-D sweep: milliseconds for 1,000 points) is measured in benchmarks/pareto.py
    rng = np.random.default_rng(6)
    points = rng.random(size=(1000, 2))
    history = hypervolume_history(points, [1.0, 1.0], ["minimize"] * 2)
    assert history[-1] == pytest.approx(hypervolume(points, [1.0, 1.0], ["minimize"] * 2), rel=1e-10)


# ----------------------------------------------------------------------------------------------
# Knee and reference points


def test_knee_of_a_convex_front():
    # normalised front: (0, 1), (0.1, 0.2), (0.5, 0.1), (1, 0); (0.1, 0.2) is farthest below
    # the chord x + y = 1. Dominated points and a maximised copy must not change that.
    front = [(0, 10), (1, 2), (5, 1), (10, 0)]
    dominated = [(2, 3), (6, 6), (10, 10), (1, 3)]
    order = [5, 0, 7, 3, 1, 6, 2, 4]
    points = np.array(front + dominated, dtype=float)[order]
    knee = order.index(1)
    assert knee_point(points, ["minimize", "minimize"]) == knee
    assert knee_point(points * [1, -1], ["minimize", "maximize"]) == knee


def test_knee_of_a_concave_front_is_an_extreme():
    # (0.8, 0.8) lies beyond the chord: a worse trade-off than either extreme
    points = [(0.8, 0.8), (0.0, 1.0), (1.0, 0.0)]
    assert knee_point(points, ["minimize", "minimize"]) == 1


def test_knee_small_fronts_and_three_objectives():
    # two front points, normalised to (0, 1) and (1, 0): equally close to the ideal point, so
    # the tie goes to the first in pareto_front order (the better first objective)
    assert knee_point([(3, 0), (0, 3), (4, 4)], ["minimize", "minimize"]) == 1
    # three objectives: closest to the ideal point in normalised space
    points = [(0, 1, 1), (1, 0, 1), (1, 1, 0), (0.3, 0.3, 0.3), (0.2, 0.6, 0.5), (2, 2, 2)]
    assert knee_point(points, ["minimize"] * 3) == 3
    assert knee_point([(5,), (2,), (2,)], ["minimize"]) == 1
    with pytest.raises(ValueError, match="empty"):
        knee_point([(np.nan, 1.0)], ["minimize", "minimize"])


def test_default_reference_by_hand():
    # minimise the first, maximise the second; front (1, 2), (3, 4), (5, 10): ranges 4 and 8
    points = [(1, 2), (3, 4), (5, 10), (6, 1), (np.nan, 100)]
    ref = default_reference(points, ["minimize", "maximize"], margin=0.25)
    np.testing.assert_allclose(ref, [5 + 1, 2 - 2])
    # zero range: margin * |value|, or 1.0 when the value is 0
    ref = default_reference([(2.0, 0.0, -4.0)], ["minimize", "minimize", "maximize"])
    np.testing.assert_allclose(ref, [2.2, 1.0, -4.4])


def test_default_reference_bounds_every_front_point():
    rng = np.random.default_rng(8)
    points = rng.normal(size=(300, 3))
    directions = ["maximize", "minimize", "maximize"]
    ref = default_reference(points, directions)
    s = signs_of(directions)
    front = pareto_front(points, directions)
    assert ((points[front] * s) < ref * s).all()
    assert hypervolume(points, ref, directions) > 0
    with pytest.raises(ValueError, match="margin"):
        default_reference(points, directions, margin=0)


# ----------------------------------------------------------------------------------------------
# Validation

CALLS = {
    "nondominated_ranks": lambda d: nondominated_ranks([[1, 2]], d),
    "pareto_front": lambda d: pareto_front([[1, 2]], d),
    "dominates": lambda d: dominates([1, 2], [2, 1], d),
    "hypervolume": lambda d: hypervolume([[1, 2]], [3, 3], d),
    "hypervolume_history": lambda d: hypervolume_history([[1, 2]], [3, 3], d),
    "knee_point": lambda d: knee_point([[1, 2]], d),
    "default_reference": lambda d: default_reference([[1, 2]], d),
}


@pytest.mark.parametrize("name", CALLS)
def test_bad_direction_is_named(name):
    with pytest.raises(ValueError, match=r"'maximise'.*'minimize', 'maximize'"):
        CALLS[name](["minimize", "maximise"])
    with pytest.raises(ValueError, match="string 'minimize'"):
        CALLS[name]("minimize")


@pytest.mark.parametrize("name", CALLS)
def test_length_mismatch(name):
    with pytest.raises(ValueError, match="3"):
        CALLS[name](["minimize"] * 3)


def test_bad_shapes_and_references():
    with pytest.raises(ValueError, match="2-D"):
        nondominated_ranks([1.0, 2.0], ["minimize", "minimize"])
    with pytest.raises(ValueError, match="reference must have 2"):
        hypervolume([[1, 2]], [3, 3, 3], ["minimize"] * 2)
    with pytest.raises(ValueError, match="finite"):
        hypervolume([[1, 2]], [3, np.nan], ["minimize"] * 2)
