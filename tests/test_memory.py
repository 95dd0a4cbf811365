"""Claims about the least memory of a training run (trainer/memory.py): it is a lower bound of
what a real run holds, and a candidate above its device's memory is refused before a model
is built, as one line from ``train`` and before anything is written by ``launch``."""

from __future__ import annotations

import pytest
import torch

from hybridnas.cli import main
from hybridnas.search_space import ArchSpec
from hybridnas.trainer import FitError, Run, load_tokens, make_plan, train
from hybridnas.trainer.memory import STATE_BYTES_PER_PARAM, check_fits, device_memory_bytes, least_training_bytes
from hybridnas.trainer.train import forward_seqs
from specs import tiny
from tiny_training import BUDGET, TINY, config


def _held_bytes(run: Run) -> int:
    """Bytes of the weights, gradients and optimiser state a run holds after a step."""
    tensors = [p for p in run.model.parameters()] + [p.grad for p in run.model.parameters() if p.grad is not None]
    tensors += [v for state in run.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("pattern", ["M-*-", "H-M-", "*EME"])
def test_the_optimizer_state_bound_is_no_more_than_a_real_run_holds(token_cache, pattern):
    spec = TINY if pattern == "M-*-" else tiny(pattern, vocab_size=257, moe={"n_experts": 4, "top_k": 2})
    cfg = config(token_cache, grad_clip=None)
    data = load_tokens(cfg.corpus, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction, cfg.cache_dir)
    plan = make_plan(spec, BUDGET, cfg)
    run = Run(spec, BUDGET, cfg, data, plan)
    # a step leaves the gradients unset (zero_grad(set_to_none)): count them as the step held them
    grads = sum(p.numel() * p.element_size() for p in run.model.parameters() if p.requires_grad)
    run.train_step(0, cfg.lr)
    _, state, _ = least_training_bytes(spec, plan.seq_len, forward_seqs(plan, cfg))
    assert state <= _held_bytes(run) + grads
    # and it is tight: the weights, their gradients and both moments, nothing left out
    assert state >= 0.9 * (_held_bytes(run) + grads)
    assert state == STATE_BYTES_PER_PARAM * sum(p.numel() for p in run.model.parameters())


def test_a_model_too_large_for_this_host_is_refused_with_both_sizes():
    spec = ArchSpec.from_pattern("*-*-", d_model=32768, vocab_size=257, attn={"n_heads": 64})
    have, _ = device_memory_bytes(torch.device("cpu"))
    need, _, _ = least_training_bytes(spec, 256, 32)
    assert need > have  # 16 bytes x 4.3e10 parameters: no CI host holds 640 GiB
    with pytest.raises(FitError, match=r"cannot fit: training needs at least [\d,.]+ GiB .* RAM holds [\d.]+ GiB"):
        check_fits(spec, 256, 32, torch.device("cpu"))


def test_a_model_that_fits_passes(token_cache):
    check_fits(TINY, 64, 16, torch.device("cpu"))
    result = train(TINY, BUDGET, config(token_cache))
    assert result.status == "complete"


def test_train_refuses_a_model_that_cannot_fit_in_one_line(capsys):
    code = main(["train", "*-*-", "--d-model", "32768", "--flops", "1e18", "--tokenizer", "bytes"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: *-*- at d_model 32768 cannot fit") and err.count("\n") == 1, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_a_real_step_peaks_above_the_bound(token_cache):
    """The whole bound (states and activations) under torch's own count of a step's peak."""
    spec = ArchSpec.from_pattern("M-*-M-*-", d_model=512, vocab_size=257, attn={"n_heads": 8})
    cfg = config(token_cache, device="cuda", seq_len=512, batch_tokens=8192, compile=False)
    data = load_tokens(cfg.corpus, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction, cfg.cache_dir)
    plan = make_plan(spec, 1e14, cfg)
    torch.cuda.reset_peak_memory_stats()
    run = Run(spec, 1e14, cfg, data, plan)
    run.train_step(0, cfg.lr)
    torch.cuda.synchronize()
    need, _, _ = least_training_bytes(spec, plan.seq_len, forward_seqs(plan, cfg))
    assert need <= torch.cuda.max_memory_allocated()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_shared_gpu_the_check_reads_this_processs_share():
    """A study's worker on a quarter of a GPU caps its allocator there (studies/worker.py): the
    memory check then counts the quarter, for the device as the trainer names it ("cuda")."""
    total, _ = device_memory_bytes(torch.device("cuda"))
    torch.cuda.set_per_process_memory_fraction(0.25, 0)
    try:
        share, name = device_memory_bytes(torch.device("cuda"))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert share == int(total * 0.25) and "0.25 share" in name
