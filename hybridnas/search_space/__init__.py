"""What one candidate is: ``ArchSpec``, the layout-pattern language and layout builders."""

from hybridnas.search_space.errors import SpecError
from hybridnas.search_space.layout import PLACEMENTS, layout, placement_indices
from hybridnas.search_space.pattern import SYMBOLS, PatternError, check_pattern
from hybridnas.search_space.spec import ArchSpec, AttnConfig, HybridConfig, MoEConfig, SSMConfig

__all__ = [
    "ArchSpec",
    "AttnConfig",
    "SSMConfig",
    "HybridConfig",
    "MoEConfig",
    "SpecError",
    "PatternError",
    "SYMBOLS",
    "check_pattern",
    "layout",
    "placement_indices",
    "PLACEMENTS",
]
