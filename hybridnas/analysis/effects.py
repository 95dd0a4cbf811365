"""Which design choices matter: effect summaries and parameter importance.

- :func:`effect_summary`: a metric grouped by one or more search dimensions (e.g. val_loss by
  fusion x merge_op): trials per group, mean, spread across trials, best and worst, and the
  spread across seeds (the mean, over the group's trials, of each trial's standard deviation
  over its seeds; it tells whether a gap between groups is larger than seed noise).
- :func:`param_importances`: Optuna's importance evaluators, per objective of a
  multi-objective study (PED-ANOVA by default: it needs no scikit-learn and is made for the
  few hundred trials a search has).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence

from hybridnas.analysis.study import ObjectiveRef

__all__ = ["effect_summary", "param_importances", "EVALUATORS"]


def effect_summary(rows: Sequence[dict], by: Sequence[str], metric: str = "val_loss") -> list[dict]:
    """One dict per group of ``rows`` sharing their values of the ``by`` columns, sorted by
    mean: {**group, "n", "mean", "std", "best", "worst", "seed_std", "n_seeds"}. Rows without
    the metric are left out; ``std`` is None for a group of one trial, ``seed_std`` None
    without multi-seed trials. "best" follows the metric's direction."""
    objective = ObjectiveRef.parse(metric)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not math.isnan(objective.value(row)):
            groups.setdefault(tuple(row.get(d) for d in by), []).append(row)
    out = []
    for key, members in groups.items():
        values = [objective.value(r) for r in members]
        seeds = [r.get("val_loss_seeds") or (r.get("metrics") or {}).get("val_loss_seeds") or [] for r in members]
        seed_stds = [statistics.stdev(s) for s in seeds if len(s) >= 2]
        best, worst = (min, max) if objective.direction == "minimize" else (max, min)
        out.append({
            **dict(zip(by, key, strict=True)),  # key: a value per `by` column
            "n": len(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) >= 2 else None,
            "best": best(values),
            "worst": worst(values),
            "seed_std": statistics.fmean(seed_stds) if seed_stds else None,
            "n_seeds": max((len(s) for s in seeds), default=0),
        })
    reverse = objective.direction == "maximize"
    return sorted(out, key=lambda g: g["mean"], reverse=reverse)


EVALUATORS = ("ped-anova", "fanova", "mean-decrease-impurity")


def param_importances(storage: str, study: str, evaluator: str = "ped-anova", seed: int = 0
                      ) -> dict[str, dict[str, float]]:
    """{objective label: {parameter: importance}} over the study's complete trials, from
    Optuna's evaluators (fanova and mean-decrease-impurity need scikit-learn). Optuna judges
    the parameters every complete trial has: a parameter sampled only under a condition
    (merge settings exist only for intra-layer fusion) is judged in a study where that
    condition always holds. An objective with fewer than two distinct values gets {}.
    Raises ValueError for an unknown evaluator or a study too small to judge."""
    import optuna
    from optuna.importance import get_param_importances

    from hybridnas.analysis.study import study_objectives
    from hybridnas.studies.storage import optuna_reader

    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator {evaluator!r}: expected one of {', '.join(EVALUATORS)}")
    reader = optuna_reader(storage)
    if reader is None:
        raise ValueError(f"study {study!r}: no Optuna study in {storage}, so no parameters to judge")
    loaded = optuna.load_study(study_name=study, storage=reader)
    complete = [t for t in loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.params and "reused_from" not in t.user_attrs]
    if len(complete) < 2:
        raise ValueError(f"study {study!r}: importance needs at least 2 complete trials with parameters, "
                         f"it has {len(complete)}")
    out: dict[str, dict[str, float]] = {}
    for index, objective in enumerate(study_objectives(storage, study)):
        values = {t.values[index] for t in complete}
        if len(values) < 2:
            out[objective.label] = {}
            continue
        out[objective.label] = _importances_of(complete, index, loaded.directions[index], evaluator, seed,
                                               get_param_importances)
    return out


def _importances_of(trials, index, direction, evaluator, seed, get_param_importances) -> dict[str, float]:
    """Optuna's evaluators judge single-objective studies: the trials are copied into an
    in-memory study whose only value is objective ``index``."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per objective about an in-memory study
    try:
        single = optuna.create_study(direction=direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in trials:
        single.add_trial(optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, value=t.values[index]))
    evaluators = {
        "ped-anova": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
        "fanova": lambda: optuna.importance.FanovaImportanceEvaluator(seed=seed),
        "mean-decrease-impurity": lambda: optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=seed),
    }
    with warnings.catch_warnings():  # PED-ANOVA warns of small regimes, as every short search has
        warnings.filterwarnings("ignore", message="Some regimes for parameter")
        result = get_param_importances(single, evaluator=evaluators[evaluator](), normalize=True)
    return {name: float(value) for name, value in result.items()}
