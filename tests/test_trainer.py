"""FLOP-budgeted training: budgets, schedule, determinism, rungs and resume, failures, CLI."""

import json
import math

import pytest

from hybridnas import ArchSpec
from hybridnas.cli import main
from hybridnas.search_space import train_flops_per_token
from hybridnas.trainer import CheckpointError, TrainConfig, load_tokens, make_plan, train
from tiny_training import BUDGET, TINY, config

# ---- budget and schedule -------------------------------------------------------------------


def test_progress_in_a_batch_log_is_plain_lines(token_cache, capsys):
    """Not a terminal (a cluster job's log): no bar, but the last step is reported as a line."""
    result = train(TINY, 1e10, config(token_cache, progress=True))
    err = capsys.readouterr().err
    assert f"step {result.steps}/{result.steps}, loss " in err, err
    assert "\x1b[" not in err  # no terminal control codes


@pytest.mark.parametrize("budget", [3e9, 1e11, 2.5e12, 7e13])
@pytest.mark.parametrize("seq_len", [64, 256])
def test_plan_spends_the_budget_to_within_half_a_sequence(budget, seq_len):
    """Whole sequences: within half a sequence's FLOPs, so within 1% from 50 sequences up."""
    cfg = TrainConfig(seq_len=seq_len, batch_tokens=4096)
    plan = make_plan(TINY, budget, cfg)
    spent = plan.tokens_after(plan.steps) * train_flops_per_token(TINY, seq_len)
    assert abs(spent - budget) <= 0.5 * seq_len * plan.flops_per_token
    if plan.total_seqs >= 50:
        assert spent == pytest.approx(budget, rel=0.01)
    assert sum(plan.seqs_at(s) for s in range(plan.steps)) == plan.total_seqs


def test_a_long_rung_cooldown_may_run_past_the_plan(token_cache):
    """A cool-down of 0.9 x the steps so far, from a rung at 80%, branches beyond the last step."""
    result = train(TINY, 1e10, config(token_cache, rungs=(0.8,), rung_cooldown_frac=0.9))
    assert result.status == "complete" and len(result.rungs) == 1
    assert result.extra_flops > 0.5 * result.flops


def test_warmup_stable_decay_schedule():
    plan = make_plan(TINY, 1e12, TrainConfig(seq_len=64, batch_tokens=1024, warmup_frac=0.1, decay_frac=0.2))
    factors = [plan.lr_factor(s) for s in range(plan.steps)]
    w, d = plan.warmup_steps, plan.decay_steps
    assert factors[:w] == sorted(factors[:w]) and factors[w - 1] == 1.0 and factors[0] < 0.2
    assert set(factors[w : plan.steps - d]) == {1.0}
    assert factors[plan.steps - d :] == sorted(factors[plan.steps - d :], reverse=True)
    assert factors[-1] == pytest.approx(1 / d)


def test_budget_below_one_sequence_is_refused(token_cache):
    from hybridnas.trainer import BudgetError

    with pytest.raises(BudgetError, match="less than one training sequence"):
        train(TINY, 1e3, config(token_cache))


# ---- determinism, rungs, resume ------------------------------------------------------------


def test_same_seed_gives_the_same_curve(token_cache):
    a = train(TINY, BUDGET, config(token_cache))
    b = train(TINY, BUDGET, config(token_cache))
    c = train(TINY, BUDGET, config(token_cache, seed=1))
    assert a.status == b.status == "complete"
    assert a.val_curve == b.val_curve and a.train_curve == b.train_curve
    assert a.val_curve != c.val_curve
    assert a.val_curve[0]["tokens"] == 0 and a.val_curve[-1]["tokens"] == a.tokens
    assert a.flops == pytest.approx(BUDGET, rel=0.01)


def test_rung_and_resume_reproduce_the_uninterrupted_run_bitwise(token_cache, tmp_path):
    """fp32 on CPU, same batches, optimiser state restored exactly: no tolerance needed."""
    plain = train(TINY, BUDGET, config(token_cache))

    seen = []
    with_rungs = train(TINY, BUDGET, config(token_cache, rungs=(0.3, 0.6), out_dir=str(tmp_path / "a")),
                       rung_callback=lambda report: seen.append(report) or "continue")
    assert [r.index for r in seen] == [0, 1] and seen[0].fraction == pytest.approx(0.3, abs=0.03)
    assert all(math.isfinite(r.val_loss) for r in seen) and with_rungs.extra_flops > 0
    assert with_rungs.val_curve == plain.val_curve  # the rung branches left the main run untouched

    stopped = train(TINY, BUDGET, config(token_cache, rungs=(0.3, 0.6), out_dir=str(tmp_path / "b")),
                    rung_callback=lambda report: "stop")
    assert stopped.status == "stopped" and stopped.steps == seen[0].step
    assert stopped.val_loss == seen[0].val_loss and stopped.checkpoint.endswith("rung-0.pt")
    resumed = train(TINY, BUDGET, config(token_cache, rungs=(0.3, 0.6), out_dir=str(tmp_path / "b")),
                    resume_from=stopped.checkpoint)
    assert resumed.status == "complete"
    assert resumed.val_loss == plain.val_loss
    assert resumed.val_curve == plain.val_curve
    assert [r["val_loss"] for r in resumed.rungs] == [r.val_loss for r in seen]


