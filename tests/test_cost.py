"""The analytic cost model against numbers worked out by hand, and its scaling laws.

Every hand count uses the same small sizes: d_model D=64, vocab V=256 (tied), attention
4 heads of 16 with 2 kv heads, SwiGLU d_ffn=192 (8/3 * 64 rounded up to 64), Mamba-2 with
expand 2 (d_in=128), head_dim 64 (2 heads), d_state N=16, 1 group, conv kernel K=4.
"""

import pytest

from hybridnas.search_space import ArchSpec, layout
from hybridnas.search_space.cost import attention_pairs, cost

T = 128
SMALL = {"d_model": 64, "vocab_size": 256, "attn": {"n_heads": 4, "n_kv_heads": 2}, "ssm": {"d_state": 16}}

NORM = 64  # every layer's pre-norm, and the final norm
EMBED = 256 * 64  # 16384
HEAD_TRAIN = 6 * 64 * 256  # 98304, the LM head, tied or not
# attention: Wq 64x64 + Wk 64x32 + Wv 64x32 + Wo 64x64
ATTN = 4096 + 2048 + 2048 + 4096 + NORM  # 12352
# Mamba-2: in_proj 64*(2*128 + 2*16 + 2) + conv (128+32)*(4+1) + dt_bias/A_log/D 3*2
#          + gated norm 128 + out_proj 128*64
MAMBA = 18560 + 800 + 6 + 128 + 8192 + NORM  # 27750
FFN = 3 * 64 * 192 + NORM  # 36928
ATTN_TRAIN_EXTRA = 12 * 64 * (T * (T + 1) / 2) / T  # 49536 per attention layer at T=128
SSD_TRAIN = 3 * (9 * 128 * 16 + 2 * 128)  # 56064 per Mamba-2 layer, any T
ATTN_CACHE = 2 * (2 * 16) * T * 2  # keys+values, 2 kv heads x 16, T positions, bf16: 16384
MAMBA_CACHE = (128 * 16 + (128 + 2 * 16) * 4) * 2  # SSM state + conv state, bf16: 5376


def spec(pattern, **more):
    return ArchSpec.from_pattern(pattern, **{**SMALL, **more})


def test_pure_attention_by_hand():
    report = cost(spec("*-*-"), T)
    assert [layer.params for layer in report.layers] == [ATTN, FFN, ATTN, FFN]
    nonembed = 2 * (ATTN + FFN) + NORM
    assert nonembed == 98624
    total = report.total
    assert (total.params, total.params_nonembed, total.params_active) == (
        (nonembed + EMBED,) + (nonembed,) + (nonembed + EMBED,)
    )
    assert total.train_flops_per_token == 6 * 98624 + 2 * 49536 + 98304 == 789120
    assert total.infer_flops_per_token == 2 * 98624 + 2 * (4 * 64 * T) + 2 * 64 * 256 == 295552
    assert total.cache_bytes == 2 * ATTN_CACHE == 32768


def test_pure_mamba_by_hand():
    report = cost(spec("M-M-"), T)
    assert [layer.params for layer in report.layers] == [MAMBA, FFN, MAMBA, FFN]
    nonembed = 2 * (MAMBA + FFN) + NORM
    assert report.total.params == nonembed + EMBED == 145804
    assert report.total.train_flops_per_token == 6 * nonembed + 2 * SSD_TRAIN + HEAD_TRAIN == 986952
    assert report.total.cache_bytes == 2 * MAMBA_CACHE == 10752


def test_inter_1_to_5_by_hand():
    pattern = layout(6, 1)  # Megatron's even placement puts the one attention mixer at 3
    assert pattern == "M-M-M-*-M-M-"
    report = cost(spec(pattern), T)
    nonembed = 5 * MAMBA + ATTN + 6 * FFN + NORM
    assert nonembed == 372734
    assert report.total.params == nonembed + EMBED
    assert report.total.train_flops_per_token == 6 * nonembed + ATTN_TRAIN_EXTRA + 5 * SSD_TRAIN + HEAD_TRAIN == 2664564
    assert report.total.cache_bytes == ATTN_CACHE + 5 * MAMBA_CACHE


