"""Fast CUDA backends, registered on the ops when their libraries load.

The kernels that run inside the training step are wrapped as ``torch.library`` custom ops
(``hybridnas.kernels.custom_ops``), so torch.compile keeps the step one graph around them.

- ``ssd_scan`` / ``ssd_step``: mamba-ssm's Triton kernels ``mamba_chunk_scan_combined`` and
  ``selective_state_update``. A mamba-ssm installed without its CUDA extension fails on
  ``import mamba_ssm`` (its ``__init__`` imports ``selective_scan_cuda``), but the Triton
  modules need nothing from it: they are imported under a bare package object instead. The
  scan takes the raw dt with dt_bias and applies softplus in its dt kernel, so the model
  makes no fp32 [B, T, H] dt tensor of its own.
- ``gated_rms_norm``: mamba-ssm's Triton gated RMSNorm (``layernorm_gated.rmsnorm_fn``, norm
  after the gate), loaded the same way: one kernel forward, one backward, where the compiled
  reference made fp32 copies of x and z and several passes.
- ``causal_conv1d`` / ``causal_conv1d_step``: the ``causal-conv1d`` package, when installed;
  else flash-linear-attention's Triton kernels (``fla-core``, ``fla.modules.causal_conv1d``),
  which read the model's [B, T, C] slice through its strides. (Without either the conv is
  cuDNN's depthwise F.conv1d, slow in bf16: 3.3 ms fwd+bwd per layer on an H100. Written as K
  shifted multiply-adds for torch.compile to fuse it was 1.3x faster alone but made the
  compiled training step 25% slower, so it was dropped: see docs/benchmarks.md.)
- ``linear_cross_entropy``: Liger-Kernel's fused linear cross-entropy (pure Triton): the LM
  head's [N, V] fp32 logits are never materialised. It saves memory and costs time, so it
  takes over only from 4 GiB of fp32 logits on (``kernels/loss.py``): at 16K tokens x 50K
  vocabulary (3.3 GB) the reference runs.
- ``causal_attention`` with a sliding window: PyTorch's FlexAttention with a block-sparse
  window mask, so only the key blocks inside the window are computed (the reference passes
  a dense boolean mask to SDPA, which computes all T x T scores and cannot use the flash
  backend). Global causal attention stays on SDPA, whose flash backend it already takes.
- ``attention_decode``: our Triton split-KV ("flash-decoding") kernel
  (``hybridnas.kernels.decode``): the reference's batched matmuls read a long cache at about
  0.3 TB/s, one (sequence, KV head) at a time; the kernel spreads the cache's slots over the
  whole GPU and reads each key block once per group of query heads.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridnas.kernels import conv, custom_ops, loss, step_ops
from hybridnas.kernels.registry import Op

if TYPE_CHECKING:  # imported where used at run time: FlexAttention loads only on CUDA machines
    from torch.nn.attention.flex_attention import BlockMask

__all__ = ["register", "load_mamba_triton"]


def load_mamba_triton() -> tuple[types.ModuleType, types.ModuleType]:
    """(ssd_combined, selective_state_update) modules of mamba-ssm; raises ImportError."""
    try:
        importlib.import_module("mamba_ssm")
    except ImportError:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("mamba-ssm is not installed") from None
        package = types.ModuleType("mamba_ssm")  # the package without its __init__
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["mamba_ssm"] = package
    return (
        importlib.import_module("mamba_ssm.ops.triton.ssd_combined"),
        importlib.import_module("mamba_ssm.ops.triton.selective_state_update"),
    )


def _ssd_step_triton(update: types.ModuleType) -> Callable[..., Tensor]:
    """``ssd_step`` with the reference's signature and shapes (see ``hybridnas.kernels.ssd``)."""

    def ssd_step(
        state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None
    ) -> Tensor:
        """state [b, H, P, N] advanced in place; x [b, H, P], dt [b, H], B/C [b, G, N] -> y [b, H, P]."""
        # mamba-ssm's Mamba-2 decode layout: dt, A and D broadcast over the head's channels
        # (stride 0), which the kernel recognises and does not materialise
        _, h, p, n = state.shape
        dt = dt.unsqueeze(-1).expand(-1, h, p)
        A = A[:, None, None].expand(h, p, n)
        D = D[:, None].expand(h, p) if D is not None else None
        no_bias = dt.new_zeros(()).expand(h, p)  # the kernel reads dt_bias's strides even when unused
        y: Tensor = update.selective_state_update(state, x, dt, A, B, C, D=D, dt_bias=no_bias, dt_softplus=False)
        return y

    return ssd_step


