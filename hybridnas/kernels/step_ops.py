"""The decode step's library kernels (``ssd_step``, ``causal_conv1d_step``) as
``torch.library`` custom ops, for the CUDA backends.

Why: a compiled decode step (``hybridnas.model.CUDAGraphStep(compile=True)``) then sees each
launch as one opaque node that mutates its state argument in place, and fuses the glue
around it, instead of tracing the libraries' Python (device contexts, heuristics,
autotuners). ``hybridnas.kernels.cuda`` passes each backend's function through here; the
op calls it unchanged, so eager decoding gets the same kernel.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.library import custom_op

__all__ = ["ssd_step", "causal_conv1d_step"]

# the backend each op calls, set once by ``hybridnas.kernels.cuda.register``: the ops
# themselves are defined once per process, here
_IMPLS: dict[str, Callable[..., Tensor]] = {}


@custom_op("hybridnas::ssd_step", mutates_args=("state",))
def _ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None) -> Tensor:
    """state [b, H, P, N] advanced in place; x [b, H, P], dt [b, H], A [H], B/C [b, G, N] -> y [b, H, P]."""
    return _IMPLS["ssd_step"](state, x, dt, A, B, C, D).contiguous()  # contiguous, as the fake says


@_ssd_step.register_fake
def _(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None) -> Tensor:
    return x.new_empty(x.shape)


@custom_op("hybridnas::causal_conv1d_step", mutates_args=("conv_state",))
def _conv_step(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:
    """x [batch, C]; conv_state [batch, C, K] shifted in place; weight [C, K] -> [batch, C]."""
    return _IMPLS["causal_conv1d_step"](x, conv_state, weight, bias, activation).contiguous()


@_conv_step.register_fake
def _(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:
    return x.new_empty(x.shape)


def ssd_step(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` (the signature of ``hybridnas.kernels.ssd.ssd_step``) behind the custom op."""
    _IMPLS["ssd_step"] = fn

    def step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
        y: Tensor = _ssd_step(state, x, dt, A, B, C, D)
        return y

    return step


def causal_conv1d_step(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` (the signature of ``hybridnas.kernels.conv.causal_conv1d_step``) behind the custom op."""
    _IMPLS["causal_conv1d_step"] = fn

    def step(
        x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
    ) -> Tensor:
        y: Tensor = _conv_step(x, conv_state, weight, bias, activation)
        return y

    return step
