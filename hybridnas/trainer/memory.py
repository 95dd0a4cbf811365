"""The least memory a training run needs: a candidate that cannot possibly fit its device is
refused before its model is built (``train`` raises FitError; a study records the refusal as
the trial's failure, and ``launch`` refuses a baseline that cannot fit this host before it
writes anything).

A lower bound, never an estimate of the peak: a refused run could not have trained, and one
that passes may still run out of memory (then that is its result, as before). It counts

- 16 bytes per parameter: the fp32 weights, their gradients and AdamW's two moments (the
  trainer keeps fp32 master weights and autocasts the matmuls to bf16);
- 2 bytes per element of the residual stream each layer must keep for its backward pass, at
  the micro-batch's tokens (the trainer does not recompute activations).
"""

from __future__ import annotations

import os

import torch

from hybridnas.errors import UserError
from hybridnas.search_space import ArchSpec
from hybridnas.search_space.cost import cost

__all__ = ["FitError", "least_training_bytes", "device_memory_bytes", "check_fits"]

STATE_BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
ACTIVATION_BYTES = 2  # bf16: the narrowest a saved activation is kept in
GIB = 1 << 30


class FitError(UserError):
    """A run whose least memory exceeds its device's; the message gives both."""


def least_training_bytes(spec: ArchSpec, seq_len: int, micro_batch_seqs: int) -> tuple[int, int, int]:
    """(total, optimizer-state bytes, activation bytes) that training ``spec`` on micro-batches
    of ``micro_batch_seqs`` sequences of ``seq_len`` tokens needs at least."""
    params = cost(spec, seq_len).total.params
    state = STATE_BYTES_PER_PARAM * params
    residuals = micro_batch_seqs * seq_len * spec.d_model * len(spec.pattern) * ACTIVATION_BYTES
    return state + residuals, state, residuals


def device_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, name) of the memory ``device`` gives this process: a GPU's total, or its share
    where the process is capped (``torch.cuda.set_per_process_memory_fraction``: a study's
    worker on a GPU shared by several trials); this host's RAM on a CPU."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        share = torch.cuda.get_per_process_memory_fraction(index)
        if share < 1:
            return int(props.total_memory * share), f"this process's {share:g} share of the {props.name}"
        return int(props.total_memory), f"the {props.name}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this host's RAM"


def check_fits(spec: ArchSpec, seq_len: int, micro_batch_seqs: int, device: torch.device) -> None:
    """Raise FitError if training ``spec`` cannot fit ``device`` at all."""
    need, state, residuals = least_training_bytes(spec, seq_len, micro_batch_seqs)
    have, name = device_memory_bytes(device)
    if need > have:
        raise FitError(
            f"{_short(spec.pattern)} at d_model {spec.d_model} cannot fit: training needs at least "
            f"{need / GIB:,.1f} GiB ({state / GIB:,.1f} GiB of weights, gradients and AdamW moments, "
            f"{residuals / GIB:,.1f} GiB of activations at {micro_batch_seqs} x {seq_len} tokens); "
            f"{name} holds {have / GIB:,.1f} GiB"
        )


def _short(pattern: str, keep: int = 40) -> str:
    return pattern if len(pattern) <= keep else f"{pattern[:keep]}... ({len(pattern)} layers)"
