"""``--to mamba-ssm``: a ``MambaConfig`` (mamba_ssm.models.config_mamba) as JSON, the
``config.json`` that ``MambaLMHeadModel.from_pretrained`` reads.

mamba-ssm's model is a stack of blocks, each a mixer (Mamba-2, or MHA at ``attn_layer_idx``)
plus, when ``d_intermediate > 0``, one gated MLP of that width (SwiGLU: silu-gated, as ours).
So a layout exports when it is ``M``/``*`` mixers each followed by exactly one ``-``, or
mixers alone. Refused: ``W`` (MHA has no window), ``H``, ``E`` (no MoE), an FFN without its
mixer or mixers of which only some have an FFN (one ``d_intermediate`` for every block).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hybridnas.export.layers import pair_layers
from hybridnas.search_space import ArchSpec

__all__ = ["FORMAT", "MambaSSMConfig", "mamba_ssm_config"]

FORMAT = "mamba-ssm"


@dataclass(frozen=True)
class MambaSSMConfig:
    """The fields of mamba-ssm's ``MambaConfig`` (same names, same meaning)."""

    d_model: int
    d_intermediate: int
    n_layer: int
    vocab_size: int
    ssm_cfg: dict[str, Any] = field(default_factory=dict)
    attn_layer_idx: list[int] = field(default_factory=list)
    attn_cfg: dict[str, Any] = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 1
    tie_embeddings: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mamba_ssm_config(spec: ArchSpec) -> MambaSSMConfig:
    """The config for ``spec``; :class:`UnsupportedLayerError` for a layer it cannot express."""
    pairs = pair_layers(spec, FORMAT)
    s, a = spec.ssm, spec.attn
    attn_idx = [block for block, pair in enumerate(pairs) if pair.symbol(spec) == "*"]
    ssm_cfg: dict[str, Any] = {
        "layer": "Mamba2", "d_state": s.d_state, "d_conv": s.conv_kernel, "expand": s.expand,
        "headdim": s.head_dim, "ngroups": s.n_groups, "chunk_size": s.chunk_size,
        # ours: RMSNorm of y * silu(z) within each group (norm after the gate), no biases
        "rmsnorm": True, "norm_before_gate": False, "bias": False, "conv_bias": True,
    }
    attn_cfg: dict[str, Any] = {}
    if attn_idx:
        attn_cfg = {
            "num_heads": a.n_heads, "num_heads_kv": a.n_kv_heads, "head_dim": a.head_dim, "causal": True,
            # RoPE on the whole head, rotate-half (GPT-NeoX) layout, as ours; 0 turns it off
            "rotary_emb_dim": a.head_dim if a.rope else 0, "rotary_emb_base": a.rope_theta,
            "rotary_emb_interleaved": False, "qkv_proj_bias": False, "out_proj_bias": False,
        }
    return MambaSSMConfig(
        d_model=spec.d_model,
        d_intermediate=spec.d_ffn if pairs[0].ffn is not None else 0,
        n_layer=len(pairs),
        vocab_size=spec.vocab_size,  # pad_vocab_size_multiple=1: the vocabulary is not padded
        ssm_cfg=ssm_cfg,
        attn_layer_idx=attn_idx,
        attn_cfg=attn_cfg,
        tie_embeddings=spec.tie_embeddings,
    )
