"""Reading a study: importance, effects, figures, the Dash dashboard and the static report.
Nothing here writes to the study database. Pareto sets, hypervolume and knees are in
:mod:`hybridnas.pareto` (numpy only, shared with the studies' pruning and query)."""

from hybridnas.analysis.effects import effect_summary, param_importances
from hybridnas.analysis.study import ObjectiveRef, StudyData, list_studies, load_study, load_trial

__all__ = [
    "ObjectiveRef",
    "StudyData",
    "effect_summary",
    "list_studies",
    "load_study",
    "load_trial",
    "param_importances",
]
