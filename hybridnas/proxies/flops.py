"""FLOPs of the real model, counted by tools that do not know our cost model.

Two independent counters check :mod:`hybridnas.search_space.cost`:

- ``count_torch``: torch's ``FlopCounterMode`` over one training step (forward + backward of
  ``HybridLM.loss``), on the meta device, so any size costs no memory. MoE specs run on CPU
  tensors: dropless dispatch splits tokens by routing, which meta tensors cannot do. Torch
  has no formula for the SSD scan (our einsums are counted as einsums) and counts attention
  densely, T x T, where the cost model counts the causal pairs only; see ``attention_dense_gap``.
- ``count_fvcore``: fvcore's jit-trace counter over one forward pass on CPU, with handles registered
  for SDPA (counting exactly the (query, key) pairs its mask allows) and for the SSD and
  expert ops, which are traced as opaque ``hybridnas::`` ops. fvcore counts multiply-adds of
  the forward pass; training FLOPs are 2 x 3 x that (two FLOPs per MAC; backward = 2 x forward).

``module_table`` renders fvcore's per-module FLOP and parameter table (``hybridnas inspect
--module-table``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hybridnas import kernels
from hybridnas.kernels.attention import window_mask
from hybridnas.kernels.moe import expert_swiglu
from hybridnas.kernels.ssd import ssd_chunked, step_sizes
from hybridnas.model import HybridLM
from hybridnas.search_space import ArchSpec
from hybridnas.search_space.cost import attention_pairs, attention_shape

__all__ = ["TorchCount", "count_torch", "count_fvcore", "attention_dense_gap", "module_table"]


# ---- torch FlopCounterMode ------------------------------------------------------------------


@dataclass(frozen=True)
class TorchCount:
    train_flops_per_token: float
    by_op: dict[str, float]  # per token


def count_torch(spec: ArchSpec, seq_len: int, batch: int = 1) -> TorchCount:
    """FlopCounterMode's FLOPs per token of one training step at sequence length ``seq_len``."""
    device = "cpu" if "E" in spec.pattern else "meta"
    with torch.device(device):
        model = HybridLM(spec)
    tokens = torch.zeros(batch, seq_len + 1, dtype=torch.long, device=device)
    # the math backend decomposes SDPA into matmuls torch counts; CPU's fused kernel has no formula
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.loss(tokens).backward()
    n = batch * seq_len
    by_op = {str(op): flops / n for op, flops in counter.get_flop_counts()["Global"].items()}
    return TorchCount(counter.get_total_flops() / n, by_op)


def attention_dense_gap(spec: ArchSpec, seq_len: int) -> float:
    """Training FLOPs per token that a dense T x T count of attention adds over the causal
    (and windowed) pairs the cost model counts: 12 * d_attn * (T^2 - pairs) / T per layer."""
    gap = 0.0
    for symbol in spec.pattern:
        attention = attention_shape(spec, symbol)
        if attention is not None:
            d_attn, _, window = attention
            gap += 12 * d_attn * (seq_len * seq_len - attention_pairs(seq_len, window)) / seq_len
    return gap


# ---- fvcore -------------------------------------------------------------------------------

# Opaque ops: one node each in a jit trace, so fvcore can count them with a handle.


