"""HybridLM and its layers: exact parameter counts, causality, decode = forward, overfitting,
determinism, MoE routing and balancing, and construction-time validation."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridnas import ArchSpec, HybridLM
from hybridnas.model import MoE
from hybridnas.search_space import SpecError, cost
from specs import HYBRID_VARIANTS, JOINT, MOE_VARIANTS, SPECS, VOCAB, tiny


def build(spec: ArchSpec, seed: int = 0) -> HybridLM:
    return HybridLM(spec, seed=seed).eval()


# ---- (d) exact parameter counts ------------------------------------------------------------

ALL_HYBRID = [
    dict(zip(("merge", "norm", "scale", "gate", "out_proj"), combo, strict=True))
    for combo in itertools.product(
        ("mean", "add", "sub", "concat", "merge_attention"),
        ("none", "rms", "group"),
        ("none", "scalar", "vector"),
        ("none", "sigmoid"),
        ("separate", "joint"),
    )
]


@pytest.mark.parametrize("hybrid", ALL_HYBRID, ids=lambda h: "-".join(h.values()))
def test_parameter_count_is_exact_for_every_hybrid_variant(hybrid):
    spec = tiny("H-", hybrid={**hybrid, "attn_fraction": 2 / 3})
    model = HybridLM(spec)
    assert sum(p.numel() for p in model.parameters()) == cost(spec).total.params


@pytest.mark.parametrize("name", SPECS)
def test_parameter_count_is_exact_per_layer(name):
    spec = SPECS[name]
    model = HybridLM(spec)
    report = cost(spec)
    for block, layer in zip(model.blocks, report.layers, strict=True):
        assert sum(p.numel() for p in block.parameters()) == layer.params, (layer.index, layer.symbol)
    assert sum(p.numel() for p in model.parameters()) == report.total.params
    expert_params = sum(
        m.w_gate.numel() + m.w_up.numel() + m.w_down.numel() for m in model.modules() if isinstance(m, MoE)
    )
    if expert_params:
        assert report.total.params_active < report.total.params


def test_parameter_count_is_exact_for_the_examples_scaled_down():
    from hybridnas.search_space.examples import EXAMPLES

    for example in EXAMPLES.values():
        d_model = 96 if example.name.startswith("hymba") else 64
        overrides = {k: v for k, v in example.overrides.items() if k not in ("d_ffn",)}
        overrides.update(d_model=d_model, vocab_size=VOCAB)
        attn = dict(overrides.get("attn", {}))
        attn.update(n_heads=6 if d_model == 96 else 4, n_kv_heads=2)
        ssm = {k: v for k, v in overrides.get("ssm", {}).items() if k != "head_dim"} | {"head_dim": 16, "n_groups": 1}
        moe = {k: v for k, v in overrides.get("moe", {}).items() if k != "d_expert"}
        spec = ArchSpec.from_pattern(example.pattern, **{**overrides, "attn": attn, "ssm": ssm, "moe": moe})
        assert sum(p.numel() for p in HybridLM(spec).parameters()) == cost(spec).total.params, example.name


# ---- (a) causality, (b) decoding ------------------------------------------------------------


@pytest.mark.parametrize("name", SPECS)
def test_causality(name):
    model = build(SPECS[name])
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, VOCAB, (2, 21), generator=gen)
    t = 9
    b = a.clone()
    b[:, t + 1 :] = torch.randint(0, VOCAB, (2, 21 - t - 1), generator=gen)
    with torch.no_grad():
        la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, : t + 1], lb[:, : t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(la[:, t + 1 :], lb[:, t + 1 :])  # the changed tokens do matter


@pytest.mark.parametrize("name", SPECS)
def test_decoding_step_by_step_reproduces_the_forward_pass(name):
    model = build(SPECS[name])
    tokens = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
    cache = model.allocate_cache(2, 21)
    stepped = torch.stack([model.step(tokens[:, i], cache) for i in range(21)], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-5)  # T=21 > window 5: the ring buffer wraps
    # prefill the first 11 tokens, then decode the rest
    cache = model.allocate_cache(2, 21)
    with torch.no_grad():
        prefix = model(tokens[:, :11], cache)
    rest = torch.stack([model.step(tokens[:, i], cache) for i in range(11, 21)], dim=1)
    torch.testing.assert_close(prefix, full[:, :11])
    torch.testing.assert_close(rest, full[:, 11:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["inter", "intra-0-sub", "moe-0", "window"])
def test_cache_size_matches_the_cost_model(name):
    spec = SPECS[name]
    model = build(spec)
    for max_len in (3, 64):
        cache = model.allocate_cache(1, max_len)
        assert cache.nbytes() == cost(spec, max_len, bytes_per_element=4).total.cache_bytes


def test_full_cache_and_non_empty_prefill_are_refused():
    model = build(SPECS["inter"])
    cache = model.allocate_cache(1, 2)
    model.step(torch.tensor([1]), cache)
    with pytest.raises(ValueError, match="prefill needs an empty cache"):
        model(torch.tensor([[1, 2]]), cache)
    model.step(torch.tensor([1]), cache)
    with pytest.raises(ValueError, match="cache is full: max_len=2"):
        model.step(torch.tensor([1]), cache)


# ---- (e) every family learns ---------------------------------------------------------------

FAMILIES = {
    "attention": tiny("*-*-"),
    "mamba2": tiny("M-M-"),
    "inter": tiny("M-*-"),
    "intra-sub": tiny("H-M-"),
    "intra-merge-attention": tiny("H-M-", hybrid={"merge": "merge_attention"}),
    "intra-joint-mean": tiny("H-M-", hybrid={"merge": "mean", "norm": "rms", **JOINT}),
    "window": tiny("W-M-"),
    "moe-aux-free": tiny("*EME"),
    "moe-aux-loss": tiny("*EME", moe=MOE_VARIANTS[1]),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_model_overfits_one_batch(name):
    torch.manual_seed(0)
    model = HybridLM(FAMILIES[name], seed=0).train()
    batch = torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for step in range(200):
        parts = model.losses(batch)
        first = parts.lm.item() if step == 0 else first
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        opt.step()
        model.update_moe_balance()
        if parts.lm.item() < first / 2:
            break
    assert parts.lm.item() < first / 2, f"{name}: loss {first:.3f} -> {parts.lm.item():.3f} in {step + 1} steps"


# ---- loss, determinism ---------------------------------------------------------------------


def test_loss_is_next_token_cross_entropy():
    model = build(SPECS["inter"])
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(tokens[:, :-1])
        expected = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        parts = model.losses(tokens)
    torch.testing.assert_close(parts.lm, expected)
    assert parts.aux.item() == 0.0 and parts.total.item() == parts.lm.item()
    torch.testing.assert_close(model.loss(tokens[:, :-1], tokens[:, 1:]), expected)


def test_initialisation_is_a_function_of_the_seed_only():
    spec = SPECS["intra-0-sub"]
    torch.manual_seed(123)
    before = torch.rand(1)
    a, b, c = HybridLM(spec, seed=7), HybridLM(spec, seed=7), HybridLM(spec, seed=8)
    torch.manual_seed(123)
    assert torch.rand(1) == before  # building a model does not consume the global RNG
    for (name, x), y, _z in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    assert any(not torch.equal(x, z) for x, z in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_residual_outputs_start_smaller():
    model = HybridLM(tiny("*-M-" * 4))
    attn, ffn = model.blocks[0].layer, model.blocks[1].layer
    assert ffn.w_down.weight.std() < 0.5 * ffn.w_in.weight.std()
    assert attn.wo.weight.std() < 0.5 * attn.wq.weight.std()


# ---- MoE -----------------------------------------------------------------------------------


def test_moe_routes_every_token_and_weights_top_k():
    spec = tiny("ME", moe={"n_experts": 4, "top_k": 2, "n_shared": 0, "router": "softmax", "balance": "aux_loss"})
    moe = HybridLM(spec).blocks[1].layer
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(5))
    y, aux = moe(x)
    experts, weights, scores = moe.route(x.reshape(-1, 64))
    torch.testing.assert_close(weights.sum(-1), torch.ones(15))
    # dense recomputation: each token through its top-2 experts
    flat = x.reshape(-1, 64)
    dense = torch.zeros_like(flat)
    for i in range(15):
        for e, w in zip(experts[i], weights[i], strict=True):
            h = F.silu(flat[i] @ moe.w_gate[e]) * (flat[i] @ moe.w_up[e])
            dense[i] += w * (h @ moe.w_down[e])
    torch.testing.assert_close(y.reshape(-1, 64), dense, rtol=1e-4, atol=1e-6)
    assert aux.item() > 0 and aux.requires_grad


def test_aux_free_balancing_moves_the_bias_towards_equal_load():
    spec = tiny("ME", moe={"n_experts": 4, "top_k": 1})
    moe = HybridLM(spec).blocks[1].layer.train()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] += 1.0  # expert 0 wins for tokens with a positive sum
    x = torch.ones(8, 64)
    _, aux = moe(x)
    assert aux.item() == 0.0
    assert moe.expert_load.tolist() == [8.0, 0.0, 0.0, 0.0]
    moe.update_balance(rate=0.1)
    assert moe.expert_bias[0] < 0 < moe.expert_bias[1]
    assert moe.expert_load.sum() == 0  # counts reset for the next step
    for _ in range(20):
        moe(x)
        moe.update_balance(rate=0.1)
    experts, _, _ = moe.route(x)
    assert experts[0].item() != 0  # the overloaded expert is no longer chosen


def test_top1_sigmoid_router_gets_gradient():
    spec = tiny("ME", moe={"top_k": 1, "router": "sigmoid"})
    moe = HybridLM(spec).blocks[1].layer
    y, _ = moe(torch.randn(2, 4, 64))
    y.sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0


# ---- (f) construction-time validation ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pattern": "M-Q"}, "pattern[2]='Q': unknown symbol"),
        ({"pattern": "H-", "attn": {"n_heads": 1, "n_kv_heads": 1}},
         "hybrid.attn_fraction=0.5 leaves a branch of the H block empty"),
        ({"pattern": "H-", "hybrid": {"merge": "add", "out_proj": "joint"}}, "needs equal branch widths"),
        ({"pattern": "*-", "attn": {"n_heads": 4, "n_kv_heads": 3}},
         "attn.n_kv_heads=3 does not divide attn.n_heads=4"),
        ({"pattern": "M-", "ssm": {"n_groups": 3}}, "ssm.n_groups=3 does not divide the 8 Mamba-2 heads"),
        ({"pattern": "ME", "moe": {"top_k": 9}}, "moe.top_k=9 exceeds moe.n_experts=8"),
    ],
)
def test_bad_specs_fail_before_any_module_is_built(kwargs, message):
    with pytest.raises(SpecError, match=None) as info:
        HybridLM(tiny(**kwargs))
    assert message in str(info.value)


def test_hybridlm_needs_a_spec():
    with pytest.raises(TypeError, match="HybridLM needs an ArchSpec, got dict"):
        HybridLM({"pattern": "M-"})


@st.composite
def random_tiny_specs(draw):
    layers = draw(st.lists(st.sampled_from(["M", "*", "W", "H", "M-", "*-", "H-", "ME", "HE"]), min_size=1, max_size=4))
    hybrid = draw(st.sampled_from(HYBRID_VARIANTS))
    moe = draw(st.sampled_from(MOE_VARIANTS))
    return tiny("".join(layers), hybrid=hybrid, moe=moe, tie_embeddings=draw(st.booleans()))


@settings(max_examples=25, deadline=None)
@given(random_tiny_specs())
def test_every_valid_spec_builds_runs_backward_and_matches_its_cost(spec):
    model = HybridLM(spec)
    assert sum(p.numel() for p in model.parameters()) == cost(spec).total.params
    tokens = torch.randint(0, VOCAB, (1, 10))
    loss = model.loss(tokens)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["intra-0-sub", "intra-1-mean", "moe-1", "inter"])
def test_bf16_model_runs_and_decodes_on_cpu(name):
    """Norms compute in fp32 whatever the weights' dtype; bf16 decode stays near forward."""
    model = build(SPECS[name]).to(torch.bfloat16)
    tokens = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(tokens).float()
    cache = model.allocate_cache(2, 13)
    stepped = torch.stack([model.step(tokens[:, i], cache) for i in range(13)], dim=1).float()
    assert cache.tensors[0].dtype == torch.bfloat16
    scale = full.abs().max()
    torch.testing.assert_close(stepped / scale, full / scale, rtol=0, atol=5e-2)


@pytest.mark.parametrize("name", ["intra-0-sub", "intra-7-merge_attention", "moe-1", "moe-2", "inter"])
def test_bf16_autocast_training_step_on_cpu(name):
    """Mixed precision as the trainer will run it: fp32 weights, bf16 autocast."""
    model = HybridLM(SPECS[name])
    tokens = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(tokens)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
