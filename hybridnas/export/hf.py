"""``--to hf``: a Hugging Face ``transformers`` config of the closest hybrid architecture, and
with weights, ``model.safetensors`` whose logits are checked against ``HybridLM``'s.

Which architecture (both are Mamba-2 + GQA attention, pre-norm RMSNorm, gated-RMSNorm Mamba
output, the weights' layout of mamba-ssm, as ours):

- ``GraniteMoeHybrid`` when the layout has FFNs: each of its layers is one mixer (``M`` or
  ``*``) and then one SwiGLU MLP (``shared_mlp``, gate and up fused as our ``w_in``), RoPE on
  the whole head or none. Its scales (embedding, residual, logits, attention) are set to
  ours. Refused: ``W``, ``H``, ``E`` (its MoE puts experts in every layer, softmax over the
  top-k, beside the shared MLP), an FFN without its mixer or a mixer without its FFN.
- ``NemotronH`` when the layout has no FFN (its ``-`` is a squared-ReLU MLP without a gate,
  its ``E`` the same experts: not our SwiGLU): any sequence of ``M`` and ``*``, but its
  attention has no position embedding, so ``*`` needs ``attn.rope = false``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from hybridnas.export.errors import ExportError, refuse
from hybridnas.export.layers import Pair, pair_layers
from hybridnas.search_space import ArchSpec

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["FORMAT", "Architecture", "choose", "hf_config", "hf_state_dict", "write_hf", "LogitsCheck",
           "check_logits", "LOGITS_ATOL"]

FORMAT = "hf"
NORM_EPS = 1e-5  # hybridnas.model.norms.EPS
LOGITS_ATOL = 1e-4  # fp32 on the CPU: the two SSD implementations differ by rounding (~1e-6)
CHECK_TOKENS = (2, 24)  # the fixed input of the logits check: [batch, T]

Arch = Literal["GraniteMoeHybrid", "NemotronH"]


@dataclass(frozen=True)
class Architecture:
    """The chosen HF architecture and its blocks (a mixer and, for Granite, its FFN)."""

    name: Arch
    blocks: tuple[Pair, ...]


def choose(spec: ArchSpec) -> Architecture:
    """The architecture for ``spec``, or :class:`UnsupportedLayerError` naming the layer."""
    if set(spec.pattern) & {"-", "E"}:
        fmt = f"{FORMAT} (GraniteMoeHybrid)"
        return Architecture("GraniteMoeHybrid", tuple(pair_layers(spec, fmt, ffn_required=True)))
    fmt = f"{FORMAT} (NemotronH, for layouts without FFNs)"
    blocks = tuple(pair_layers(spec, fmt, ffn_required=False))
    for block in blocks:
        if block.symbol(spec) == "*" and spec.attn.rope:
            raise refuse(fmt, block.mixer, "*", "attention with RoPE (its attention has no position embedding; "
                         "set attn.rope=false)")
    return Architecture("NemotronH", blocks)


def hf_config(spec: ArchSpec, seq_len: int) -> PretrainedConfig:
    """The ``transformers`` config of ``spec`` (validated by transformers itself)."""
    from transformers import GraniteMoeHybridConfig, NemotronHConfig

    arch = choose(spec)
    a, s = spec.attn, spec.ssm
    layer_types = ["full_attention" if b.symbol(spec) == "*" else "linear_attention" for b in arch.blocks]
    ssm_heads = spec.dims.d_ssm // s.head_dim
    if arch.name == "NemotronH":
        return NemotronHConfig(
            vocab_size=spec.vocab_size, hidden_size=spec.d_model, layers_block_type=layer_types,
            tie_word_embeddings=spec.tie_embeddings, num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
            head_dim=a.head_dim, max_position_embeddings=seq_len, ssm_state_size=s.d_state,
            mamba_num_heads=ssm_heads, mamba_head_dim=s.head_dim, n_groups=s.n_groups, conv_kernel=s.conv_kernel,
            expand=s.expand, chunk_size=s.chunk_size, use_conv_bias=True, mamba_proj_bias=False, use_bias=False,
            layer_norm_epsilon=NORM_EPS, architectures=["NemotronHForCausalLM"],
        )
    return GraniteMoeHybridConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.d_model, num_hidden_layers=len(layer_types),
        layer_types=layer_types, intermediate_size=spec.d_ffn, shared_intermediate_size=spec.d_ffn,
        num_local_experts=0, hidden_act="silu", tie_word_embeddings=spec.tie_embeddings,
        num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads, max_position_embeddings=seq_len,
        position_embedding_type="rope" if a.rope else None,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
        # Granite's muP-style scales, set to what ours computes: none, and 1/sqrt(d) attention
        embedding_multiplier=1.0, residual_multiplier=1.0, logits_scaling=1.0, attention_multiplier=a.head_dim**-0.5,
        rms_norm_eps=NORM_EPS, mamba_n_heads=ssm_heads, mamba_d_head=s.head_dim, mamba_n_groups=s.n_groups,
        mamba_d_state=s.d_state, mamba_d_conv=s.conv_kernel, mamba_expand=s.expand, mamba_chunk_size=s.chunk_size,
        mamba_conv_bias=True, mamba_proj_bias=False, architectures=["GraniteMoeHybridForCausalLM"],
    )


_MAMBA = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight")
_ATTN = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}


def hf_state_dict(spec: ArchSpec, ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """``HybridLM(spec).state_dict()`` under the chosen architecture's names. Every tensor is
    the same values in the same layout: our Mamba-2 is mamba-ssm's (z, xBC, dt in in_proj), our
    SwiGLU's fused [gate; up] is Granite's ``input_linear``, attention is q/k/v/o."""
    arch = choose(spec)
    granite = arch.name == "GraniteMoeHybrid"
    out = {("model.embed_tokens.weight" if granite else "model.embeddings.weight"): ours["embed.weight"]}
    for j, block in enumerate(arch.blocks):
        theirs, mine = f"model.layers.{j}", f"blocks.{block.mixer}"
        mixer = f"{theirs}.{('mamba' if block.symbol(spec) == 'M' else 'self_attn') if granite else 'mixer'}"
        out[f"{theirs}.{'input_layernorm' if granite else 'norm'}.weight"] = ours[f"{mine}.norm.weight"]
        if block.symbol(spec) == "M":
            out |= {f"{mixer}.{name}": ours[f"{mine}.layer.{name}"] for name in _MAMBA}
        else:
            out |= {f"{mixer}.{hf}.weight": ours[f"{mine}.layer.{name}.weight"] for name, hf in _ATTN.items()}
        if block.ffn is not None:
            ffn = f"blocks.{block.ffn}"
            out[f"{theirs}.post_attention_layernorm.weight"] = ours[f"{ffn}.norm.weight"]
            out[f"{theirs}.shared_mlp.input_linear.weight"] = ours[f"{ffn}.layer.w_in.weight"]
            out[f"{theirs}.shared_mlp.output_linear.weight"] = ours[f"{ffn}.layer.w_down.weight"]
    out["model.norm.weight" if granite else "model.norm_f.weight"] = ours["norm.weight"]
    out["lm_head.weight"] = ours["embed.weight"] if spec.tie_embeddings else ours["lm_head.weight"]
    return out


def write_hf(spec: ArchSpec, out_dir: Path, seq_len: int, weights: dict[str, Tensor] | None = None) -> None:
    """``config.json`` (``config.save_pretrained``), and with ``weights`` (our state dict) the
    model too: ``model.safetensors``."""
    config = hf_config(spec, seq_len)
    if weights is None:
        config.save_pretrained(out_dir)
        return
    model = _hf_model(config, hf_state_dict(spec, weights))
    model.save_pretrained(out_dir)


def _hf_model(config: PretrainedConfig, state: dict[str, Tensor]) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(state, strict=False)
    # a tied head is not a key of its own in some versions: the only missing key allowed
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise ExportError(f"the {type(model).__name__} names do not match: missing {missing[:3]}, "
                          f"unexpected {result.unexpected_keys[:3]}")
    return model


@dataclass(frozen=True)
class LogitsCheck:
    max_abs_diff: float
    atol: float
    tokens: tuple[int, int]  # [batch, T] of the fixed input

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


@torch.no_grad()
def check_logits(spec: ArchSpec, weights: dict[str, Tensor], out_dir: Path) -> LogitsCheck:
    """Load the exported model back from ``out_dir`` (as a user would, offline) and compare its
    logits [batch, T, vocab] with ``HybridLM``'s on fixed tokens, CPU, fp32."""
    from transformers import AutoModelForCausalLM

    from hybridnas.model import HybridLM

    ours = HybridLM(spec).eval()
    ours.load_state_dict(weights)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never the Hub
    theirs = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    tokens = torch.randint(0, spec.vocab_size, CHECK_TOKENS, generator=torch.Generator().manual_seed(0))
    expected = ours(tokens).float()
    got = theirs(input_ids=tokens, use_cache=False).logits.float()
    diff = (expected - got).abs().max().item()
    return LogitsCheck(diff, LOGITS_ATOL, CHECK_TOKENS)
