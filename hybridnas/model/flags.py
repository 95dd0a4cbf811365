"""Flags that layers attach to their parameters and submodules, read back with
``getattr(obj, FLAG, False)``: by :class:`~hybridnas.model.HybridLM`'s initialisation and by
the trainer's optimiser groups."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["RESIDUAL_OUT", "NO_WEIGHT_DECAY", "set_flag"]

RESIDUAL_OUT = "is_residual_out"  # adds to the residual stream: initialised with a depth-scaled std
NO_WEIGHT_DECAY = "no_weight_decay"  # a parameter the optimiser does not decay (Mamba-2's dt, A, D)


def set_flag(obj: nn.Module | Tensor, flag: str) -> None:
    """Set ``obj.<flag> = True``. Through setattr because torch's classes declare no such
    attribute (``nn.Module.__setattr__`` takes tensors and modules only, to a type checker);
    at run time this is the plain attribute assignment."""
    setattr(obj, flag, True)
