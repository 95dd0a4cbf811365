"""The multi-fidelity rule: Pareto fronts and asynchronous successive halving on them."""

import math
import random

import pytest

from hybridnas.pareto import dominates, nondominated_ranks
from hybridnas.studies.halving import ParetoHalving

MIN2, MIN3 = ["minimize"] * 2, ["minimize"] * 3


def test_fronts_of_a_known_set():
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (6, 6)]
    assert nondominated_ranks(points, MIN2).tolist() == [0, 0, 0, 1, 2, 3]
    assert dominates((1, 1), (1, 2), MIN2) and not dominates((1, 2), (1, 2), MIN2)
    assert not dominates((1, 3), (2, 1), MIN2)


def test_fronts_agree_with_brute_force_on_random_points():
    rng = random.Random(0)
    points = [(rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)) for _ in range(60)]
    fronts = nondominated_ranks(points, MIN3).tolist()
    for i, p in enumerate(points):  # a point's front is one past the worst front dominating it
        dominating = [fronts[j] for j, q in enumerate(points) if dominates(q, p, MIN3)]
        assert fronts[i] == (max(dominating) + 1 if dominating else 0)


def brute_fronts(points):
    """Front of each point by peeling (all minimised; identical points share a front):
    the rule's decisions before it kept ranks incrementally."""
    def dom(a, b):
        pairs = list(zip(a, b, strict=True))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    remaining, fronts, level = set(range(len(points))), [0] * len(points), 0
    while remaining:
        front = {i for i in remaining if not any(dom(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            fronts[i] = level
        remaining -= front
        level += 1
    return fronts


def brute_decide(at_rung: dict, trial, point, eta) -> str:
    at_rung[trial] = tuple(point)
    names = list(at_rung)
    fronts = brute_fronts([at_rung[n] for n in names])
    mine = fronts[names.index(trial)]
    better = sum(f < mine for f in fronts)
    return "continue" if better < math.ceil(len(names) / eta) else "stop"


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("values", [4, 1000])  # few distinct values: many ties and duplicates
def test_decisions_match_brute_force_on_random_points(k, values):
    rng = random.Random(k * 7 + values)
    signs = tuple(rng.choice((1, -1)) for _ in range(k))
    for eta in (2, 3, 4.5):
        rule, reference = ParetoHalving(eta=eta, signs=signs), {0: {}, 1: {}}
        for i in range(150):
            rung = rng.randint(0, 1)
            seen = list(reference[rung])
            trial = rng.choice(seen) if seen and rng.random() < 0.1 else f"t{i}"  # some report again
            point = [rng.randrange(values) / 7 for _ in range(k)]
            minimised = [s * v for s, v in zip(signs, point, strict=True)]
            assert rule.decide(trial, rung, point) == brute_decide(reference[rung], trial, minimised, eta), (eta, i)


def test_invalid_points_are_ranked_last():
    """NaN or inf: in a last front of its own (hybridnas.pareto's convention)."""
    rule = ParetoHalving(eta=2, signs=(1, 1))
    assert rule.decide("a", 0, (3.0, 10.0)) == "continue"
    assert rule.decide("nan", 0, (float("nan"), 1.0)) == "stop"  # 1 better >= ceil(2/2)
    assert rule.decide("b", 0, (2.0, 20.0)) == "continue"  # the NaN point beats nothing
    assert rule.decide("inf", 0, (float("inf"), 1.0)) == "stop"
    assert rule.decide("c", 0, (4.0, 30.0)) == "continue"  # a, b better: 2 < ceil(5/2), invalid ones not
    assert rule.decide("d", 0, (5.0, 40.0)) == "stop"  # a, b, c better: 3 >= ceil(6/2)


def test_single_objective_is_asha():
    """One objective: a trial goes on iff fewer than ceil(n/eta) earlier arrivals beat it."""
    rule = ParetoHalving(eta=3, signs=(1,))
    decisions = [rule.decide(f"t{i}", 0, (loss,)) for i, loss in enumerate([5.0, 4.0, 6.0, 3.0, 7.0, 4.5])]
    # n=1: first goes on; n=2: 4.0 is best; n=3: 6.0 has 2 better >= ceil(3/3)=1 -> stop;
    # n=4: 3.0 best; n=5: 7.0 worst; n=6: 4.5 has 2 better (3.0, 4.0) < ceil(6/3)=2? no -> stop
    assert decisions == ["continue", "continue", "stop", "continue", "stop", "stop"]


def test_cost_objectives_keep_a_cheap_but_worse_trial():
    """(loss, params): a small model with a worse loss is on the first front and goes on."""
    rule = ParetoHalving(eta=3, signs=(1, 1))
    assert rule.decide("big", 1, (3.0, 100.0)) == "continue"
    assert rule.decide("mid", 1, (3.5, 100.0)) == "stop"  # dominated by big
    assert rule.decide("small", 1, (4.0, 10.0)) == "continue"  # cheaper: a new front member


def test_maximised_objectives_flip_sign():
    rule = ParetoHalving(eta=2, signs=(1, -1))  # minimise loss, maximise decode tokens/s
    assert rule.decide("a", 0, (3.0, 100.0)) == "continue"
    assert rule.decide("b", 0, (3.0, 50.0)) == "stop"  # slower, same loss


def test_wrong_point_length_is_an_error():
    with pytest.raises(ValueError, match="expected 2"):
        ParetoHalving(eta=3, signs=(1, 1)).decide("a", 0, (1.0,))


def test_scheduler_ranks_protected_trials_but_never_stops_them():
    """Baselines and enqueued candidates shape the rung but always go on."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from hybridnas.studies.driver import ParetoScheduler

    scheduler = ParetoScheduler(ParetoHalving(eta=100, signs=(1,)), {})
    scheduler.protected.add("baseline")
    at_rung = {"rung": 0, "final": False}

    def decide(trial, loss):
        return scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial), {**at_rung, "val_loss": loss})

    assert decide("first", 3.0) == TrialScheduler.CONTINUE
    assert decide("baseline", 4.0) == TrialScheduler.CONTINUE  # worse, protected
    assert decide("worse", 3.5) == TrialScheduler.STOP  # ranked against both
    assert scheduler.stopped == {"worse"}
    assert decide("best", 2.0) == TrialScheduler.CONTINUE
