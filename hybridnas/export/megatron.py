"""``--to megatron``: Megatron-LM's hybrid (Mamba) model arguments as a shell-ready args file.

Megatron's ``--hybrid-override-pattern`` uses our symbols for ``M * - E`` (one layer each), so
the pattern carries over as it is. What its one Mamba and one attention layer type fix:
Mamba-2 with ``expand`` 2 and a width-4 conv (neither is an argument), one attention kind for
every ``*`` (no sliding window ``W``), no intra-layer hybrid ``H``. Refused: ``W``, ``H``,
``M`` with ``ssm.expand != 2`` or ``ssm.conv_kernel != 4``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from hybridnas.export.errors import refuse
from hybridnas.search_space import ArchSpec

__all__ = ["FORMAT", "MegatronArgs", "megatron_args"]

FORMAT = "megatron"
MEGATRON_MAMBA_EXPAND = 2  # megatron.core's MambaMixer default, not exposed as an argument
MEGATRON_MAMBA_CONV = 4
NORM_EPS = 1e-5  # hybridnas.model.norms.EPS


@dataclass(frozen=True)
class MegatronArgs:
    """The arguments in order: ``(flag, value)``, value None for a switch."""

    args: tuple[tuple[str, str | None], ...]

    def to_text(self, header: str) -> str:
        """A bash file defining ``MODEL_ARGS=(...)``, one argument per line, for
        ``pretrain_mamba.py "${MODEL_ARGS[@]}"``."""
        lines = [f"    {flag}" + ("" if value is None else f" {shlex.quote(value)}") for flag, value in self.args]
        return "\n".join([f"# {header}", "MODEL_ARGS=(", *lines, ")", ""])


def megatron_args(spec: ArchSpec, seq_len: int) -> MegatronArgs:
    """The model arguments of ``spec`` at ``seq_len``; :class:`UnsupportedLayerError` first."""
    _check(spec)
    a, s = spec.attn, spec.ssm
    used = set(spec.pattern)
    out: list[tuple[str, str | None]] = [
        ("--hybrid-override-pattern", spec.pattern),
        ("--num-layers", str(len(spec.pattern))),
        ("--hidden-size", str(spec.d_model)),
        ("--seq-length", str(seq_len)),
        ("--max-position-embeddings", str(seq_len)),
        # NullTokenizer's vocabulary is --vocab-size plus its end-of-document id
        ("--tokenizer-type", "NullTokenizer"),
        ("--vocab-size", str(spec.vocab_size - 1)),
        ("--make-vocab-size-divisible-by", "1"),  # no padding: the head has exactly vocab_size rows
        ("--normalization", "RMSNorm"),
        ("--norm-epsilon", str(NORM_EPS)),
        ("--disable-bias-linear", None),
        ("--attention-dropout", "0.0"),
        ("--hidden-dropout", "0.0"),
    ]
    if not spec.tie_embeddings:
        out.append(("--untie-embeddings-and-output-weights", None))
    if used & {"-", "E"}:
        out += [("--ffn-hidden-size", str(spec.d_ffn)), ("--swiglu", None)]
    if "*" in used:
        out += [
            ("--num-attention-heads", str(a.n_heads)),
            ("--group-query-attention", None),
            ("--num-query-groups", str(a.n_kv_heads)),
            ("--kv-channels", str(a.head_dim)),
            ("--position-embedding-type", "rope" if a.rope else "none"),
        ]
        if a.rope:  # the whole head, rotate-half (not interleaved), as ours
            out += [("--rotary-base", f"{a.rope_theta:g}"), ("--rotary-percent", "1.0")]
    else:  # Megatron needs a head count even with no attention layer; nothing uses it
        out.append(("--num-attention-heads", str(a.n_heads)))
    if "M" in used:
        out += [
            ("--mamba-state-dim", str(s.d_state)),
            ("--mamba-head-dim", str(s.head_dim)),
            ("--mamba-num-groups", str(s.n_groups)),
        ]
    if "E" in used:
        out += _moe_args(spec)
    return MegatronArgs(tuple(out))


def _moe_args(spec: ArchSpec) -> list[tuple[str, str | None]]:
    m = spec.moe
    out: list[tuple[str, str | None]] = [
        ("--num-experts", str(m.n_experts)),
        ("--moe-router-topk", str(m.top_k)),
        ("--moe-ffn-hidden-size", str(m.d_expert)),
        ("--moe-router-score-function", m.router),
        ("--moe-token-dispatcher-type", "alltoall"),
    ]
    if m.n_shared:
        out.append(("--moe-shared-expert-intermediate-size", str(m.n_shared * m.d_expert)))
    if m.router == "softmax" and m.top_k == 1:
        # ours weights the expert by its softmax score over all experts; Megatron's default
        # softmaxes the top-k logits (a weight of 1 for top-1): pre-softmax is ours
        out.append(("--moe-router-pre-softmax", None))
    if m.balance == "aux_free":
        out += [("--moe-router-load-balancing-type", "none"), ("--moe-router-enable-expert-bias", None),
                ("--moe-router-bias-update-rate", "1e-3")]  # the trainer's update_moe_balance rate
    else:
        out += [("--moe-router-load-balancing-type", "aux_loss"), ("--moe-aux-loss-coeff", f"{m.aux_loss_coef:g}")]
    return out


def _check(spec: ArchSpec) -> None:
    s = spec.ssm
    for i, symbol in enumerate(spec.pattern):
        if symbol == "W":
            raise refuse(FORMAT, i, symbol, "sliding-window attention (one attention kind for every '*')")
        if symbol == "H":
            raise refuse(FORMAT, i, symbol, "the intra-layer hybrid block (attention and Mamba-2 merged in one layer)")
        if symbol == "M" and s.expand != MEGATRON_MAMBA_EXPAND:
            raise refuse(FORMAT, i, symbol, f"Mamba-2 with ssm.expand={s.expand} (its Mamba layer is fixed at 2)")
        if symbol == "M" and s.conv_kernel != MEGATRON_MAMBA_CONV:
            raise refuse(FORMAT, i, symbol,
                         f"Mamba-2 with ssm.conv_kernel={s.conv_kernel} (its Mamba layer is fixed at 4)")
