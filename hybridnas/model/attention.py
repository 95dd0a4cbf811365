"""Attention mixers ``*`` (global) and ``W`` (sliding window): grouped-query attention with
optional rotary position embeddings, no biases (Llama-3.2 style, as in Bae et al.)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.types import Device

from hybridnas import kernels
from hybridnas.model.cache import AttentionCache
from hybridnas.model.flags import RESIDUAL_OUT, set_flag
from hybridnas.search_space import ArchSpec

__all__ = ["Attention", "SlidingWindowAttention", "apply_rope"]


def rope_angles(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin [T, head_dim/2] for integer positions [T]."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + d/2) of x [batch, heads, T, d] by the position's angle
    (the "rotate half" layout of Llama / GPT-NeoX)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return rotated.to(x.dtype)


class Attention(nn.Module):
    """Causal GQA attention. [batch, T, d_model] -> [batch, T, d_model].

    The intra-layer hybrid reuses it as its attention branch with fewer heads and no output
    projection (then the output is [batch, T, n_heads * head_dim])."""

    window: int | None = None

    def __init__(
        self,
        d_model: int,
        *,
        layer_idx: int,
        spec: ArchSpec,
        n_heads: int | None = None,
        n_kv_heads: int | None = None,
        out_proj: bool = True,
    ) -> None:
        super().__init__()
        a = spec.attn
        self.layer_idx = layer_idx
        self.n_heads = n_heads or a.n_heads
        self.n_kv_heads = n_kv_heads or a.n_kv_heads
        self.head_dim = a.head_dim
        self.rope_theta = a.rope_theta if a.rope else None
        self.wq = nn.Linear(d_model, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, d_model, bias=False) if out_proj else None
        if self.wo is not None:
            set_flag(self.wo, RESIDUAL_OUT)

    def _qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [batch, T, d_model] -> q [batch, Hq, T, d], k and v [batch, Hkv, T, d]."""
        q = self.wq(x).unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.wk(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.wv(x).unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2)
        if self.rope_theta is not None:
            cos, sin = rope_angles(positions, self.head_dim, self.rope_theta)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def _out(self, y: Tensor) -> Tensor:
        """[batch, Hq, T, d] -> [batch, T, d_model] (or the branch width without wo)."""
        y = y.transpose(1, 2).flatten(-2)
        if self.wo is None:
            return y
        out: Tensor = self.wo(y)
        return out

    def forward(self, x: Tensor, cache: AttentionCache | None = None) -> Tensor:
        """x [batch, T, d_model]; with ``cache`` (empty), also fills it: a prefill."""
        t = x.shape[1]
        q, k, v = self._qkv(x, torch.arange(t, device=x.device))
        if cache is not None:
            slots = cache.k.shape[2]
            kept = min(t, slots)  # a window keeps only its last positions, at pos % slots
            where = torch.arange(t - kept, t, device=x.device) % slots
            cache.k[:, :, where] = k[:, :, t - kept :].to(cache.k.dtype)
            cache.v[:, :, where] = v[:, :, t - kept :].to(cache.v.dtype)
        return self._out(kernels.causal_attention(q, k, v, window=self.window))

    def allocate_cache(
        self, batch: int, max_len: int, *, device: Device = None, dtype: torch.dtype | None = None
    ) -> AttentionCache:
        """Zeroed keys and values [batch, n_kv_heads, slots, head_dim]: slots = max_len, or the
        window when shorter."""
        slots = max_len if self.window is None else min(self.window, max_len)
        shape = (batch, self.n_kv_heads, slots, self.head_dim)
        return AttentionCache(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        )

    def step(self, x: Tensor, cache: AttentionCache, position: Tensor) -> Tensor:
        """One token x [batch, d_model] at ``position`` (a 0-d integer tensor on x's device,
        so that no step waits for the host and the step can be captured in a CUDA graph)
        -> [batch, d_model]. The caller keeps ``position`` below the cache's length."""
        slots = cache.k.shape[2]
        q, k, v = self._qkv(x.unsqueeze(1), position.reshape(1))
        slot = (position % slots).reshape(1)  # a window keeps a ring buffer
        cache.k.index_copy_(2, slot, k.to(cache.k.dtype))
        cache.v.index_copy_(2, slot, v.to(cache.v.dtype))
        n_valid = torch.clamp(position + 1, max=slots)
        y = kernels.attention_decode(q, cache.k.to(q.dtype), cache.v.to(q.dtype), n_valid)
        return self._out(y).squeeze(1)


class SlidingWindowAttention(Attention):
    """``W``: each query sees the ``attn.window`` most recent positions, itself included."""

    def __init__(self, d_model: int, *, layer_idx: int, spec: ArchSpec, **kwargs: Any) -> None:
        super().__init__(d_model, layer_idx=layer_idx, spec=spec, **kwargs)
        self.window = spec.attn.window
