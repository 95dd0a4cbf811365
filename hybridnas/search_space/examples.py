"""Built-in example layouts, from the papers in DESIGN-REFERENCES.md.

Sizes follow the published configs where the paper gives them. Every model here is built
from our blocks (Mamba-2, GQA attention, SwiGLU), so a "-style" example keeps the
reference's layout and widths, not its exact block internals (Jamba's Mamba-1 layers,
Nemotron-H's squared-ReLU FFN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hybridnas.search_space.layout import layout
from hybridnas.search_space.spec import ArchSpec

__all__ = ["Example", "EXAMPLES"]

LLAMA3_VOCAB = 128_256
_BAE_1B: dict[str, Any] = {"d_model": 2048, "vocab_size": LLAMA3_VOCAB, "attn": {"n_heads": 32, "n_kv_heads": 8}}


@dataclass(frozen=True)
class Example:
    name: str
    source: str
    pattern: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def spec(self, **more: Any) -> ArchSpec:
        """The example's spec; ``more`` overrides top-level fields (sizes are re-derived)."""
        return ArchSpec.from_pattern(self.pattern, **{**self.overrides, **more})


_EXAMPLES = [
    Example("llama-1b", "Bae et al. 2025: 1B attention baseline, 16 x d2048, 32 heads / 8 kv",
            "*-" * 16, _BAE_1B),
    Example("mamba2-1b", "Bae et al. 2025: 1B Mamba-2 baseline, 13 layers, d_ssm 4096, N 128",
            "M-" * 13, _BAE_1B),
    Example("bae-inter-1:5", "Bae et al. 2025: inter-layer hybrid 1:5 at 13 mixers",
            "M-M-M-M-*-M-M-M-M-*-M-M-M-", _BAE_1B),
    Example("bae-intra-1:5", "Bae et al. 2025-style intra-layer hybrid: the 1:5 layout with H blocks "
            "(GroupNorm, subtract, separate out-projections)", layout(13, 2, "even", "intra"), _BAE_1B),
    Example("bae-inter-1:5-moe", "Bae et al. 2025: inter 1:5 with MoE FFNs (1 shared + top-1 of 8 "
            "half-width experts, sigmoid router, aux-loss-free)", layout(13, 2, (4, 9), moe_every=1),
            _BAE_1B),
    Example("nemotron-h-8b", "Nemotron-H-8B layout; SwiGLU at 2/3 of its squared-ReLU width 21504, same params",
            "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
            {"d_model": 4096, "d_ffn": 14336, "vocab_size": 131_072, "tie_embeddings": False,
             "attn": {"n_heads": 32, "n_kv_heads": 8},
             "ssm": {"d_state": 128, "head_dim": 64, "n_groups": 8}}),
    Example("jamba-style", "Jamba layout: 32 layers, attention every 8th from layer 4 (1:7), "
            "MoE (16 experts, top-2) every other FFN; Mamba-2 mixers",
            layout(32, 4, (4, 12, 20, 28), moe_every=2),
            {"d_model": 4096, "d_ffn": 14336, "vocab_size": 65_536, "tie_embeddings": False,
             "attn": {"n_heads": 32, "n_kv_heads": 8},
             "moe": {"n_experts": 16, "top_k": 2, "n_shared": 0, "d_expert": 14336,
                     "router": "softmax", "balance": "aux_loss"}}),
    Example("hymba-style", "Hymba-style parallel heads: per-branch RMSNorm, mean, one shared "
            "out-projection (attention:SSM widths equal at attn_fraction 2/3)", "H-" * 16,
            {"d_model": 1536, "attn": {"n_heads": 24, "n_kv_heads": 6},
             "hybrid": {"attn_fraction": 2 / 3, "norm": "rms", "merge": "mean", "out_proj": "joint"}}),
    Example("falcon-h1-style", "Falcon-H1-style parallel hybrid: separate out-projections summed, "
            "attention:SSM channels 1:2", "H-" * 24,
            {"d_model": 1024, "attn": {"n_heads": 16, "n_kv_heads": 4},
             "hybrid": {"attn_fraction": 1 / 3, "norm": "none", "merge": "add", "out_proj": "separate"}}),
]

EXAMPLES: dict[str, Example] = {example.name: example for example in _EXAMPLES}
