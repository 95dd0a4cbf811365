"""nn.Modules for every layer symbol and ``HybridLM``, which assembles a layout."""

from hybridnas.model.attention import Attention, SlidingWindowAttention
from hybridnas.model.cache import LMCache
from hybridnas.model.ffn import SwiGLU
from hybridnas.model.graphs import CUDAGraphStep, GraphCaptureError
from hybridnas.model.hybrid import ParallelHybrid
from hybridnas.model.lm import LAYERS, HybridLM, LMLoss
from hybridnas.model.mamba2 import Mamba2
from hybridnas.model.moe import MoE

__all__ = [
    "HybridLM",
    "LMLoss",
    "LMCache",
    "LAYERS",
    "Attention",
    "SlidingWindowAttention",
    "Mamba2",
    "ParallelHybrid",
    "SwiGLU",
    "MoE",
    "CUDAGraphStep",
    "GraphCaptureError",
]
