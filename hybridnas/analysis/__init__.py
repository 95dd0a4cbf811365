"""Reading a study: Pareto sets, hypervolume, knee, importance, effects, figures, the Dash
dashboard and the static report. Nothing here writes to the study database."""

from hybridnas.analysis.effects import effect_summary, param_importances
from hybridnas.analysis.pareto import (
    default_reference,
    dominates,
    hypervolume,
    hypervolume_history,
    knee_point,
    nondominated_ranks,
    pareto_front,
)
from hybridnas.analysis.study import ObjectiveRef, StudyData, list_studies, load_study, load_trial

__all__ = [
    "ObjectiveRef",
    "StudyData",
    "default_reference",
    "dominates",
    "effect_summary",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "list_studies",
    "load_study",
    "load_trial",
    "nondominated_ranks",
    "param_importances",
    "pareto_front",
]
