"""What one candidate is: ``ArchSpec``, the layout-pattern language and layout builders, and its
analytic cost (``cost``: parameters, FLOPs per token, cache bytes; pure Python)."""

from hybridnas.search_space.cost import CostReport, LayerCost, cost, train_flops_per_token
from hybridnas.search_space.errors import SpecError
from hybridnas.search_space.layout import PLACEMENTS, layout, placement_indices
from hybridnas.search_space.load import load_spec
from hybridnas.search_space.pattern import SYMBOLS, PatternError, check_pattern
from hybridnas.search_space.spec import ArchSpec, AttnConfig, HybridConfig, MoEConfig, SSMConfig

__all__ = [
    "ArchSpec",
    "AttnConfig",
    "SSMConfig",
    "HybridConfig",
    "MoEConfig",
    "SpecError",
    "load_spec",
    "PatternError",
    "SYMBOLS",
    "check_pattern",
    "layout",
    "placement_indices",
    "PLACEMENTS",
    "cost",
    "CostReport",
    "LayerCost",
    "train_flops_per_token",
]