# The H block with the defaults (attn_fraction 0.5, GroupNorm, subtract, separate W_out):
# attention branch round(0.5*4)=2 heads (d_a=32) with 1 kv head (GQA group 2 kept);
# Mamba-2 branch round(0.5*128/64)=1 head (d_s=64).
H_ATTN_BRANCH = 64 * (32 + 2 * 16)  # Wq, Wk, Wv: 4096
H_SSM_BRANCH = 64 * (2 * 64 + 2 * 16 + 1) + (64 + 32) * 5 + 3 + 64  # in_proj, conv, dt/A/D, gated norm: 10851
H_DEFAULT = H_ATTN_BRANCH + H_SSM_BRANCH + 2 * (32 + 64) + (32 + 64) * 64 + NORM  # + GroupNorm w,b + 2 W_out: 21347


def test_intra_1_to_5_by_hand():
    pattern = layout(6, 1, fusion="intra")
    assert pattern == "M-M-M-H-M-M-"
    report = cost(spec(pattern), T)
    assert report.layers[6].params == H_DEFAULT == 21347
    nonembed = 5 * MAMBA + H_DEFAULT + 6 * FFN + NORM
    h_attn_extra = 12 * 32 * (T * (T + 1) / 2) / T  # 24768
    h_ssd = 3 * (9 * 64 * 16 + 2 * 64)  # 28032
    assert (
        report.total.train_flops_per_token
        == 6 * nonembed + h_attn_extra + h_ssd + 5 * SSD_TRAIN + HEAD_TRAIN
        == 2721798
    )
    h_cache = (2 * 16 * T + 64 * 16 + (64 + 32) * 4) * 2  # 1 kv head of 16; state; conv
    assert report.total.cache_bytes == h_cache + 5 * MAMBA_CACHE == 37888


@pytest.mark.parametrize(
    ("hybrid", "expected"),
    [
        ({}, H_DEFAULT),
        # RMSNorm weights 96, vector scales 96, joint W_out reads the concat (96x64), gate 64x96
        ({"norm": "rms", "merge": "concat", "scale": "vector", "gate": "sigmoid", "out_proj": "joint"},
         H_ATTN_BRANCH + H_SSM_BRANCH + 96 + 96 + 96 * 64 + 64 * 96 + NORM),
        # merge-attention in d_model space: Wq 64x64, Wk 64x64; two separate W_out
        ({"merge": "merge_attention"}, H_ATTN_BRANCH + H_SSM_BRANCH + 192 + 96 * 64 + 64 * 64 + 64 * 64 + NORM),
        # concat after separate projections: a 128 -> 64 merge projection; 2 scalars
        (
            {"norm": "none", "merge": "concat", "scale": "scalar"},
            H_ATTN_BRANCH + H_SSM_BRANCH + 2 + 96 * 64 + 128 * 64 + NORM,
        ),
    ],
)
def test_intra_block_variants_by_hand(hybrid, expected):
    assert cost(spec("H", hybrid=hybrid), T).layers[0].params == expected


def test_moe_by_hand():
    moe = {"n_experts": 4, "top_k": 2, "n_shared": 1, "d_expert": 32}
    report = cost(spec("*E", moe=moe), T)
    expert = 3 * 64 * 32  # 6144
    router = 64 * 4
    layer = report.layers[1]
    assert layer.params == router + (4 + 1) * expert + NORM == 31040
    assert layer.params_active == router + (2 + 1) * expert + NORM == 18752
    total = report.total
    assert total.params == ATTN + 31040 + NORM + EMBED == 59840
    assert total.params_active == ATTN + 18752 + NORM + EMBED == 47552
    # training compute follows the active parameters
    assert total.train_flops_per_token == 6 * (ATTN + 18752 + NORM) + 49536 + HEAD_TRAIN == 334848


