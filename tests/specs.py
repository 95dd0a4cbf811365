"""Spec sets shared by the model tests (CPU and CUDA): every layer symbol, every hybrid
option and the MoE variants, at sizes that run in milliseconds."""

from hybridnas import ArchSpec

VOCAB = 97
# Small enough for milliseconds, large enough for every split: 4 attention heads of 16,
# Mamba-2 heads of 16 (8 of them), SSD chunks of 8 so T=21 spans chunks unevenly.
TINY = {
    "d_model": 64,
    "vocab_size": VOCAB,
    "attn": {"n_heads": 4, "n_kv_heads": 2, "window": 5},
    "ssm": {"d_state": 16, "head_dim": 16, "chunk_size": 8},
}
# attn_fraction 2/3 gives equal branch widths (3 heads x 16 = 48 = 3 Mamba-2 heads x 16),
# which a joint output projection needs for elementwise merges.
JOINT = {"attn_fraction": 2 / 3, "out_proj": "joint"}


def tiny(pattern: str, **more) -> ArchSpec:
    sections = {
        key: {**TINY.get(key, {}), **value} if isinstance(value, dict) else value for key, value in more.items()
    }
    return ArchSpec.from_pattern(pattern, **{**TINY, **sections})


# Every hybrid option appears at least once, across both output projections.
HYBRID_VARIANTS = [
    {"merge": "sub", "norm": "group"},  # Bae et al.'s best (the default)
    {"merge": "mean", "norm": "rms", **JOINT},  # Hymba
    {"merge": "add", "norm": "none"},  # Falcon-H1
    {"merge": "add", "norm": "group", "scale": "scalar", **JOINT},
    {"merge": "sub", "norm": "rms", "scale": "vector", "gate": "sigmoid"},
    {"merge": "concat", "norm": "group"},
    {"merge": "concat", "norm": "rms", "scale": "vector", "gate": "sigmoid", "out_proj": "joint"},
    {"merge": "merge_attention", "norm": "group"},
    {"merge": "merge_attention", "norm": "none", "gate": "sigmoid", **JOINT},
    {"merge": "mean", "scale": "scalar", "gate": "sigmoid"},
]
MOE_VARIANTS = [
    {},  # Bae et al.: sigmoid router, top-1 of 8, 1 shared, aux-loss-free
    {"router": "softmax", "top_k": 2, "n_shared": 0, "balance": "aux_loss"},  # Mixtral / Jamba-like
    {"router": "sigmoid", "top_k": 2, "n_shared": 2, "n_experts": 4, "balance": "aux_loss"},
    {"router": "softmax", "top_k": 1, "n_shared": 1, "n_experts": 16},
]
SPECS = {
    "attention": tiny("*-*-"),
    "window": tiny("W-W-"),
    "mamba2": tiny("M-M-"),
    "inter": tiny("M-*-W-M"),
    "no-rope-untied": tiny("*-M-", attn={"rope": False}, tie_embeddings=False),
    "groups": tiny("M-H-", ssm={"n_groups": 2}, hybrid={"attn_fraction": 0.5}),
    **{f"intra-{i}-{v['merge']}": tiny("H-M-", hybrid=v) for i, v in enumerate(HYBRID_VARIANTS)},
    **{f"moe-{i}": tiny("*EME", moe=v) for i, v in enumerate(MOE_VARIANTS)},
}
