"""Libraries' Triton kernels as ``torch.library`` custom ops, for the CUDA backends.

Why custom ops: torch.compile then sees each kernel as one opaque node whose outputs its
fake declares, and its backward as another, instead of tracing the library's Python
(autotuners, device contexts, host-side checks): the training step stays one graph, fused
around the kernels. Each factory takes the library module (imported by
``hybridnas.kernels.cuda``), defines its ops once per process and returns a function with the
reference's signature. Every op returns contiguous tensors, as its fake declares; inputs may
be strided views (the model passes slices of one projection's output), which the kernels read
through their strides. A gradient the reference would not have (no D, no initial state) comes
back from a backward op as an empty placeholder, mapped to None.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import Tensor
from torch.library import custom_op

from hybridnas.kernels.ssd import ssd_chunked

__all__ = ["ssd_scan", "causal_conv1d", "gated_rms_norm", "linear_cross_entropy"]


def _none(like: Tensor) -> Tensor:
    """The placeholder for a gradient that does not exist (on ``like``'s device)."""
    return like.new_empty(0)


def _grad_or_none(grad: Tensor, given: Tensor | None) -> Tensor | None:
    return grad if given is not None else None


@cache
def ssd_scan(combined: types.ModuleType) -> Callable[..., tuple[Tensor, Tensor]]:
    """``ssd_scan`` through mamba-ssm's ``mamba_chunk_scan_combined`` (its forward and
    backward functions, ``ssd_combined``): dt_bias and softplus inside its dt kernel."""

    @custom_op("hybridnas::ssd_scan_fwd", mutates_args=())
    def forward(
        x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, initial_state: Tensor | None,
        dt_bias: Tensor | None, chunk_size: int, dt_softplus: bool,
    ) -> tuple[Tensor, Tensor]:
        y, *_, final_state = combined._mamba_chunk_scan_combined_fwd(
            x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_state, dt_softplus=dt_softplus
        )
        return y.contiguous(), final_state.to(x.dtype).contiguous()  # the reference's dtypes

    @forward.register_fake
    def _(
        x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, initial_state: Tensor | None,
        dt_bias: Tensor | None, chunk_size: int, dt_softplus: bool,
    ) -> tuple[Tensor, Tensor]:
        b, _, h, p = x.shape
        return x.new_empty(x.shape), x.new_empty(b, h, p, B.shape[-1])

    @custom_op("hybridnas::ssd_scan_bwd", mutates_args=())
    def backward_op(
        dy: Tensor, dfinal: Tensor | None, y: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
        D: Tensor | None, initial_state: Tensor | None, dt_bias: Tensor | None, chunk_size: int, dt_softplus: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        dx, ddt, dA, dB, dC, dD, _, ddt_bias, dinit = combined._mamba_chunk_scan_combined_bwd(
            dy, x, dt, A, B, C, y, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_state,
            dfinal_states=dfinal, dt_softplus=dt_softplus,
        )
        grads = [(dx, x), (ddt, dt), (dA, A), (dB, B), (dC, C), (dD, D), (dinit, initial_state), (ddt_bias, dt_bias)]
        dx, ddt, dA, dB, dC, dD, dinit, ddt_bias = (
            _none(dy) if given is None else g.to(given.dtype).reshape(given.shape).contiguous() for g, given in grads
        )
        return dx, ddt, dA, dB, dC, dD, dinit, ddt_bias

    @backward_op.register_fake
    def _(
        dy: Tensor, dfinal: Tensor | None, y: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
        D: Tensor | None, initial_state: Tensor | None, dt_bias: Tensor | None, chunk_size: int, dt_softplus: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        dx, ddt, dA, dB, dC, dD, dinit, ddt_bias = (
            dy.new_empty(0) if t is None else t.new_empty(t.shape) for t in (x, dt, A, B, C, D, initial_state, dt_bias)
        )
        return dx, ddt, dA, dB, dC, dD, dinit, ddt_bias

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        x, dt, A, B, C, D, initial_state, dt_bias, ctx.chunk_size, ctx.dt_softplus = inputs
        ctx.save_for_backward(output[0], x, dt, A, B, C, D, initial_state, dt_bias)

    def backward(ctx: Any, dy: Tensor, dfinal: Tensor | None) -> tuple[Tensor | None, ...]:
        y, x, dt, A, B, C, D, initial_state, dt_bias = ctx.saved_tensors
        dx, ddt, dA, dB, dC, dD, dinit, ddt_bias = torch.ops.hybridnas.ssd_scan_bwd(
            dy.contiguous(), dfinal, y, x, dt, A, B, C, D, initial_state, dt_bias, ctx.chunk_size, ctx.dt_softplus
        )
        return (
            dx, ddt, dA, dB, dC, _grad_or_none(dD, D), _grad_or_none(dinit, initial_state),
            _grad_or_none(ddt_bias, dt_bias), None, None,
        )

    forward.register_autograd(backward, setup_context=setup_context)

    def scan(
        x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
        initial_state: Tensor | None = None, chunk_size: int = 256, dt_bias: Tensor | None = None,
        dt_softplus: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """y [b, T, H, P], final_state [b, H, P, N] (shapes in ``hybridnas.kernels.ssd``)."""
        if chunk_size & (chunk_size - 1):  # the Triton kernels tile by powers of two
            return ssd_chunked(x, dt, A, B, C, D, initial_state, chunk_size, dt_bias, dt_softplus)
        y: Tensor
        final_state: Tensor
        y, final_state = torch.ops.hybridnas.ssd_scan_fwd(
            x, dt, A, B, C, D, initial_state, dt_bias, chunk_size, dt_softplus
        )
        return y, final_state

    return scan


@cache
def causal_conv1d(fla_conv: types.ModuleType) -> Callable[..., Tensor]:
    """``causal_conv1d`` through flash-linear-attention's Triton kernels
    (``fla.modules.causal_conv1d.ops``: ``causal_conv1d_fwd`` / ``causal_conv1d_bwd``)."""

    @custom_op("hybridnas::causal_conv1d_fwd", mutates_args=())
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:
        """x [B, T, C], any strides -> [B, T, C]."""
        y, _ = fla_conv.causal_conv1d_fwd(x=x, weight=weight, bias=bias, residual=None, activation=activation)
        out: Tensor = y.contiguous()
        return out

    @forward.register_fake
    def _(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:
        return x.new_empty(x.shape)

    @custom_op("hybridnas::causal_conv1d_bwd", mutates_args=())
    def backward_op(
        dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        dx, dw, db, *_ = fla_conv.causal_conv1d_bwd(
            x=x, dy=dy, dht=None, weight=weight, bias=bias, residual=None, initial_state=None, activation=activation
        )
        return dx.contiguous(), dw.contiguous(), _none(dy) if bias is None else db.contiguous()

    @backward_op.register_fake
    def _(
        dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        db = dy.new_empty(0) if bias is None else bias.new_empty(bias.shape)
        return x.new_empty(x.shape), weight.new_empty(weight.shape), db

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, bias, ctx.activation = inputs
        ctx.save_for_backward(x, weight, bias)

    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = torch.ops.hybridnas.causal_conv1d_bwd(dy, x, weight, bias, ctx.activation)
        return dx, dw, _grad_or_none(db, bias), None

    forward.register_autograd(backward, setup_context=setup_context)

    def conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
        """x [batch, C, T], weight [C, K] -> [batch, C, T]. fla works in [batch, T, C]: for the
        model's x, a transposed view of a [batch, T, C] tensor, both transposes are free."""
        y: Tensor = torch.ops.hybridnas.causal_conv1d_fwd(x.transpose(1, 2), weight, bias, activation)
        return y.transpose(1, 2)

    return conv


@cache
def gated_rms_norm(layernorm_gated: types.ModuleType) -> Callable[..., Tensor]:
    """``gated_rms_norm`` through mamba-ssm's Triton gated norm (``layernorm_gated``: the
    forward and backward of its ``rmsnorm_fn``, norm after the gate), one kernel each way."""

    @custom_op("hybridnas::gated_rms_norm_fwd", mutates_args=())
    def forward(x: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float) -> tuple[Tensor, Tensor]:
        """x, z [M, C] (unit stride along C) -> (out [M, C], rstd [M * groups] fp32)."""
        out, _, rstd = layernorm_gated._layer_norm_fwd(
            x, weight, None, eps, z=z, group_size=group_size, norm_before_gate=False, is_rms_norm=True
        )
        return out.contiguous(), rstd

    @forward.register_fake
    def _(x: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float) -> tuple[Tensor, Tensor]:
        return x.new_empty(x.shape), x.new_empty(x.numel() // group_size, dtype=torch.float32)

    @custom_op("hybridnas::gated_rms_norm_bwd", mutates_args=())
    def backward_op(
        dy: Tensor, x: Tensor, z: Tensor, weight: Tensor, rstd: Tensor, group_size: int, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        dx, dw, _, dz = layernorm_gated._layer_norm_bwd(
            dy, x, weight, None, eps, None, rstd, z, group_size, norm_before_gate=False, is_rms_norm=True
        )
        return dx.contiguous(), dw.contiguous(), dz.contiguous()

    @backward_op.register_fake
    def _(
        dy: Tensor, x: Tensor, z: Tensor, weight: Tensor, rstd: Tensor, group_size: int, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        return x.new_empty(x.shape), weight.new_empty(weight.shape), z.new_empty(z.shape)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        x, z, weight, ctx.group_size, ctx.eps = inputs
        ctx.save_for_backward(x, z, weight, output[1])

    def backward(ctx: Any, dy: Tensor, _drstd: Tensor | None) -> tuple[Tensor | None, ...]:
        x, z, weight, rstd = ctx.saved_tensors
        dy = dy.contiguous()
        dx, dw, dz = torch.ops.hybridnas.gated_rms_norm_bwd(dy, x, z, weight, rstd, ctx.group_size, ctx.eps)
        return dx, dz, dw, None, None

    forward.register_autograd(backward, setup_context=setup_context)

    def norm(x: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float) -> Tensor:
        """x, z [..., C], weight [C] -> [..., C] in x's dtype."""
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        gate = z.reshape(-1, z.shape[-1])  # a slice of the projection: rows strided, channels not
        if gate.stride(-1) != 1:
            gate = gate.contiguous()
        out: Tensor = torch.ops.hybridnas.gated_rms_norm_fwd(rows, gate, weight, group_size, eps)[0]
        return out.view(x.shape)

    return norm


@cache
def linear_cross_entropy(flce: types.ModuleType) -> Callable[..., Tensor]:
    """``linear_cross_entropy`` through Liger-Kernel's fused linear cross-entropy
    (``liger_kernel.ops.fused_linear_cross_entropy``): chunks of tokens, each chunk's logits
    made, turned into loss and logit gradients by a Triton kernel, projected back to the input
    and weight gradients at once, so the [N, V] logits never exist. The gradients are computed
    in the forward; the backward scales them by the loss's incoming gradient."""

    @custom_op("hybridnas::linear_cross_entropy_fwd", mutates_args=())
    def forward(x: Tensor, weight: Tensor, targets: Tensor, with_grads: bool) -> tuple[Tensor, Tensor, Tensor]:
        """-> (0-d fp32 loss, dloss/dx [N, D], dloss/dweight [V, D]; empty without grads)."""
        loss, *_, dx, dw, _ = flce.fused_linear_cross_entropy_forward(
            x, weight, targets, accum_dtype=torch.float32,  # the weight gradient summed over chunks in fp32
            compute_gradients=with_grads, weight_requires_grad=with_grads,
        )
        if not with_grads:
            return loss, _none(x), _none(weight)
        return loss, dx.contiguous(), dw.contiguous()

    @forward.register_fake
    def _(x: Tensor, weight: Tensor, targets: Tensor, with_grads: bool) -> tuple[Tensor, Tensor, Tensor]:
        loss = x.new_empty((), dtype=torch.float32)
        if not with_grads:
            return loss, x.new_empty(0), weight.new_empty(0)
        return loss, x.new_empty(x.shape), weight.new_empty(weight.shape)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        ctx.save_for_backward(output[1], output[2])

    def backward(ctx: Any, dloss: Tensor, _dx: Tensor | None, _dw: Tensor | None) -> tuple[Tensor | None, ...]:
        dx, dw = ctx.saved_tensors
        return dx * dloss, dw * dloss, None, None

    forward.register_autograd(backward, setup_context=setup_context)

    def loss(x: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        """x [N, D], weight [V, D], targets [N] -> 0-d fp32 mean loss. Under autocast the
        matmuls run in its dtype, as F.linear's would: the op itself is not autocast."""
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            x, weight = x.to(dtype), weight.to(dtype)
        else:
            weight = weight.to(x.dtype)
        with_grads = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        value: Tensor = torch.ops.hybridnas.linear_cross_entropy_fwd(
            x.contiguous(), weight.contiguous(), targets.contiguous(), with_grads
        )[0]
        return value

    return loss
