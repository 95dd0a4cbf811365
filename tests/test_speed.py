"""Measured speed: figures on a GPU, and on a CPU no figure but the reason."""

import pytest
import torch

from hybridnas import ArchSpec
from hybridnas.proxies.speed import measure, measure_decode, measure_training

SPEC = ArchSpec.from_pattern("M-*-H-M-", d_model=256, vocab_size=257)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU answer")
def test_cpu_gives_no_figures_and_says_why():
    for report in (measure(SPEC), measure_training(SPEC), measure_decode(SPEC)):
        assert report.reason == "no CUDA device: speed is only measured on GPUs"
        assert report.train_tokens_per_s is None and report.decode_tokens_per_s == {}


@pytest.mark.gpu
def test_gpu_training_and_decode_figures():
    train = measure_training(SPEC, batch=4, seq_len=512)
    assert train.reason is None and train.train_tokens_per_s > 0  # how fast: benchmarks/
    assert 0 < train.mfu < 1 and train.peak_memory_gib > 0
    decode = measure_decode(SPEC, contexts=(256, 1024), steps=8, repeats=2)
    assert set(decode.decode_tokens_per_s) == {256, 1024}
    assert all(v > 0 for v in decode.decode_tokens_per_s.values())
    assert all(v > 0 for v in decode.prefill_tokens_per_s.values())
