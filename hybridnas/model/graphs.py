"""Decode from one CUDA graph: :meth:`HybridLM.step` issues about a thousand small kernels
per token, so at batch 4 decoding is bound by kernel launches, not by reading the cache.
Capturing the step once and replaying it removes the launch cost; what is left is the
work itself (reading the weights and, for attention, the KV cache).

The step keeps every shape fixed (the KV cache is read whole, unfilled slots masked) and
reads the position from a device tensor that the step itself advances, so one capture
serves every later token. Layers that need the host mid-step (MoE's dropless dispatch
counts tokens per expert on the host) cannot be captured: ``CUDAGraphStep`` then fails at
construction with :class:`GraphCaptureError`, and callers decode eagerly.

Replayed, the step still runs every small kernel of the eager step (norms, the Mamba-2
glue, the hybrid's merge: ~1000 at 12 layers, 1.6 ms per token on an H200). With
``compile=True`` each block's step is compiled by torch.compile before capture, so inductor
fuses the pointwise and reduction glue between the matmuls and the custom-op kernels (split-KV
attention, the SSM and conv steps), and the graph replays the fused kernels instead.
"""

from __future__ import annotations

import types
import weakref

import torch
from torch import Tensor

from hybridnas.model.cache import LayerCache, LMCache
from hybridnas.model.lm import Block, BlockStep, HybridLM

__all__ = ["CUDAGraphStep", "GraphCaptureError", "compiled_block_step"]


def _block_step(block: Block, x: Tensor, cache: LayerCache | None, position: Tensor) -> Tensor:
    return block.step(x, cache, position)


# one compiled block step per model, shared by its blocks and by every cache it is captured on
_COMPILED: weakref.WeakKeyDictionary[HybridLM, BlockStep] = weakref.WeakKeyDictionary()


def compiled_block_step(model: HybridLM) -> BlockStep:
    """``Block.step`` compiled for ``model``'s blocks: one graph per kind of block (blocks of
    one symbol and width share it), and one more with a symbolic cache length the second time
    a cache length changes (torch.compile's automatic dynamic shapes).

    Dynamo keeps compiled graphs on the function's code object, up to its recompile limit
    (8): a process that measures many models (a study worker) would reach it and silently
    decode the later models uncompiled. Each model therefore gets a copy of the code, whose
    graphs live and die with the model; inductor's own cache still serves identical graphs."""
    if model not in _COMPILED:
        code = _block_step.__code__.replace()  # equal, but a distinct object: its own dynamo cache
        fresh = types.FunctionType(code, _block_step.__globals__, _block_step.__name__)
        _COMPILED[model] = torch.compile(fresh, dynamic=None)
    return _COMPILED[model]


class GraphCaptureError(RuntimeError):
    """The model's decode step cannot be captured in a CUDA graph."""


class CUDAGraphStep:
    """``step(tokens [batch]) -> logits [batch, vocab]``, equal to ``model.step(tokens, cache)``
    but replayed from a CUDA graph bound to this ``cache`` (its tensors are updated in place).

    Construction runs a few warm-up steps (Triton autotuning, cuBLAS workspaces) and restores
    the cache afterwards, so it may be built on a cache that already holds a prefill.
    The returned logits live in a static buffer: the next call overwrites them.

    ``compile=True`` compiles each block's step (:func:`compiled_block_step`) during the
    warm-up; should compilation fail, the step is captured uncompiled and ``compiled`` is
    False, with the error in ``why_not_compiled``."""

    def __init__(self, model: HybridLM, cache: LMCache, warmup: int = 2, *, compile: bool = False) -> None:
        if not cache.position.is_cuda:
            raise GraphCaptureError("CUDA graphs need the model and cache on a CUDA device")
        if any(block.symbol == "E" for block in model.typed_blocks):
            raise GraphCaptureError("MoE layers count tokens per expert on the host, which a CUDA graph cannot hold")
        self.model, self.cache = model, cache
        batch = cache.tensors[0].shape[0] if cache.tensors else 1
        self.tokens = torch.zeros(batch, dtype=torch.long, device=cache.position.device)
        saved = [t.clone() for t in (*cache.tensors, cache.position)]
        block_step = compiled_block_step(model) if compile else None
        self.compiled, self.why_not_compiled = compile, None if compile else "not asked"
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(warmup):
                try:  # compiles here, on the first step, never during capture
                    model.step_on_device(self.tokens, cache, block_step)
                except Exception as exc:  # a compiler failure: decode uncompiled, and say why
                    if block_step is None:
                        raise
                    self.compiled, self.why_not_compiled = False, f"{type(exc).__name__}: {exc}"[:500]
                    block_step = None
                    model.step_on_device(self.tokens, cache)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.logits = model.step_on_device(self.tokens, cache, block_step)
        except RuntimeError as exc:  # an op that syncs with the host or allocates outside the pool
            raise GraphCaptureError(f"decode step not capturable: {exc}") from exc
        finally:
            for tensor, value in zip((*cache.tensors, cache.position), saved, strict=True):
                tensor.copy_(value)

    def __call__(self, tokens: Tensor) -> Tensor:
        if self.cache.pos >= self.cache.max_len:
            raise ValueError(f"cache is full: max_len={self.cache.max_len}")
        self.tokens.copy_(tokens)
        self.graph.replay()
        self.cache.pos += 1
        return self.logits
