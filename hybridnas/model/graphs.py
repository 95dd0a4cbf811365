"""Decode from one CUDA graph: :meth:`HybridLM.step` issues about a thousand small kernels
per token, so at batch 4 decoding is bound by kernel launches, not by reading the cache.
Capturing the step once and replaying it removes the launch cost; what is left is the
work itself (reading the weights and, for attention, the KV cache).

The step keeps every shape fixed (the KV cache is read whole, unfilled slots masked) and
reads the position from a device tensor that the step itself advances, so one capture
serves every later token. Layers that need the host mid-step (MoE's dropless dispatch
counts tokens per expert on the host) cannot be captured: ``CUDAGraphStep`` then fails at
construction with :class:`GraphCaptureError`, and callers decode eagerly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridnas.model.cache import LMCache
from hybridnas.model.lm import HybridLM

__all__ = ["CUDAGraphStep", "GraphCaptureError"]


class GraphCaptureError(RuntimeError):
    """The model's decode step cannot be captured in a CUDA graph."""


class CUDAGraphStep:
    """``step(tokens [batch]) -> logits [batch, vocab]``, equal to ``model.step(tokens, cache)``
    but replayed from a CUDA graph bound to this ``cache`` (its tensors are updated in place).

    Construction runs a few warm-up steps (Triton autotuning, cuBLAS workspaces) and restores
    the cache afterwards, so it may be built on a cache that already holds a prefill.
    The returned logits live in a static buffer: the next call overwrites them."""

    def __init__(self, model: HybridLM, cache: LMCache, warmup: int = 2) -> None:
        if not cache.position.is_cuda:
            raise GraphCaptureError("CUDA graphs need the model and cache on a CUDA device")
        if any(block.symbol == "E" for block in model.typed_blocks):
            raise GraphCaptureError("MoE layers count tokens per expert on the host, which a CUDA graph cannot hold")
        self.model, self.cache = model, cache
        batch = cache.tensors[0].shape[0] if cache.tensors else 1
        self.tokens = torch.zeros(batch, dtype=torch.long, device=cache.position.device)
        saved = [t.clone() for t in (*cache.tensors, cache.position)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(warmup):
                model.step_on_device(self.tokens, cache)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.logits = model.step_on_device(self.tokens, cache)
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