@torch.library.custom_op("hybridnas::ssd_scan_opaque", mutates_args=())
def _ssd_scan_opaque(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    y, state = ssd_chunked(x, dt, A, B, C, D, None, chunk_size)
    return y, state


@_ssd_scan_opaque.register_fake
def _(x, dt, A, B, C, D, chunk_size):
    b, _, h, p = x.shape
    return torch.empty_like(x), x.new_empty(b, h, p, B.shape[-1])


@torch.library.custom_op("hybridnas::expert_swiglu_opaque", mutates_args=())
def _expert_swiglu_opaque(x: Tensor, counts: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    return expert_swiglu(x, counts, w_gate, w_up, w_down)


@_expert_swiglu_opaque.register_fake
def _(x, counts, w_gate, w_up, w_down):
    return torch.empty_like(x)


def _ssd_traceable(x, dt, A, B, C, D=None, initial_state=None, chunk_size=256, dt_bias=None, dt_softplus=False):
    assert initial_state is None and D is not None, "counting traces the training forward"
    return torch.ops.hybridnas.ssd_scan_opaque(x, step_sizes(dt, dt_bias, dt_softplus), A, B, C, D, chunk_size)


@contextmanager
def _opaque_kernels() -> Iterator[None]:
    with ExitStack() as stack:
        stack.enter_context(kernels.ssd_scan.replaced_by(_ssd_traceable))
        stack.enter_context(kernels.expert_swiglu.replaced_by(torch.ops.hybridnas.expert_swiglu_opaque))
        yield


def _shape(value: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """Forward MACs of SDPA: (q.k and weights.v) d MACs each per allowed (query, key) pair
    per query head. The mask, when given, is a traced constant (kernels cache it)."""
    b, h, t_q, d = _shape(inputs[0])
    t_k = _shape(inputs[1])[2]
    mask = inputs[3].toIValue() if inputs[3].node().kind() == "prim::Constant" else None
    is_causal = bool(inputs[5].toIValue())
    if mask is not None:
        pairs = int(mask.sum())
    elif is_causal:
        pairs = attention_pairs(t_q)
    else:
        pairs = t_q * t_k
    return b * h * pairs * 2 * d


def _ssd_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """Forward MACs of the SSD scan: half of Bae et al.'s forward FLOPs, 9*d*N + 2*d per token."""
    b, t, h, p = _shape(inputs[0])
    n = _shape(inputs[3])[-1]
    d_inner = h * p
    return b * t * (9 * d_inner * n + 2 * d_inner) // 2


def _expert_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """Forward MACs of the routed experts: every routed row goes through one 3-matrix SwiGLU."""
    rows, d_model = _shape(inputs[0])
    d_expert = _shape(inputs[2])[-1]
    return rows * 3 * d_model * d_expert


_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_macs,
    "hybridnas::ssd_scan_opaque": _ssd_macs,
    "hybridnas::expert_swiglu_opaque": _expert_macs,
}


def _prebuild_window_mask(spec: ArchSpec, seq_len: int) -> None:
    """Build the sliding-window mask before tracing: then the trace holds it as a constant
    the SDPA handle can read, instead of the ops that computed it."""
    if "W" in spec.pattern and spec.attn.window < seq_len:
        window_mask(seq_len, spec.attn.window, torch.device("cpu"))


@contextmanager
def _fvcore_analysis(spec: ArchSpec, seq_len: int, batch: int = 1) -> Iterator[Any]:
    """fvcore's analysis of one forward pass; count inside the block (fvcore traces lazily)."""
    from fvcore.nn import FlopCountAnalysis

    _prebuild_window_mask(spec, seq_len)
    # jit tracing does not work on meta tensors (meta conv shape checks), so this runs on CPU
    model = HybridLM(spec).eval()
    tokens = torch.zeros(batch, seq_len, dtype=torch.long)
    with _opaque_kernels():
        analysis = FlopCountAnalysis(model, (tokens,)).set_op_handle(**_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        yield analysis


def count_fvcore(spec: ArchSpec, seq_len: int, batch: int = 1) -> tuple[float, dict[str, float]]:
    """(training FLOPs per token, forward MACs per token by operator) from fvcore."""
    with _fvcore_analysis(spec, seq_len, batch) as analysis:
        macs = analysis.total()
        by_op = {op: v / (batch * seq_len) for op, v in Counter(analysis.by_operator()).items()}
    return 6.0 * macs / (batch * seq_len), by_op


def module_table(spec: ArchSpec, seq_len: int, max_depth: int = 3) -> str:
    """fvcore's per-module table (forward MACs for one sequence, and parameters)."""
    from fvcore.nn import flop_count_table

    with _fvcore_analysis(spec, seq_len) as analysis:
        return flop_count_table(analysis, max_depth=max_depth)
