"""The LM head's loss: a linear layer into the vocabulary, then next-token cross-entropy.

x [N, D] (N tokens), weight [V, D] (the vocabulary's embeddings), targets [N] (class ids;
-100 is ignored, as in ``F.cross_entropy``) -> the mean loss over the kept tokens, a 0-d
fp32 tensor. The reference materialises the [N, V] logits and upcasts them to fp32; a fast
backend fuses the two steps in chunks of tokens, so those logits never exist in full.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_cross_entropy"]


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """x [N, D], weight [V, D], targets [N] -> 0-d fp32 mean cross-entropy of x @ weight.T."""
    return F.cross_entropy(F.linear(x, weight).float(), targets)
