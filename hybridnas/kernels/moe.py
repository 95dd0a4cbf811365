"""Dropless expert computation for MoE: every routed token is computed, none dropped.

Tokens arrive sorted by expert: x [M, D] where the first counts[0] rows go to expert 0, and
so on. Expert e is a SwiGLU with w_gate[e], w_up[e] [D, F] and w_down[e] [F, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["expert_swiglu"]


def expert_swiglu(x: Tensor, counts: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """[M, D] tokens sorted by expert, counts [E] -> [M, D]. A loop over experts: the
    reference for a grouped-GEMM fast path."""
    outs = []
    for e, rows in enumerate(torch.split(x, counts.tolist())):
        outs.append((F.silu(rows @ w_gate[e]) * (rows @ w_up[e])) @ w_down[e])
    return torch.cat(outs)
