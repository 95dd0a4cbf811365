"""Numeric primitives with swappable backends; each has a plain-PyTorch reference.

Ops (shapes in each module's docstring): ``ssd_scan`` (chunked SSD with initial and final
state), ``ssd_step`` (one decode token), ``causal_attention`` (optional sliding window),
``attention_decode`` (one query against a KV cache), ``causal_conv1d`` and
``causal_conv1d_step``, ``expert_swiglu`` (dropless MoE experts), ``gated_rms_norm`` (Mamba-2's
output norm), ``linear_cross_entropy`` (the LM head and its loss). ``backends()`` says which
implementation each op uses and why.
"""

import torch

from hybridnas.kernels import attention, conv, loss, moe, norm, ssd
from hybridnas.kernels.registry import Op

__all__ = [
    "ssd_scan",
    "ssd_step",
    "causal_attention",
    "attention_decode",
    "causal_conv1d",
    "causal_conv1d_step",
    "expert_swiglu",
    "gated_rms_norm",
    "linear_cross_entropy",
    "backends",
    "OPS",
]

ssd_scan = Op("ssd_scan", ssd.ssd_chunked)
ssd_step = Op("ssd_step", ssd.ssd_step)
causal_attention = Op("causal_attention", attention.causal_attention)
attention_decode = Op("attention_decode", attention.attention_decode)
causal_conv1d = Op("causal_conv1d", conv.causal_conv1d)
causal_conv1d_step = Op("causal_conv1d_step", conv.causal_conv1d_step)
expert_swiglu = Op("expert_swiglu", moe.expert_swiglu)
gated_rms_norm = Op("gated_rms_norm", norm.gated_rms_norm)
linear_cross_entropy = Op("linear_cross_entropy", loss.linear_cross_entropy)

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        ssd_scan, ssd_step, causal_attention, attention_decode, causal_conv1d, causal_conv1d_step, expert_swiglu,
        gated_rms_norm, linear_cross_entropy,
    )
}


if torch.cuda.is_available():  # fast paths load only where they can run
    from hybridnas.kernels import cuda

    cuda.register(OPS)
else:
    for _op in OPS.values():
        _op.reason = "plain PyTorch reference: no CUDA device"


def backends() -> dict[str, dict[str, str]]:
    """{op name: {"backend": ..., "reason": ...}}: what CUDA tensors get (CPU tensors always
    take the reference)."""
    return {name: {"backend": op.backend, "reason": op.reason} for name, op in OPS.items()}
