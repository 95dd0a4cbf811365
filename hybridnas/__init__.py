"""hybridnas: architecture search for hybrid attention / Mamba-2 language models."""

from typing import TYPE_CHECKING

from hybridnas.search_space import ArchSpec

if TYPE_CHECKING:
    from hybridnas.model import HybridLM

__all__ = ["ArchSpec", "HybridLM"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # HybridLM needs torch; importing it lazily keeps `hybridnas inspect` and the spec light.
    if name == "HybridLM":
        from hybridnas.model import HybridLM

        return HybridLM
    raise AttributeError(f"module 'hybridnas' has no attribute {name!r}")
