"""A learning rate per candidate: the trainer's lr_grid sweep inside the first rung, and the
study rows that record the choice. fp32 on CPU with the same batches, so the winner's
continued run can be compared with a fresh run at its rate exactly."""

import math

import optuna
import pytest
import ray

from hybridnas.cluster import ensure_ray
from hybridnas.studies.config import StudyConfigError, parse_study_config
from hybridnas.studies.launch import launch
from hybridnas.studies.storage import ResultsStore
from hybridnas.trainer import make_plan, train
from hybridnas.trainer.config import ConfigError
from study_files import tiny_preset
from tiny_training import BUDGET, TINY, config

GRID = (0.25, 1.0, 4.0)


def test_the_sweep_continues_the_best_rate_as_if_it_had_trained_alone(token_cache):
    swept = train(TINY, BUDGET, config(token_cache, lr_grid=GRID, lr_sweep_frac=0.2))
    assert swept.status == "complete"
    tried = swept.lr_sweep
    assert [t["lr"] for t in tried] == [pytest.approx(3e-3 * m) for m in GRID]
    best = min(tried, key=lambda t: t["val_loss"])
    assert swept.lr == best["lr"] and all(math.isfinite(t["val_loss"]) for t in tried)
    assert len({t["val_loss"] for t in tried}) == len(GRID)  # the rates did train differently

    alone = train(TINY, BUDGET, config(token_cache, lr=swept.lr))
    assert swept.val_curve == alone.val_curve and swept.train_curve == alone.train_curve
    assert swept.flops == alone.flops and swept.lr == alone.lr

    # the other rates' sweep steps and every cool-down are spent beside the main run
    plan = make_plan(TINY, BUDGET, config(token_cache, lr_grid=GRID, lr_sweep_frac=0.2))
    losers = (len(GRID) - 1) * plan.tokens_after(plan.sweep_steps) * plan.flops_per_token
    cooldown = max(1, round(0.1 * plan.sweep_steps)) * plan.batch_seqs * plan.seq_len * plan.flops_per_token
    assert swept.extra_flops == pytest.approx(losers + len(GRID) * cooldown)


def test_a_rung_reports_the_chosen_rate_and_resuming_keeps_it(token_cache, tmp_path):
    settings = {"lr_grid": GRID, "lr_sweep_frac": 0.2, "rungs": (0.5,)}
    full = train(TINY, BUDGET, config(token_cache, **settings, out_dir=str(tmp_path / "a")))
    seen = []
    stopped = train(TINY, BUDGET, config(token_cache, **settings, out_dir=str(tmp_path / "b")),
                    rung_callback=lambda report: seen.append(report) or "stop")
    assert stopped.status == "stopped" and seen[0].lr == full.lr == stopped.lr
    resumed = train(TINY, BUDGET, config(token_cache, **settings, out_dir=str(tmp_path / "b")),
                    resume_from=stopped.checkpoint)
    assert resumed.lr_sweep == full.lr_sweep  # chosen once, not swept again
    assert resumed.val_curve == full.val_curve


def test_a_rate_that_diverges_loses_and_all_diverging_is_a_result(token_cache):
    one_diverges = train(TINY, BUDGET, config(token_cache, lr_grid=(1.0, 1e4), lr_sweep_frac=0.3, grad_clip=None))
    assert one_diverges.status == "complete" and one_diverges.lr == pytest.approx(3e-3)
    assert one_diverges.lr_sweep[1]["failure"] and one_diverges.lr_sweep[1]["val_loss"] is None
    every = train(TINY, BUDGET, config(token_cache, lr=30.0, lr_grid=(1.0, 2.0), lr_sweep_frac=0.3, grad_clip=None))
    assert every.status == "diverged" and every.failure["message"].startswith("every learning rate of lr_grid")
    assert len(every.lr_sweep) == 2 and every.extra_flops > 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr_grid": (1.0, 1.0)}, "listed twice"),
        ({"lr_grid": (0.5, 2.0), "lr_sweep_frac": 0.01}, "after warmup_frac=0.05"),
        ({"lr_grid": (0.5, 2.0), "lr_sweep_frac": 0.5, "rungs": (0.3,)}, "before the first rung"),
        ({"lr_grid": (0.0, 1.0)}, "lr_grid"),
    ],
)
def test_bad_sweep_settings_name_the_field(token_cache, settings, message):
    with pytest.raises(ConfigError, match=message):
        config(token_cache, **settings)


def test_a_study_refuses_a_sweep_past_its_first_rung():
    text = tiny_preset("sweep", ('progress = false', 'progress = false\nlr_grid = [0.5, 2.0]\nlr_sweep_frac = 0.6'))
    import tomllib

    with pytest.raises(StudyConfigError, match="trainer.lr_sweep_frac: 0.6 must end before the first of budget.rungs"):
        parse_study_config(tomllib.loads(text))


def test_a_study_records_each_candidates_rate(tmp_path):
    """Real Ray workers: every trained row carries the rate its sweep chose (one of the grid),
    its sweep in details, and a spend above the budget by the sweep's cost."""
    text = tiny_preset("sweep", ('progress = false', 'progress = false\nlr_grid = [0.5, 2.0]\nlr_sweep_frac = 0.2'),
                       ("rungs = [0.5]", "rungs = []"))
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ensure_ray(num_cpus=2)
    try:
        report = launch(str(path), storage=url, trials=3, progress=False)
    finally:
        ray.shutdown()
    store = ResultsStore(url)
    rows = store.rows("sweep", copies=False)
    store.dispose()
    complete = [r for r in rows if r["status"] == "complete"]
    assert len(complete) == 3
    base = 3e-3
    for row in complete:
        sweep = row["metrics"]["details"]["lr_sweep"]
        assert [s["lr"] for s in sweep] == [pytest.approx(base * 0.5), pytest.approx(base * 2.0)]
        assert row["lr"] == min(sweep, key=lambda s: s["val_loss"])["lr"]
        assert row["flops_spent"] > 1.15 * row["budget_flops"]  # the other rate's 20% and the cool-downs
    # nothing pruned: the full budget counts the sweep too, so no saving is claimed (whole
    # steps round the sweep's share at this tiny budget)
    assert abs(report.compute_saved) < 0.05
    assert optuna.load_study(study_name="sweep", storage=url).trials[0].state == optuna.trial.TrialState.COMPLETE
