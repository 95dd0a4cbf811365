"""The intra-layer hybrid mixer ``H``: attention and Mamba-2 side by side on split heads,
merged (Bae et al. 2025; Hymba; Falcon-H1).

    f(x) = Out( gate(x) * merge( alpha_a * Norm_a(Attn(x)), alpha_s * Norm_s(SSM(x)) ) )

Both branches read the block input. Per ``spec.hybrid``:
- norm: per-branch none / RMSNorm / GroupNorm (one group per head). Bae et al.: crucial,
  the branches' output scales differ by more than 10x.
- scale: alpha none / one learned scalar / one learned value per channel, per branch.
- out_proj: ``separate`` projects each branch to d_model before merging (Falcon-H1, and
  Bae et al.'s best); ``joint`` merges the branch outputs and projects once (Hymba).
- merge: mean, add, sub (attention minus SSM), concat (+ projection), or merge_attention:
  per token and head, softmax over the two branch outputs of <W_q x, W_k y_b> / sqrt(d),
  so the mix is learned and input-dependent.
- gate: none / sigmoid(W_g x) on the merged output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.types import Device

from hybridnas.model.attention import Attention
from hybridnas.model.cache import HybridBlockCache
from hybridnas.model.flags import RESIDUAL_OUT, set_flag
from hybridnas.model.mamba2 import Mamba2
from hybridnas.model.norms import branch_norm
from hybridnas.search_space import ArchSpec

__all__ = ["ParallelHybrid"]


def _scale(kind: str, dim: int) -> nn.Parameter | None:
    """A branch's learned scale alpha: none, [1] (scalar) or [dim] (vector), ones."""
    if kind == "none":
        return None
    return nn.Parameter(torch.ones(1 if kind == "scalar" else dim))


def _residual_out(linear: nn.Linear) -> nn.Linear:
    set_flag(linear, RESIDUAL_OUT)
    return linear


class ParallelHybrid(nn.Module):
    """[batch, T, d_model] -> [batch, T, d_model]; widths in ``spec.dims.hybrid``."""

    def __init__(self, d_model: int, *, layer_idx: int, spec: ArchSpec) -> None:
        super().__init__()
        h, dims = spec.hybrid, spec.dims.hybrid
        assert dims is not None, "a validated spec with H has hybrid dims"
        self.merge, self.separate = h.merge, h.out_proj == "separate"
        self.attn = Attention(
            d_model,
            layer_idx=layer_idx,
            spec=spec,
            n_heads=dims.attn_heads,
            n_kv_heads=dims.attn_kv_heads,
            out_proj=False,
        )
        self.ssm = Mamba2(d_model, layer_idx=layer_idx, spec=spec, d_inner=dims.d_ssm, out_proj=False)
        self.attn_norm = branch_norm(h.norm, dims.d_attn, groups=dims.attn_heads)
        self.ssm_norm = branch_norm(h.norm, dims.d_ssm, groups=dims.ssm_heads)
        self.attn_scale = _scale(h.scale, dims.d_attn)
        self.ssm_scale = _scale(h.scale, dims.d_ssm)

        m = dims.merge_width
        if self.separate:
            self.attn_out = _residual_out(nn.Linear(dims.d_attn, d_model, bias=False))
            self.ssm_out = _residual_out(nn.Linear(dims.d_ssm, d_model, bias=False))
            if h.merge == "concat":
                self.concat_proj = _residual_out(nn.Linear(2 * d_model, d_model, bias=False))
        else:  # joint: one projection from the merged width (the concatenation for concat)
            self.out_proj = _residual_out(nn.Linear(m, d_model, bias=False))
        if h.merge == "merge_attention":
            self.merge_head_dim = spec.attn.head_dim
            self.merge_q = nn.Linear(d_model, m, bias=False)
            self.merge_k = nn.Linear(m, m, bias=False)
        self.gate = nn.Linear(d_model, m, bias=False) if h.gate == "sigmoid" else None

    def _merge(self, a: Tensor, s: Tensor, x: Tensor) -> Tensor:
        """Branch outputs a [..., d_attn], s [..., d_ssm] and block input x [..., d_model]
        -> [..., d_model]. Every operation is per token, so decode shares it."""
        a, s = self.attn_norm(a), self.ssm_norm(s)
        if self.attn_scale is not None and self.ssm_scale is not None:  # both set, or neither (one spec field)
            a, s = a * self.attn_scale, s * self.ssm_scale
        if self.separate:
            a, s = self.attn_out(a), self.ssm_out(s)
        if self.merge == "mean":
            y = (a + s) / 2
        elif self.merge == "add":
            y = a + s
        elif self.merge == "sub":
            y = a - s
        elif self.merge == "concat":
            y = torch.cat([a, s], dim=-1)
            if self.separate:
                y = self.concat_proj(y)
        else:
            y = self._merge_attention(a, s, x)
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x))
        if self.separate:
            return y
        out: Tensor = self.out_proj(y)
        return out

    def _merge_attention(self, a: Tensor, s: Tensor, x: Tensor) -> Tensor:
        """Per head of ``merge_head_dim`` channels: weights over {a, s} = softmax of
        <W_q x, W_k y_b> / sqrt(d). a, s [..., m], x [..., d_model] -> [..., m]."""
        d = self.merge_head_dim
        branches = torch.stack([a, s], dim=-2)  # [..., 2, m]
        q = self.merge_q(x).unflatten(-1, (-1, d)).unsqueeze(-3)  # [..., 1, heads, d]
        k = self.merge_k(branches).unflatten(-1, (-1, d))  # [..., 2, heads, d]
        weights = torch.softmax((q * k).sum(-1).float() / math.sqrt(d), dim=-2).to(a.dtype)  # [..., 2, heads]
        mixed = (weights.unsqueeze(-1) * torch.unflatten(branches, -1, (-1, d))).sum(-3)  # [..., heads, d]
        return mixed.flatten(-2)

    def forward(self, x: Tensor, cache: HybridBlockCache | None = None) -> Tensor:
        """x [batch, T, d_model]; with ``cache`` (empty), also fills it: a prefill."""
        a = self.attn(x, cache.attn if cache is not None else None)
        s = self.ssm(x, cache.ssm if cache is not None else None)
        return self._merge(a, s, x)

    def allocate_cache(
        self, batch: int, max_len: int, *, device: Device = None, dtype: torch.dtype | None = None
    ) -> HybridBlockCache:
        """Both branches' caches (see Attention.allocate_cache and Mamba2.allocate_cache)."""
        return HybridBlockCache(
            self.attn.allocate_cache(batch, max_len, device=device, dtype=dtype),
            self.ssm.allocate_cache(batch, max_len, device=device, dtype=dtype),
        )

    def step(self, x: Tensor, cache: HybridBlockCache, position: Tensor) -> Tensor:
        """One token x [batch, d_model] at ``position`` (0-d tensor) -> [batch, d_model]."""
        return self._merge(self.attn.step(x, cache.attn, position), self.ssm.step(x, cache.ssm), x)
