"""ArchSpec: defaults, validation messages, JSON round-trip, ids and descriptions."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import hybridnas
from hybridnas.search_space import ArchSpec, SpecError

# (constructor kwargs, the message the user must see)
BAD_SPECS = [
    ({"pattern": "M-M-X"}, "pattern[4]='X': unknown symbol, expected one of M * W H - E"),
    ({"pattern": "M-m"}, "pattern[2]='m': unknown symbol"),
    ({"pattern": ""}, "pattern='': empty"),
    ({"pattern": "--E"}, "pattern='--E': no mixer layer"),
    ({"pattern": 7}, "pattern=7: input should be a valid string"),
    ({"pattern": "M-", "d_model": 0}, "d_model=0: input should be greater than 0"),
    ({"pattern": "M-", "d_model": -5}, "d_model=-5: input should be greater than 0"),
    ({"pattern": "M-", "d_model": "512"}, "d_model='512': input should be a valid integer"),
    ({"pattern": "M-", "d_model": 64.0}, "d_model=64.0: input should be a valid integer"),
    ({"pattern": "M-", "vocab_size": 0}, "vocab_size=0: input should be greater than 0"),
    ({"pattern": "M-", "tie_embeddings": 1}, "tie_embeddings=1: input should be a valid boolean"),
    ({"pattern": "*-", "d_model": 100, "attn": {"n_heads": 3}}, "attn.n_heads=3 does not divide d_model=100"),
    ({"pattern": "*-", "attn": {"n_heads": 8, "n_kv_heads": 3}}, "attn.n_kv_heads=3 does not divide attn.n_heads=8"),
    ({"pattern": "*-", "attn": {"n_heads": 8, "head_dim": 32}},
     "attn.n_heads=8 x attn.head_dim=32 = 256, expected d_model=512"),
    ({"pattern": "*-", "d_model": 90, "attn": {"n_heads": 6}}, "attn.head_dim=15 must be even for rotary embeddings"),
    ({"pattern": "W-", "attn": {"window": 0}}, "attn.window=0: input should be greater than 0"),
    ({"pattern": "*-", "attn": {"rope": "yes"}}, "attn.rope='yes': input should be a valid boolean"),
    ({"pattern": "M-", "ssm": {"head_dim": 48}},
     "ssm.head_dim=48 does not divide the Mamba-2 width ssm.expand*d_model=1024"),
    ({"pattern": "M-", "ssm": {"n_groups": 3}}, "ssm.n_groups=3 does not divide the 16 Mamba-2 heads"),
    ({"pattern": "M-", "ssm": {"d_state": -1}}, "ssm.d_state=-1: input should be greater than 0"),
    ({"pattern": "H-", "hybrid": {"attn_fraction": 1.0}}, "hybrid.attn_fraction=1.0: input should be less than 1"),
    ({"pattern": "H-", "hybrid": {"attn_fraction": 0.01}},
     "hybrid.attn_fraction=0.01 leaves a branch of the H block empty"),
    ({"pattern": "H-", "hybrid": {"merge": "xor"}},
     "hybrid.merge='xor': input should be 'mean', 'add', 'sub', 'concat' or 'merge_attention'"),
    ({"pattern": "H-", "hybrid": {"norm": "layer"}}, "hybrid.norm='layer'"),
    (
        {"pattern": "H-", "hybrid": {"merge": "add", "out_proj": "joint"}},
        "hybrid.merge='add' with hybrid.out_proj='joint' needs equal branch widths, got attention 256 vs Mamba-2 512",
    ),
    ({"pattern": "ME", "moe": {"top_k": 9}}, "moe.top_k=9 exceeds moe.n_experts=8"),
    ({"pattern": "ME", "moe": {"router": "relu"}}, "moe.router='relu': input should be 'softmax' or 'sigmoid'"),
    ({"pattern": "ME", "moe": {"n_shared": -1}}, "moe.n_shared=-1: input should be greater than or equal to 0"),
    ({"pattern": "M-", "attn": {"heads": 8}},
     "attn.heads: unknown key, expected one of n_heads, n_kv_heads, head_dim, window, rope, rope_theta"),
    ({"pattern": "M-", "layers": 12}, "layers: unknown key, expected one of pattern, d_model"),
    ({"pattern": "M-", "attn": 5}, "attn=5: input should be a valid dictionary"),
    ({"d_model": 64}, "pattern: required"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_SPECS, ids=[m[:40] for _, m in BAD_SPECS])
def test_bad_specs_are_rejected_with_a_message_naming_the_field(kwargs, message):
    with pytest.raises(SpecError) as info:
        ArchSpec(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_spec_error_is_a_value_error_not_a_pydantic_error():
    with pytest.raises(SpecError) as info:
        ArchSpec.from_pattern("M-X")
    assert isinstance(info.value, ValueError) and not isinstance(info.value, ValidationError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ("[1, 2]", "spec: expected a JSON object, got list"),
        ('{"pattern": "M-", "moe": {"n_experts": 4, "topk": 2}}', "moe.topk: unknown key"),
        ('{"pattern": "M-", "d_model": null}', "d_model=None: input should be a valid integer"),
    ],
)
def test_bad_json_is_rejected(text, message):
    with pytest.raises(SpecError, match=None) as info:
        ArchSpec.from_json(text)
    assert message in str(info.value)


def test_unused_sections_are_not_cross_checked():
    # One attention head cannot be split into an H block, but without H in the pattern
    # the hybrid section is never used, so it is not checked against the widths.
    spec = ArchSpec.from_pattern("M-", d_model=64, attn={"n_heads": 1}, hybrid={"attn_fraction": 0.1})
    assert spec.attn.n_heads == 1


def test_defaults_are_derived_from_d_model():
    spec = ArchSpec.from_pattern("M-*-", d_model=2048)
    assert (spec.attn.n_heads, spec.attn.head_dim, spec.attn.n_kv_heads) == (32, 64, 8)
    assert spec.d_ffn == 5504  # 8/3 * 2048 = 5461.3, rounded up to a multiple of 64
    assert (spec.ssm.expand, spec.ssm.head_dim, spec.ssm.d_state) == (2, 64, 128)
    assert spec.dims.d_ssm == 4096 and spec.dims.ssm_heads == 64
    assert spec.moe.d_expert == 5504 // 2  # top-1 + 1 shared match the dense FFN
    assert spec.attn.window == 512


def test_derivation_follows_user_choices():
    spec = ArchSpec.from_pattern("*-", d_model=768, attn={"n_heads": 6})
    assert (spec.attn.head_dim, spec.attn.n_kv_heads) == (128, 1)
    spec = ArchSpec.from_pattern("*-", d_model=768, attn={"head_dim": 96})
    assert spec.attn.n_heads == 8
    odd = ArchSpec.from_pattern("*-M-", d_model=100)  # largest head size <= 64 dividing 100
    assert (odd.attn.n_heads, odd.attn.head_dim, odd.ssm.head_dim) == (2, 50, 50)
    moe = ArchSpec.from_pattern("ME", d_ffn=1536, moe={"top_k": 2, "n_shared": 1})
    assert moe.moe.d_expert == 512


def test_nested_overrides_keep_other_defaults():
    spec = ArchSpec.from_pattern("H-M-", hybrid={"merge": "merge_attention"})
    assert spec.hybrid.merge == "merge_attention"
    assert (spec.hybrid.norm, spec.hybrid.out_proj, spec.hybrid.attn_fraction) == ("group", "separate", 0.5)


def test_hybrid_dims_split_heads_between_branches():
    spec = ArchSpec.from_pattern("H-", d_model=512, hybrid={"attn_fraction": 0.25})
    h = spec.dims.hybrid
    assert (h.attn_heads, h.attn_kv_heads, h.d_attn) == (2, 1, 128)  # 0.25 * 8 heads; GQA group 4 kept
    assert (h.ssm_heads, h.d_ssm, h.merge_width) == (12, 768, 512)  # 0.75 * 1024 / 64
    joint = ArchSpec.from_pattern(
        "H-",
        d_model=512,
        hybrid={"attn_fraction": 2 / 3, "merge": "mean", "out_proj": "joint"},
        attn={"n_heads": 16, "n_kv_heads": 4},
        ssm={"head_dim": 32},
    )
    assert joint.dims.hybrid.d_attn == joint.dims.hybrid.d_ssm == joint.dims.hybrid.merge_width == 352


def test_spec_is_frozen():
    spec = ArchSpec.from_pattern("M-")
    with pytest.raises(ValidationError):
        spec.d_model = 1024  # type: ignore[misc]


def test_archspec_is_exported_from_the_package():
    assert hybridnas.ArchSpec is ArchSpec


@pytest.mark.parametrize(
    ("pattern", "kwargs", "expected"),
    [
        ("M-M-M-M-*-M-M-M-M-*-M-M-M-", {}, "13 mixers: 2 attn (inter) + 11 mamba; dense FFN"),
        ("M-M-H-M-", {}, "4 mixers: 1 hybrid (intra, sub) + 3 mamba; dense FFN"),
        ("MEW-ME", {"attn": {"window": 256}},
         "3 mixers: 1 window-256 attn (inter) + 2 mamba; 2 of 3 FFNs MoE FFN (8 experts, top-1, 1 shared)"),
        ("MM*", {}, "3 mixers: 1 attn (inter) + 2 mamba; no FFN"),
        ("*E", {"moe": {"n_experts": 16, "top_k": 2, "n_shared": 0}},
         "1 mixers: 1 attn (inter); MoE FFN (16 experts, top-2, 0 shared)"),
    ],
)
def test_describe(pattern, kwargs, expected):
    assert ArchSpec.from_pattern(pattern, **kwargs).describe() == expected


def test_short_id_is_stable_and_tracks_every_field():
    spec = ArchSpec.from_pattern("M-M-*-", d_model=256)
    # Pinned: if this changes, every stored study's ids change; say so in the changelog.
    assert spec.short_id == "6fe5cf059d"
    assert spec.short_id == ArchSpec.from_json(spec.to_json()).short_id
    changed = [
        ArchSpec.from_pattern("M-M-*-", d_model=256, attn={"rope": False}),
        ArchSpec.from_pattern("M-M-*-", d_model=256, hybrid={"merge": "mean"}),
        ArchSpec.from_pattern("M-*-M-", d_model=256),
    ]
    assert len({spec.short_id, *(c.short_id for c in changed)}) == 4


def test_short_id_is_the_same_in_a_fresh_interpreter():
    import subprocess
    import sys

    spec = ArchSpec.from_pattern("H-M-E", d_model=128, hybrid={"merge": "concat"})
    code = "import sys; from hybridnas import ArchSpec; print(ArchSpec.from_json(sys.stdin.read()).short_id)"
    out = subprocess.run([sys.executable, "-c", code], input=spec.to_json(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == spec.short_id


# ---- JSON round-trip of random valid specs ------------------------------------------------

mixer = st.sampled_from("M*WH")
ffn = st.sampled_from(["", "-", "E"])


@st.composite
def valid_specs(draw):
    layers = draw(st.lists(st.tuples(mixer, ffn), min_size=1, max_size=8))
    pattern = "".join(m + f for m, f in layers)
    head_dim = draw(st.sampled_from([16, 32, 64]))
    n_heads = draw(st.sampled_from([2, 4, 8]))
    d_model = head_dim * n_heads
    n_kv = draw(st.sampled_from([k for k in (1, 2, 4, 8) if n_heads % k == 0]))
    hybrid = {
        "attn_fraction": 0.5,
        "norm": draw(st.sampled_from(["none", "rms", "group"])),
        "merge": draw(st.sampled_from(["mean", "add", "sub", "concat", "merge_attention"])),
        "scale": draw(st.sampled_from(["none", "scalar", "vector"])),
        "gate": draw(st.sampled_from(["none", "sigmoid"])),
        "out_proj": "separate",
    }
    n_experts = draw(st.integers(1, 16))
    moe = {
        "n_experts": n_experts,
        "top_k": draw(st.integers(1, n_experts)),
        "n_shared": draw(st.integers(0, 2)),
        "router": draw(st.sampled_from(["softmax", "sigmoid"])),
        "balance": draw(st.sampled_from(["aux_free", "aux_loss"])),
    }
    return ArchSpec.from_pattern(
        pattern,
        d_model=d_model,
        vocab_size=draw(st.integers(2, 70_000)),
        tie_embeddings=draw(st.booleans()),
        attn={
            "n_heads": n_heads, "n_kv_heads": n_kv, "window": draw(st.integers(1, 4096)), "rope": draw(st.booleans())
        },
        # head_dim 16 gives every H block at least two Mamba-2 heads to split
        ssm={
            "d_state": draw(st.sampled_from([16, 64, 128])),
            "expand": draw(st.sampled_from([1, 2])),
            "head_dim": 16,
            "chunk_size": draw(st.sampled_from([32, 64, 256])),
        },
        hybrid=hybrid,
        moe=moe,
    )


@settings(max_examples=150, deadline=None)
@given(valid_specs())
def test_json_round_trip_is_exact(spec):
    text = spec.to_json()
    again = ArchSpec.from_json(text)
    assert again == spec
    assert again.to_json() == text
    assert again.short_id == spec.short_id
    assert json.loads(text)["pattern"] == spec.pattern
