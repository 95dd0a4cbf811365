"""Causal depthwise conv1d (Mamba-2's short convolution): reference implementations.

x [batch, C, T], weight [C, K], bias [C] or None. Output position t sees inputs t-K+1..t.
The decode state holds the last K inputs, [batch, C, K] (mamba_ssm's layout).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d", "causal_conv1d_step", "conv_state_from_prefix"]


def _activate(y: Tensor, activation: str | None) -> Tensor:
    if activation is None:
        return y
    if activation == "silu":
        return F.silu(y)
    raise ValueError(f"activation={activation!r}: expected None or 'silu'")


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """[batch, C, T] -> [batch, C, T]."""
    k = weight.shape[-1]
    y = F.conv1d(F.pad(x, (k - 1, 0)), weight.unsqueeze(1), bias, groups=int(weight.shape[0]))
    return _activate(y, activation)


def causal_conv1d_step(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """One token: x [batch, C]; shifts ``conv_state`` [batch, C, K] in place; returns [batch, C]."""
    conv_state.copy_(conv_state.roll(-1, dims=-1))
    conv_state[:, :, -1] = x
    y = (conv_state * weight).sum(dim=-1)
    if bias is not None:
        y = y + bias
    return _activate(y, activation)


def conv_state_from_prefix(x: Tensor, kernel_size: int) -> Tensor:
    """The decode state after a prefill of x [batch, C, T]: its last K inputs, zero-padded."""
    t = x.shape[-1]
    return F.pad(x, (max(0, kernel_size - t), 0))[..., -kernel_size:]