def test_untied_head_counts_its_parameters():
    tied, untied = cost(spec("M-")), cost(spec("M-", tie_embeddings=False))
    assert untied.total.params - tied.total.params == 256 * 64
    assert untied.total.params_nonembed == tied.total.params_nonembed
    assert untied.total.train_flops_per_token == tied.total.train_flops_per_token


def test_attention_flops_grow_with_context_and_mamba_flops_do_not():
    lengths = [256, 1024, 4096, 16384]
    attn = [cost(spec("*-"), t).total.train_flops_per_token for t in lengths]
    mamba = [cost(spec("M-"), t).total.train_flops_per_token for t in lengths]
    assert all(b > a for a, b in zip(attn, attn[1:], strict=False))  # neighbouring pairs: attn[1:] is one shorter
    assert len(set(mamba)) == 1
    # the growth is the causal-attention term: 12 * d_attn * (T+1)/2 per token
    assert attn[-1] - attn[0] == pytest.approx(6 * 64 * (16384 - 256))


def test_attention_cache_is_linear_in_context_and_mamba_cache_constant():
    for t in (100, 1000, 10000):
        assert cost(spec("*-"), t).total.cache_bytes == t * 2 * 32 * 2
        assert cost(spec("M-"), t).total.cache_bytes == MAMBA_CACHE


def test_window_bounds_attention_cost_and_cache():
    window = {"window": 64, "n_heads": 4, "n_kv_heads": 2}
    short, long = (cost(spec("W-", attn=window), t) for t in (32, 4096))
    assert short.total.train_flops_per_token == cost(spec("*-"), 32).total.train_flops_per_token  # T <= window
    assert long.total.cache_bytes == 64 * 2 * 32 * 2
    # each query past the first window sees exactly 64 keys
    assert attention_pairs(4096, 64) == 64 * 65 // 2 + (4096 - 64) * 64
    assert attention_pairs(10, None) == 55 and attention_pairs(10, 100) == 55


def test_published_reference_points():
    """Bae et al. 2025 report cache at 8K for their 1B models and token counts at 4.5e20 FLOPs;
    our formulas reproduce them to within rounding (batch 1, bf16)."""
    bae = {"d_model": 2048, "vocab_size": 128_256, "attn": {"n_heads": 32, "n_kv_heads": 8}}
    mib = 2**20
    llama = cost(ArchSpec.from_pattern("*-" * 16, **bae), 8192).total
    mamba = cost(ArchSpec.from_pattern("M-" * 13, **bae), 8192).total
    inter = cost(ArchSpec.from_pattern("M-M-M-M-*-M-M-M-M-*-M-M-M-", **bae), 8192).total
    assert llama.cache_bytes / mib == 256
    assert mamba.cache_bytes / mib == pytest.approx(13.4, abs=0.1)
    assert inter.cache_bytes / mib == pytest.approx(43, abs=0.5)
    assert 4.5e20 / llama.train_flops_per_token == pytest.approx(60e9, rel=0.02)  # "Llama 60B tokens"
    assert 4.5e20 / inter.train_flops_per_token == pytest.approx(73e9, rel=0.05)  # "Inter 73B"


def test_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len=0: must be a positive integer"):
        cost(spec("M-"), 0)


def test_merge_attention_counts_its_key_projection_twice():
    """W_k (64x64 in d_model space) runs on both branch outputs: 6·N counts it once, the
    model applies it twice, so the layer adds 6·64·64 training FLOPs on top."""
    plain = cost(spec("H", hybrid={"merge": "sub"}), T).layers[0]
    merge_attention = cost(spec("H", hybrid={"merge": "merge_attention"}), T).layers[0]
    extra_params = 64 * 64 + 64 * 64  # W_q, W_k
    assert merge_attention.params - plain.params == extra_params
    assert merge_attention.train_flops_per_token - plain.train_flops_per_token == 6 * extra_params + 6 * 64 * 64