def _conv_fla_step(fla_conv: types.ModuleType) -> Callable[..., Tensor]:
    """causal_conv1d_step through fla's ``causal_conv1d_update`` (same state layout)."""
    reference = conv.causal_conv1d_step

    def causal_conv1d_step(
        x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
    ) -> Tensor:
        """x [batch, C]; conv_state [batch, C, K] shifted in place -> [batch, C]."""
        if not conv_state.is_contiguous():  # fla would shift a contiguous copy, not the state
            return reference(x, conv_state, weight, bias, activation)
        y, _ = fla_conv.causal_conv1d_update(x=x, cache=conv_state, weight=weight, bias=bias, activation=activation)
        out: Tensor = y
        return out

    return causal_conv1d_step


def _conv_causal_conv1d(module: types.ModuleType) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """(causal_conv1d, causal_conv1d_step) with the references' signatures (see ``hybridnas.kernels.conv``)."""

    def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
        """x [batch, C, T], weight [C, K] -> [batch, C, T]."""
        y: Tensor = module.causal_conv1d_fn(x, weight, bias, activation=activation)
        return y

    def causal_conv1d_step(
        x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
    ) -> Tensor:
        """x [batch, C]; conv_state [batch, C, K] shifted in place -> [batch, C]."""
        y: Tensor = module.causal_conv1d_update(x, conv_state, weight, bias, activation=activation)
        return y

    return causal_conv1d, causal_conv1d_step


