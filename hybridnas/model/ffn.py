"""The dense FFN ``-``: SwiGLU (Shazeer 2020), as in Llama."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hybridnas.model.flags import RESIDUAL_OUT, set_flag
from hybridnas.search_space import ArchSpec

__all__ = ["SwiGLU"]


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)). [..., d_model] -> [..., d_model].

    ``d_ffn`` defaults to the spec's; MoE uses it for its shared experts."""

    def __init__(self, d_model: int, *, layer_idx: int, spec: ArchSpec, d_ffn: int | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.d_ffn = d_ffn or spec.d_ffn
        self.w_in = nn.Linear(d_model, 2 * self.d_ffn, bias=False)  # gate and up, fused
        self.w_down = nn.Linear(self.d_ffn, d_model, bias=False)
        set_flag(self.w_down, RESIDUAL_OUT)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., d_model] -> [..., d_model]."""
        gate, up = self.w_in(x).chunk(2, dim=-1)  # [..., d_ffn] each
        y: Tensor = self.w_down(F.silu(gate) * up)
        return y
