"""Mamba-2's gated RMSNorm (mamba_ssm ``RMSNormGated`` with the norm after the gate).

x, z [..., C]; weight [C]; C is a whole number of groups of ``group_size`` channels::

    y = x * silu(z);  out = y / sqrt(mean over each group of y^2 + eps) * weight

computed in fp32 and returned in x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gated_rms_norm"]


def gated_rms_norm(x: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float) -> Tensor:
    """[..., C] x [..., C] -> [..., C]: RMS-normalise x * silu(z) per group, then scale."""
    y = x.float() * F.silu(z.float())
    groups = torch.unflatten(y, -1, (-1, group_size))  # [..., C / group_size, group_size]
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    return (groups.flatten(-2) * weight).to(x.dtype)
