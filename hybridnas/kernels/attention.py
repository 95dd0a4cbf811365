"""Causal attention: reference implementations over ``scaled_dot_product_attention``.

q [batch, Hq, T, d]; k, v [batch, Hkv, T, d] with Hkv dividing Hq (grouped-query).
``window`` w: query t sees keys t-w+1..t (w keys, itself included); None means global.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_attention", "attention_decode"]


@lru_cache(maxsize=32)
def window_mask(seq_len: int, window: int, device: torch.device) -> Tensor:
    """[T, T] bool, True where query i may see key j: i - window < j <= i. Cached: a
    constant per (T, w), which also lets FLOP tracers read the window from the graph."""
    i = torch.arange(seq_len, device=device)
    offset = i[:, None] - i[None, :]
    return (offset >= 0) & (offset < window)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None = None) -> Tensor:
    """[batch, Hq, T, d] causal (optionally sliding-window) attention."""
    gqa = bool(q.shape[1] != k.shape[1])  # a Python bool also under jit tracing
    t = int(q.shape[2])  # a Python int also under jit tracing (a cache key for the mask)
    if window is None or window >= t:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = window_mask(t, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, n_valid: int | Tensor) -> Tensor:
    """One query per sequence against a KV cache: q [batch, Hq, 1, d], caches
    [batch, Hkv, S, d] of which the first ``n_valid`` slots are filled. Returns [batch, Hq, 1, d].

    ``n_valid`` is an int (only the filled slots are read) or an integer tensor, 0-d or
    [batch], on the cache's device: then every slot is read and the unfilled ones masked,
    so the shapes do not change from step to step and the step can be captured in a CUDA
    graph (the unfilled slots must then hold finite values, e.g. the zeros of a new cache).

    Slots may be in any order (a sliding window keeps a ring buffer): every filled slot is
    a past key within the window, and attention does not depend on key order."""
    batch, hq, _, d = q.shape
    hkv = k_cache.shape[1]
    # grouped-query decode: the Hq/Hkv query heads sharing a KV head become that head's
    # "query rows", so the cache is read once per KV head and never expanded
    q = q.reshape(batch, hkv, hq // hkv, d)
    if not isinstance(n_valid, Tensor):
        y = F.scaled_dot_product_attention(q, k_cache[:, :, :n_valid], v_cache[:, :, :n_valid])
        return y.reshape(batch, hq, 1, d)
    # Two batched matmuls, not SDPA: with a mask SDPA takes its memory-efficient kernel, which
    # gives each (sequence, KV head) one thread block to walk the whole cache (16 blocks for
    # an H100's 132 SMs at batch 4: 15x below memory bandwidth at 32K). cuBLAS spreads the
    # cache over the whole GPU. The softmax runs in fp32.
    scores = (q * d**-0.5) @ k_cache.transpose(-1, -2)  # [batch, Hkv, G, S]
    filled = torch.arange(k_cache.shape[2], device=k_cache.device) < n_valid.reshape(-1, 1, 1, 1)
    weights = scores.float().masked_fill(~filled, float("-inf")).softmax(-1)
    out: Tensor = weights.to(v_cache.dtype) @ v_cache  # [batch, Hkv, G, d]
    return out.reshape(batch, hq, 1, d)
