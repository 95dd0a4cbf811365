"""The LM head's loss: a linear layer into the vocabulary, then next-token cross-entropy.

x [N, D] (N tokens), weight [V, D] (the vocabulary's embeddings), targets [N] (class ids;
-100 is ignored, as in ``F.cross_entropy``) -> the mean loss over the kept tokens, a 0-d
fp32 tensor. The reference materialises the [N, V] logits and upcasts them to fp32; a fast
backend fuses the two steps in chunks of tokens, so those logits never exist in full.

The fused kernel saves memory, not time: on one H200 the training step of a 138M
attention-only model at 16K tokens x 50,304 vocabulary ran at 249,161 tokens/s with Liger's
fused kernel and 317,505 with the reference compiled (docs/benchmarks.md (b), 2026-12-03), its
chunks of ~256 tokens being small matmuls. So a fast backend is used only where the fp32
logits would be large (:func:`worth_fusing`), and the reference keeps its speed elsewhere.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_cross_entropy", "worth_fusing", "FUSE_FROM_LOGITS_BYTES"]

# The reference keeps fp32 logits, their bf16 twin and their fp32 gradient alive at once
# (10 bytes per logit); from 4 GiB of fp32 logits on (e.g. 32K tokens x 32K vocabulary), that
# is memory a small GPU share or a larger model needs more than the time the fused kernel costs.
FUSE_FROM_LOGITS_BYTES = 4 << 30


def worth_fusing(n_tokens: int, vocab: int) -> bool:
    """Whether the head + loss of ``n_tokens`` rows into ``vocab`` classes should go to a fused
    backend: when the reference's fp32 [n_tokens, vocab] logits would reach FUSE_FROM_LOGITS_BYTES.
    A shape rule, so a compiled step decides it once per shape."""
    return n_tokens * vocab * 4 >= FUSE_FROM_LOGITS_BYTES


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """x [N, D], weight [V, D], targets [N] -> 0-d fp32 mean cross-entropy of x @ weight.T."""
    return F.cross_entropy(F.linear(x, weight).float(), targets)
