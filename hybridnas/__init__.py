"""hybridnas: architecture search for hybrid attention / Mamba-2 language models."""

from hybridnas.search_space import ArchSpec

__all__ = ["ArchSpec"]
__version__ = "0.1.0"
