"""Normalisations: RMSNorm (pre-norm of every layer), Mamba-2's gated RMSNorm, and the
per-branch norms of the intra-layer hybrid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridnas import kernels

__all__ = ["RMSNorm", "GatedRMSNorm", "GroupNormPerToken", "branch_norm"]

EPS = 1e-5


class RMSNorm(nn.RMSNorm):
    """x / rms(x) * weight over the last dim, computed in fp32 whatever the model's dtype.
    [..., D] -> [..., D]."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, eps=EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm (mamba_ssm ``RMSNormGated``, norm after gate): RMS-normalise
    x * silu(z) within groups of ``group_size`` channels, then scale (``kernels.gated_rms_norm``).
    [..., C] -> [..., C]."""

    def __init__(self, dim: int, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        y: Tensor = kernels.gated_rms_norm(x, z, self.weight, self.group_size, EPS)
        return y


class GroupNormPerToken(nn.GroupNorm):
    """GroupNorm over the channels of each token (groups = heads). [..., C] -> [..., C]."""

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        y = F.group_norm(flat, self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype).view(x.shape)


def branch_norm(kind: str, dim: int, groups: int) -> nn.Module:
    """The intra-layer hybrid's per-branch norm: none, rms (weight) or group (weight, bias)."""
    if kind == "none":
        return nn.Identity()
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "group":
        return GroupNormPerToken(groups, dim, eps=EPS)
    raise ValueError(f"hybrid.norm={kind!r}: expected none, rms or group")