def test_resume_refuses_another_runs_checkpoint(token_cache, tmp_path):
    stopped = train(TINY, BUDGET, config(token_cache, rungs=(0.5,), out_dir=str(tmp_path)),
                    rung_callback=lambda r: "stop")
    with pytest.raises(CheckpointError, match="its budget_flops differs"):
        train(TINY, 2 * BUDGET, config(token_cache), resume_from=stopped.checkpoint)
    with pytest.raises(CheckpointError, match="its config differs"):
        train(TINY, BUDGET, config(token_cache, lr=1e-3), resume_from=stopped.checkpoint)
    with pytest.raises(CheckpointError, match="no such file"):
        train(TINY, BUDGET, config(token_cache), resume_from=tmp_path / "missing.pt")


# ---- failures are results ------------------------------------------------------------------


def test_huge_learning_rate_diverges_without_raising(token_cache):
    result = train(TINY, BUDGET, config(token_cache, lr=30.0, grad_clip=None))
    assert result.status == "diverged"
    assert result.failure["step"] >= 1 and (
        "non-finite" in result.failure["message"] or "exceeds" in result.failure["message"]
    )
    assert result.val_curve[0]["tokens"] == 0  # what was measured is kept
    assert result.tokens < make_plan(TINY, BUDGET, config(token_cache)).tokens_after(10**9)


def test_an_exception_inside_training_is_an_error_result(token_cache):
    def broken_callback(report):
        raise RuntimeError("scheduler lost its database")

    result = train(TINY, BUDGET, config(token_cache, rungs=(0.5,)), rung_callback=broken_callback)
    assert result.status == "error"
    assert "RuntimeError: scheduler lost its database" in result.failure["message"]
    assert result.steps == result.failure["step"] > 0 and len(result.val_curve) >= 1
    bad_answer = train(TINY, BUDGET, config(token_cache, rungs=(0.5,)), rung_callback=lambda r: "maybe")
    assert bad_answer.status == "error" and "expected 'continue' or 'stop'" in bad_answer.failure["message"]


# ---- other layer families, micro-batches -----------------------------------------------------


def test_moe_and_intra_hybrid_train_with_micro_batches(token_cache):
    spec = ArchSpec.from_pattern(
        "H-ME", d_model=64, vocab_size=257, attn={"n_heads": 4}, ssm={"d_state": 16, "head_dim": 16},
        moe={"n_experts": 4, "balance": "aux_free"},
    )
    whole = train(spec, BUDGET, config(token_cache))
    micro = train(spec, BUDGET, config(token_cache, micro_batch=4))
    assert whole.status == micro.status == "complete"
    assert whole.val_loss < whole.val_curve[0]["val_loss"] - 1.0
    # accumulating 4 micro-batches sums in another order: equal up to fp32 rounding
    assert micro.val_loss == pytest.approx(whole.val_loss, abs=2e-3)


def test_tokenizer_sets_the_vocabulary(token_cache):
    spec = ArchSpec.from_pattern("M-", d_model=64, ssm={"head_dim": 16})  # vocab 8192 by default
    result = train(spec, 1e10, config(token_cache))
    assert result.spec["vocab_size"] == 257


# ---- CLI -----------------------------------------------------------------------------------


def test_cli_train_json(token_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYBRIDNAS_CACHE", token_cache)
    code = main(["train", "M-*-", "--d-model", "64", "--flops", "2e10", "--seq-len", "64", "--tokenizer", "bytes",
                 "--batch-tokens", "512", "--out", str(tmp_path / "run"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    for key in ("status", "budget_flops", "flops", "tokens", "val_loss", "val_curve", "tokens_per_s", "mfu", "wall_s"):
        assert key in result
    assert result["status"] == "complete" and result["val_curve"][0] == {
        "tokens": 0, "val_loss": result["val_curve"][0]["val_loss"]
    }
    assert json.loads((tmp_path / "run" / "result.json").read_text())["tokens"] == result["tokens"]


def test_cli_train_reports_divergence_with_exit_1(token_cache, capsys, monkeypatch):
    monkeypatch.setenv("HYBRIDNAS_CACHE", token_cache)
    code = main(["train", "M-*-", "--d-model", "64", "--flops", "2e10", "--seq-len", "64", "--tokenizer", "bytes",
                 "--batch-tokens", "256", "--lr", "50", "--json"])
    out, _ = capsys.readouterr()
    assert code == 1 and json.loads(out)["status"] == "diverged"


# ---- learning on real text -------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_hybrid_learns_sotu_at_2e13_flops(tmp_path_factory):
    """The issue's acceptance run: about 9 minutes on a 2-core CPU (~40 GFLOP/s)."""
    token_cache = str(tmp_path_factory.mktemp("bpe-token-cache"))
    spec = ArchSpec.from_pattern("M-*-M-", d_model=128, attn={"n_heads": 4}, ssm={"d_state": 32})
    cfg = TrainConfig(seq_len=128, batch_tokens=8192, eval_points=4, cache_dir=token_cache, progress=False)
    result = train(spec, 2e13, cfg)
    entropy = load_tokens(cache_dir=token_cache).unigram_entropy()
    start, end = result.val_curve[0]["val_loss"], result.val_loss
    print(f"2e13 FLOPs: {result.tokens} tokens, val loss {start:.3f} -> {end:.3f}, unigram entropy {entropy:.3f}, "
          f"{result.tokens_per_s:.0f} tokens/s, {result.wall_s:.0f} s")
    assert result.status == "complete"
    assert result.flops == pytest.approx(2e13, rel=0.01)
    assert end < start - 3.0  # from ~9.0 (uniform over 8192) to well below
    assert end < entropy - 0.5, (end, entropy)
