"""The multi-fidelity rule: Pareto fronts and asynchronous successive halving on them."""

import random

import pytest

from hybridnas.studies.halving import ParetoHalving, dominates, front_indices


def test_fronts_of_a_known_set():
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (6, 6)]
    assert front_indices(points) == [0, 0, 0, 1, 2, 3]
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (1, 2)) and not dominates((1, 3), (2, 1))


def test_fronts_agree_with_brute_force_on_random_points():
    rng = random.Random(0)
    points = [(rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)) for _ in range(60)]
    fronts = front_indices(points)
    for i, p in enumerate(points):  # a point's front is one past the worst front dominating it
        dominating = [fronts[j] for j, q in enumerate(points) if dominates(q, p)]
        assert fronts[i] == (max(dominating) + 1 if dominating else 0)


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
    decide = lambda trial, loss: scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial), {**at_rung, "val_loss": loss})
    assert decide("first", 3.0) == TrialScheduler.CONTINUE
    assert decide("baseline", 4.0) == TrialScheduler.CONTINUE  # worse, protected
    assert decide("worse", 3.5) == TrialScheduler.STOP  # ranked against both
    assert scheduler.stopped == {"worse"}
    assert decide("best", 2.0) == TrialScheduler.CONTINUE
