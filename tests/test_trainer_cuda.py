"""The trainer on CUDA: bf16 autocast with fused AdamW learns, and out-of-memory is a result."""

import pytest

from hybridnas import ArchSpec
from hybridnas.search_space import train_flops_per_token
from hybridnas.trainer import TrainConfig, train

pytestmark = pytest.mark.gpu


def test_bf16_training_on_cuda_learns(tmp_path):
    spec = ArchSpec.from_pattern("M-*-H-M-", d_model=256, vocab_size=257)
    cfg = TrainConfig(tokenizer="bytes", seq_len=256, batch_tokens=16384, cache_dir=str(tmp_path), progress=False)
    result = train(spec, 2e13, cfg)
    assert result.status == "complete", result.failure
    assert result.val_loss < result.val_curve[0]["val_loss"] - 2.0
    assert result.tokens_per_s > 0 and result.device.startswith("NVIDIA")
    assert result.mfu is None or 0 < result.mfu < 1


def test_cuda_out_of_memory_is_a_result(tmp_path):
    """One step of 256 x 8192 tokens through 4 attention + 4 FFN layers of width 1024 keeps
    hundreds of GB of activations for the backward pass; evaluation (no grad) fits."""
    spec = ArchSpec.from_pattern("*-" * 4, d_model=1024, vocab_size=257)
    cfg = TrainConfig(tokenizer="bytes", seq_len=8192, batch_tokens=8192 * 256, val_sequences=4,
                      cache_dir=str(tmp_path), progress=False)
    one_step = train_flops_per_token(spec, 8192) * 8192 * 256
    result = train(spec, one_step, cfg)
    assert result.status == "oom", result.failure
    assert "out of memory" in result.failure["message"].lower()
    assert result.tokens == 0 and result.failure["step"] == 0
    assert result.val_curve[0]["tokens"] == 0  # measured before the failure, and kept
