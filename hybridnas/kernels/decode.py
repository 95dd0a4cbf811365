# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators
# mypy: disable-error-code="import-not-found,import-untyped"
# (the @triton.jit kernels take Triton's own untyped arguments, and triton is not installed on
# every machine mypy runs on; the launchers below are typed)
"""Split-KV ("flash-decoding") attention decode in Triton: the CUDA fast path of
``attention_decode`` (reference: ``hybridnas.kernels.attention.attention_decode``).

One query per sequence against a long KV cache is a pure read of the cache. Giving each
(sequence, KV head) one program leaves most of the GPU idle (12 programs at batch 4 with
3 KV heads, for 132 SMs). Here the cache's slots are cut into ``n_splits`` ranges of
``split_len`` slots, one program per (range, sequence, KV head):

1. ``_split_kernel``: the G = Hq / Hkv query heads of one KV head are the rows of one tile,
   so each key and value block is read once for the whole group; online softmax over the
   range's blocks gives a partial row max m, sum l and unnormalised output acc (fp32).
2. ``_combine_kernel``: per (sequence, query head), out = sum_i 2^(m_i - M) acc_i /
   sum_i 2^(m_i - M) l_i over the ranges, M = max_i m_i.

The number of ranges depends only on the cache's shape and the GPU, so shapes stay constant
from step to step (CUDA-graph capturable). A program reads only slots below its sequence's
``n_valid`` (read on the device): ranges past it exit at once, and ragged batches read only
what they hold. Scores are kept in base 2 (scaled by log2(e) / sqrt(d)) for ``exp2``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["split_kv_decode", "supported"]

BLOCK_N = 64  # keys per inner step: an 8 KB bf16 tile of K (and of V) at head_dim 64
MIN_SPLIT = 256  # slots per range at least: below that, launching ranges costs more than it spreads
MAX_SPLITS = 128  # the combine kernel holds every range's partials in registers
PROGRAMS_PER_SM = 4  # enough programs in flight per SM to keep loads outstanding


@triton.jit
def _split_kernel(
    Q, K, V, LENS, M_OUT, L_OUT, ACC_OUT,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    lens_stride, n_kv_heads, seq_len, split_len, scale_log2,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
    HAS_LENS: tl.constexpr, PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    n_splits = tl.num_programs(0)
    b = bh // n_kv_heads
    h = bh % n_kv_heads
    if HAS_LENS:
        n = tl.minimum(tl.load(LENS + b * lens_stride).to(tl.int32), seq_len)
    else:
        n = seq_len
    lo = split * split_len
    hi = tl.minimum(lo + split_len, n)

    rows = tl.arange(0, GROUP_PAD)  # query heads h*G .. h*G+G-1, padded to a tile of >= 16 rows
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < GROUP
    q = tl.load(Q + b * stride_qb + (h * GROUP + rows)[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    offs = tl.arange(0, BLOCK)
    # every block entered holds at least one slot below hi, so m_new is finite after the
    # first and exp2(m_i - m_new) never sees -inf - -inf
    for start in range(lo, hi, BLOCK):
        keys = start + offs
        key_ok = keys < hi
        k = tl.load(k_base + keys[:, None] * stride_ks + dims[None, :], mask=key_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [GROUP_PAD, BLOCK] fp32
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + keys[:, None] * stride_vs + dims[None, :], mask=key_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    part = (bh * n_splits + split) * GROUP + rows  # partials laid out [B*Hkv, n_splits, G]
    tl.store(M_OUT + part, m_i, mask=row_ok)
    tl.store(L_OUT + part, l_i, mask=row_ok)
    tl.store(ACC_OUT + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _combine_kernel(
    M_IN, L_IN, ACC_IN, OUT, n_splits, stride_ob, stride_oh, n_kv_heads,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    pid = tl.program_id(0)  # one (sequence, query head)
    bh = pid // GROUP
    g = pid % GROUP
    b = bh // n_kv_heads
    h = bh % n_kv_heads
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    split_ok = splits < n_splits
    part = (bh * n_splits + splits) * GROUP + g
    m = tl.load(M_IN + part, mask=split_ok, other=float("-inf"))
    sums = tl.load(L_IN + part, mask=split_ok, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # no filled slot at all: output 0
    w = tl.exp2(m - m_max)  # empty ranges (m = -inf) weigh 0
    denom = tl.sum(w * sums, 0)
    denom = tl.where(denom > 0, denom, 1.0)
    acc = tl.load(ACC_IN + part[:, None] * HEAD_DIM + dims[None, :], mask=split_ok[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], 0) / denom
    tl.store(OUT + b * stride_ob + (h * GROUP + g) * stride_oh + dims, out.to(OUT.dtype.element_ty))


@lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (16 off CUDA, for the Triton interpreter)."""
    if device.type != "cuda":
        return 16
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def plan_splits(seq_len: int, rows: int, sm_count: int) -> tuple[int, int]:
    """(n_splits, split_len) for ``rows`` = batch * Hkv programs per range: about
    PROGRAMS_PER_SM programs per SM, ranges of at least MIN_SPLIT slots, a whole number of
    BLOCK_N blocks each. Depends on shapes only, never on how many slots are filled."""
    splits = max(1, min(MAX_SPLITS, PROGRAMS_PER_SM * sm_count // max(rows, 1), triton.cdiv(seq_len, MIN_SPLIT)))
    split_len = triton.cdiv(triton.cdiv(seq_len, splits), BLOCK_N) * BLOCK_N
    return triton.cdiv(seq_len, split_len), split_len


def supported(q: Tensor, k_cache: Tensor, v_cache: Tensor) -> bool:
    """Whether the kernel takes these shapes: head_dim a power of two >= 16 (one tl.dot tile),
    unit stride along head_dim, a float dtype shared by all three."""
    d = q.shape[-1]
    return (
        q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and k_cache.dtype == v_cache.dtype == q.dtype
        and d >= 16
        and d & (d - 1) == 0
        and q.shape[1] % k_cache.shape[1] == 0
        and q.stride(-1) == k_cache.stride(-1) == v_cache.stride(-1) == 1
    )


@torch.library.custom_op("hybridnas::split_kv_decode", mutates_args=())
def split_kv_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, n_valid: Tensor | None) -> Tensor:
    """q [batch, Hq, 1, d]; caches [batch, Hkv, S, d]; ``n_valid`` an integer tensor, 0-d or
    [batch], on the device (slots at or past it are ignored), or None (all S slots filled).
    Returns [batch, Hq, 1, d] in q's dtype. A sequence with no filled slot gets zeros.

    A custom op, so torch.compile treats the launch as one opaque call."""
    batch, hq, _, d = q.shape
    hkv, seq_len = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    n_splits, split_len = plan_splits(seq_len, batch * hkv, _sm_count(q.device))
    partial = (batch * hkv, n_splits, group)
    m = torch.empty(partial, device=q.device, dtype=torch.float32)
    sums = torch.empty(partial, device=q.device, dtype=torch.float32)
    acc = torch.empty((*partial, d), device=q.device, dtype=torch.float32)
    out = torch.empty((batch, hq, 1, d), device=q.device, dtype=q.dtype)
    lens = n_valid if n_valid is not None else m  # any pointer: HAS_LENS=False never reads it
    lens_stride = 1 if n_valid is not None and n_valid.dim() == 1 else 0
    _split_kernel[(n_splits, batch * hkv)](
        q, k_cache, v_cache, lens, m, sums, acc,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        lens_stride, hkv, seq_len, split_len, math.log2(math.e) / math.sqrt(d),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=d, BLOCK=BLOCK_N,
        HAS_LENS=n_valid is not None,
        # fp32 decode (tests, fp32 models) keeps full precision; tf32 would lose ~3 digits
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=2,
    )
    _combine_kernel[(batch * hq,)](
        m, sums, acc, out, n_splits, out.stride(0), out.stride(1), hkv,
        GROUP=group, HEAD_DIM=d, SPLITS_PAD=triton.next_power_of_2(n_splits), num_warps=4,
    )
    return out


@split_kv_decode.register_fake
def _(q: Tensor, k_cache: Tensor, v_cache: Tensor, n_valid: Tensor | None) -> Tensor:
    return q.new_empty(q.shape)


def attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, n_valid: int | Tensor) -> Tensor:
    """``attention_decode`` with the reference's signature and shapes (see
    ``hybridnas.kernels.attention``): the int form reads the first ``n_valid`` slots, the
    tensor form every slot below each sequence's count. Shapes the kernel does not take go
    to the reference."""
    from hybridnas.kernels.attention import attention_decode as reference

    if not supported(q, k_cache, v_cache):
        return reference(q, k_cache, v_cache, n_valid)
    if isinstance(n_valid, Tensor):
        out: Tensor = split_kv_decode(q, k_cache, v_cache, n_valid)
        return out
    out = split_kv_decode(q, k_cache[:, :, :n_valid], v_cache[:, :, :n_valid], None)
    return out
