"""Decode caches: per-layer state for generating one token at a time.

Sizes match the cost model's ``cache_bytes``: attention keeps keys and values for
min(max_len, window) positions; Mamba-2 keeps its SSM state and the last K conv inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeAlias

from torch import Tensor

__all__ = ["AttentionCache", "Mamba2Cache", "HybridBlockCache", "LayerCache", "LMCache"]


@dataclass
class AttentionCache:
    k: Tensor  # [batch, n_kv_heads, slots, head_dim]; a window keeps a ring buffer
    v: Tensor


@dataclass
class Mamba2Cache:
    conv: Tensor  # [batch, d_inner + 2*G*N, K]: the last K conv inputs
    ssm: Tensor  # [batch, n_heads, head_dim, d_state]


@dataclass
class HybridBlockCache:
    attn: AttentionCache
    ssm: Mamba2Cache


LayerCache: TypeAlias = AttentionCache | Mamba2Cache | HybridBlockCache  # one mixer layer's


@dataclass
class LMCache:
    layers: list[LayerCache | None]  # one entry per pattern position; None for FFN layers
    max_len: int
    position: Tensor  # 0-d int64 on the cache's device: the next token's position, read by
    # the decode step on the device (no host sync; a CUDA graph replays it unchanged)
    pos: int = 0  # the same count on the host, for bounds checks without a sync

    @property
    def tensors(self) -> list[Tensor]:
        out: list[Tensor] = []
        for layer in self.layers:
            out.extend(_tensors(layer))
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


def _tensors(obj: LayerCache | Tensor | None) -> list[Tensor]:
    """Every tensor of a layer's cache, in field order."""
    if obj is None:
        return []
    if isinstance(obj, Tensor):
        return [obj]
    return [t for field in fields(obj) for t in _tensors(getattr(obj, field.name))]