def _head_loss_by_size(fused: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """linear_cross_entropy through ``fused`` where the logits are large (``loss.worth_fusing``),
    else through the reference, which is faster where its logits fit (see ``kernels/loss.py``)."""

    def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        """x [N, D], weight [V, D], targets [N] -> 0-d fp32 mean loss."""
        if loss.worth_fusing(x.shape[0], weight.shape[0]):
            return fused(x, weight, targets)
        return loss.linear_cross_entropy(x, weight, targets)

    return linear_cross_entropy


@lru_cache(maxsize=32)
def _window_block_mask(seq_len: int, window: int, device: torch.device) -> BlockMask:
    """FlexAttention block mask of a causal window: query i sees keys i-window+1..i."""
    from torch.nn.attention.flex_attention import create_block_mask

    def in_window(batch: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return create_block_mask(in_window, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


def _attention_flex() -> Callable[..., Tensor]:
    """causal_attention with FlexAttention for windows; SDPA (flash) for global attention."""
    from torch.nn.attention.flex_attention import flex_attention

    # FlexAttention is only fast compiled: it generates one Triton kernel per mask
    flex = torch.compile(flex_attention, dynamic=False)

    def causal_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None = None) -> Tensor:
        gqa = bool(q.shape[1] != k.shape[1])
        t = int(q.shape[2])
        if window is None or window >= t:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return flex(q, k, v, block_mask=_window_block_mask(t, window, q.device), enable_gqa=gqa)

    return causal_attention


def register(ops: dict[str, Op]) -> None:
    """Register every fast backend whose library imports; record why not otherwise."""
    try:
        combined, update = load_mamba_triton()
    except Exception as exc:  # any import failure means: keep the reference, and say why
        for name in ("ssd_scan", "ssd_step", "gated_rms_norm"):
            ops[name].reason = f"reference: mamba-ssm Triton kernels unavailable ({type(exc).__name__}: {exc})"
    else:
        ops["ssd_scan"].register_cuda(
            "triton", custom_ops.ssd_scan(combined),
            "mamba-ssm Triton mamba_chunk_scan_combined (dt bias + softplus fused)",
        )
        ops["ssd_step"].register_cuda(
            "triton", step_ops.ssd_step(_ssd_step_triton(update)), "mamba-ssm Triton selective_state_update"
        )
        try:
            norm = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated")
        except Exception as exc:
            ops["gated_rms_norm"].reason = f"reference: mamba-ssm's Triton gated norm unavailable ({exc})"
        else:
            ops["gated_rms_norm"].register_cuda(
                "triton", custom_ops.gated_rms_norm(norm),
                "mamba-ssm Triton gated RMSNorm (rmsnorm_fn, norm after gate)",
            )

    try:
        module = importlib.import_module("causal_conv1d")
    except Exception as exc:
        try:  # second choice: fla's Triton kernels
            fla_conv = importlib.import_module("fla.modules.causal_conv1d.ops")
        except Exception as fla_exc:
            for name in ("causal_conv1d", "causal_conv1d_step"):
                ops[name].reason = (
                    f"reference F.conv1d: causal-conv1d unavailable ({type(exc).__name__}), "
                    f"fla-core unavailable ({type(fla_exc).__name__})"
                )
        else:
            why = f"causal-conv1d unavailable ({type(exc).__name__})"
            full = custom_ops.causal_conv1d(fla_conv)
            ops["causal_conv1d"].register_cuda("fla", full, f"fla-core Triton kernel: {why}")
            fla_step = step_ops.causal_conv1d_step(_conv_fla_step(fla_conv))
            ops["causal_conv1d_step"].register_cuda("fla", fla_step, f"fla-core Triton update: {why}")
    else:
        full, step = _conv_causal_conv1d(module)
        ops["causal_conv1d"].register_cuda("causal-conv1d", full, "causal-conv1d CUDA kernel")
        ops["causal_conv1d_step"].register_cuda(
            "causal-conv1d", step_ops.causal_conv1d_step(step), "causal-conv1d CUDA update kernel"
        )

    try:
        flce = importlib.import_module("liger_kernel.ops.fused_linear_cross_entropy")
    except Exception as exc:
        ops["linear_cross_entropy"].reason = f"reference F.linear + F.cross_entropy: liger-kernel unavailable ({exc})"
    else:
        ops["linear_cross_entropy"].register_cuda(
            "liger-kernel", _head_loss_by_size(custom_ops.linear_cross_entropy(flce)),
            f"Liger-Kernel fused linear cross-entropy (Triton) from {loss.FUSE_FROM_LOGITS_BYTES >> 30} GiB "
            "of fp32 logits on; the reference (faster) below",
        )

    try:
        windowed = _attention_flex()
    except Exception as exc:
        ops["causal_attention"].reason = f"reference SDPA with a dense window mask: FlexAttention unavailable ({exc})"
    else:
        ops["causal_attention"].register_cuda(
            "flex", windowed, "SDPA flash backend for global attention; FlexAttention block-sparse kernel for windows"
        )

    try:  # Triton ships with CUDA builds of torch; without it the reference stays
        from hybridnas.kernels.decode import attention_decode as split_kv_decode
    except Exception as exc:
        ops["attention_decode"].reason = f"reference batched matmuls: Triton unavailable ({type(exc).__name__}: {exc})"
    else:
        ops["attention_decode"].register_cuda(
            "split-kv", split_kv_decode, "Triton split-KV kernel: the cache spread over the GPU, then a combine"
        )


def import_mamba_ssm_models() -> types.ModuleType:
    """mamba-ssm's ``mixer_seq_simple`` (MambaLMHeadModel, Mamba2 module), for side-by-side
    comparisons only. Where its optional dependencies are missing, stand-ins take their place:
    the Mamba-1 CUDA extension, and Hugging Face hub / generation helpers (used only to download
    checkpoints and to generate text, neither of which a comparison does)."""
    load_mamba_triton()

    def stand_in(name: str, **attributes: object) -> None:
        try:  # some packages import lazily: probe the attributes too
            module = importlib.import_module(name)
            for attribute in attributes:
                getattr(module, attribute)
        except (ImportError, AttributeError):
            module = types.ModuleType(name)
            module.__dict__.update(attributes)
            sys.modules[name] = module

    stand_in("selective_scan_cuda")
    stand_in("huggingface_hub", PyTorchModelHubMixin=type("PyTorchModelHubMixin", (), {}))
    stand_in("mamba_ssm.utils.hf", load_config_hf=None, load_state_dict_hf=None)
    stand_in("mamba_ssm.utils.generation", GenerationMixin=type("GenerationMixin", (), {}))
    return importlib.import_module("mamba_ssm.models.mixer_seq_simple")
