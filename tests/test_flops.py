"""The analytic cost model against two independent FLOP counters run on the real model."""

import pytest

from hybridnas.cli import main
from hybridnas.proxies.flops import attention_dense_gap, count_fvcore, count_torch
from hybridnas.search_space import ArchSpec, cost

T = 128
BASE = {
    "d_model": 256, "vocab_size": 512, "attn": {"n_heads": 4, "n_kv_heads": 2, "window": 32}, "ssm": {"d_state": 32}
}


def spec(pattern, **more):
    return ArchSpec.from_pattern(pattern, **{**BASE, **more})


NO_SSD = {
    "attention": spec("*-*-"),
    "window": spec("W-*-"),  # window 32 < T: the mask matters
    "untied": spec("*-*-", tie_embeddings=False),
    "no-ffn": spec("**"),
    "moe-top2": spec("*E*E", moe={"n_experts": 4, "top_k": 2, "router": "softmax", "balance": "aux_loss"}),
    "moe-shared": spec("*E"),
}
ALL = {
    **NO_SSD,
    "mamba2": spec("M-M-"),
    "inter": spec("M-*-W-M-"),
    "intra": spec("H-M-"),
    "intra-merge-attention-gate": spec("H-M-", hybrid={"merge": "merge_attention", "gate": "sigmoid"}),
    "intra-joint-concat": spec("H-", hybrid={"merge": "concat", "out_proj": "joint", "norm": "rms", "scale": "vector"}),
    "intra-moe": spec("HEME", ssm={"d_state": 32, "n_groups": 2}),
}


@pytest.mark.parametrize("name", NO_SSD)
def test_torch_flop_counter_agrees_within_2_percent(name):
    """FlopCounterMode counts attention densely (T x T; its source: "we aren't accounting for
    causal attention"); the cost model counts the causal pairs, so the gap is added back."""
    s = NO_SSD[name]
    analytic = cost(s, T).total.train_flops_per_token
    counted = count_torch(s, T, batch=2)
    assert counted.train_flops_per_token - attention_dense_gap(s, T) == pytest.approx(analytic, rel=0.02)
    assert "aten.mm" in counted.by_op


def test_torch_flop_counter_sees_the_dense_attention_gap():
    """The correction above is real: without it, attention-heavy specs are over-counted."""
    s = NO_SSD["attention"]
    counted = count_torch(s, T).train_flops_per_token
    assert attention_dense_gap(s, T) > 0.03 * counted
    assert counted > 1.03 * cost(s, T).total.train_flops_per_token


@pytest.mark.parametrize("name", ALL)
def test_fvcore_agrees_within_5_percent(name):
    s = ALL[name]
    analytic = cost(s, T).total.train_flops_per_token
    counted, by_op = count_fvcore(s, T)
    assert counted == pytest.approx(analytic, rel=0.05)
    assert by_op.get("linear", 0) > 0
    if "M" in s.pattern or "H" in s.pattern:
        assert by_op["ssd_scan_opaque"] > 0 and by_op["conv"] > 0
    if "E" in s.pattern:
        assert by_op["expert_swiglu_opaque"] > 0


def test_fvcore_counts_only_the_window():
    """A window of 32 at T=128 allows 32*33/2 + 96*32 pairs of 128*129/2: the SDPA handle
    reads the mask, so the attention count is that fraction of the global one."""
    global_, windowed = count_fvcore(spec("*"), T)[1], count_fvcore(spec("W"), T)[1]
    ratio = windowed["scaled_dot_product_attention"] / global_["scaled_dot_product_attention"]
    assert ratio == pytest.approx((32 * 33 / 2 + 96 * 32) / (128 * 129 / 2))


def test_inspect_module_table(capsys):
    code = main(["inspect", "M-H-E", "--d-model", "128", "--seq-len", "64", "--module-table"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert "| module" in out and "blocks.2.layer" in out and "#parameters or shape" in out


def test_inspect_module_table_refuses_huge_models(capsys):
    code = main(["inspect", "nemotron-h-8b", "--module-table"])
    _, err = capsys.readouterr()
    assert code == 2 and "pass a smaller --d-model" in err and err.count("\n") == 1
