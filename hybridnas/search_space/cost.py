"""Analytic cost of a spec: parameters, FLOPs per token, inference-cache bytes.

This is the source of truth for budgets: a trial trained on C FLOPs sees
``C / train_flops_per_token`` tokens. Pure Python, no torch: a study can cost thousands of
candidates in milliseconds.

**Parameters** are exact for the modules in ``hybridnas.model`` (tests there compare with
``sum(p.numel())``). No linear layer has a bias. Per layer, its pre-norm (RMSNorm, D weights)
is included. With D = d_model:

- attention ``*``/``W``: Wq D·d_attn, Wk and Wv D·d_kv each, Wo d_attn·D.
- Mamba-2 ``M`` (mamba_ssm's ``Mamba2`` layout; inner width d_in = expand·D, nh = d_in/P
  heads, G groups, N state, K conv): in_proj D·(2·d_in + 2·G·N + nh) for (z, x, B, C, dt);
  depthwise conv (d_in + 2·G·N)·(K + 1) with bias; dt_bias, A_log and D, nh each; the gated
  RMSNorm d_in; out_proj d_in·D.
- intra hybrid ``H``: an attention branch (Wq, Wk, Wv) and a Mamba-2 branch (all but
  out_proj) on the split in ``spec.dims.hybrid``; per-branch norm (RMSNorm: one weight per
  channel; GroupNorm: weight and bias); scale (scalar: 1 per branch; vector: 1 per
  channel); output projections (separate: one per branch to D; joint: one from the merge
  width to D); merge (concat with separate projections: a 2D→D projection; with joint, the
  joint projection reads the concatenation); merge-attention Wq D·m and Wk m·m on the merge
  width m; sigmoid gate D·m.
- SwiGLU ``-``: 3·D·d_ffn. MoE ``E``: router D·n_experts, and (n_experts + n_shared)
  experts of 3·D·d_expert; active: router + (top_k + n_shared) experts.
- embedding V·D; final RMSNorm D; LM head V·D unless tied. "Non-embedding" excludes the
  embedding and the LM head (Kaplan et al.'s N).

**Training FLOPs** (Bae et al. 2025, App. C), per token at sequence length T:
6·N_active_nonembed; per attention(-branch) layer 12·d_attn·pairs(T, w)/T, where pairs is
the number of (query, key) pairs a causal mask allows — T(T+1)/2 globally, and with a
window of w keys per query Σ_t min(t, w) (exact; DESIGN.md's "replace T by min(T, w)" would
halve the cost of long windowed sequences); per Mamba-2 layer 3·(9·d_in·N + 2·d_in) for the
SSD scan; the LM head 6·D·V (tied or not); merge-attention's W_k (m·m) runs on both branch outputs,
so it adds 6·m·m once more. Elementwise work (norms, activations, gates,
merges, softmax) is not counted, as in Bae et al.

**Inference FLOPs** per new token with T tokens of context (itself included):
2·N_active_nonembed + 2·D·V; per attention layer 4·d_attn·min(T, w) (scores and values);
per Mamba-2 layer one recurrent step, 5·d_in·N + 2·d_in (decay, input outer product, add,
output contraction; the D skip).

**Cache bytes** at context T, batch 1, ``bytes_per_element`` each (bf16: 2): attention
2·d_kv·min(T, w) (keys and values; a window keeps only its last w); Mamba-2 the SSM state
d_in·N plus the conv state (d_in + 2·G·N)·K (mamba_ssm keeps the last K conv inputs),
constant in T. Bae et al. report 256 MiB (Llama-1B) and 13.4 MiB (Mamba-2-1B) at 8K.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hybridnas.search_space.spec import ArchSpec, SSMConfig

__all__ = ["LayerCost", "CostReport", "cost", "train_flops_per_token", "attention_pairs", "attention_shape"]


@dataclass(frozen=True)
class LayerCost:
    index: int  # position in the pattern
    symbol: str
    params: int  # the layer's parameters, its pre-norm included
    params_active: int  # per token (differs from params only for MoE)
    train_flops_per_token: float
    infer_flops_per_token: float
    cache_bytes: int


@dataclass(frozen=True)
class Totals:
    params: int
    params_nonembed: int
    params_active: int
    train_flops_per_token: float
    infer_flops_per_token: float
    cache_bytes: int


@dataclass(frozen=True)
class CostReport:
    spec: ArchSpec
    seq_len: int
    layers: tuple[LayerCost, ...]
    embedding_params: int
    final_norm_params: int
    head_params: int  # 0 when tied to the embedding
    head_train_flops_per_token: float
    head_infer_flops_per_token: float
    total: Totals = field(init=False)

    def __post_init__(self) -> None:
        nonembed = sum(layer.params for layer in self.layers) + self.final_norm_params
        active = sum(layer.params_active for layer in self.layers) + self.final_norm_params
        embed = self.embedding_params + self.head_params
        total = Totals(
            params=nonembed + embed,
            params_nonembed=nonembed,
            params_active=active + embed,
            # 6·N and 2·N count every non-embedding parameter, the final norm's included
            train_flops_per_token=sum(x.train_flops_per_token for x in self.layers)
            + 6.0 * self.final_norm_params
            + self.head_train_flops_per_token,
            infer_flops_per_token=sum(x.infer_flops_per_token for x in self.layers)
            + 2.0 * self.final_norm_params
            + self.head_infer_flops_per_token,
            cache_bytes=sum(layer.cache_bytes for layer in self.layers),
        )
        object.__setattr__(self, "total", total)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``hybridnas inspect --json``."""
        return {
            "spec": self.spec.to_dict(),
            "seq_len": self.seq_len,
            "layers": [asdict(layer) for layer in self.layers],
            "embedding": {
                "embedding_params": self.embedding_params,
                "final_norm_params": self.final_norm_params,
                "head_params": self.head_params,
                "head_train_flops_per_token": self.head_train_flops_per_token,
            },
            "total": asdict(self.total),
        }


# ---- parameter counts per module ---------------------------------------------------------


def attention_pairs(seq_len: int, window: int | None = None) -> int:
    """Causal (query, key) pairs in a sequence: query t sees min(t, window) keys."""
    t, w = seq_len, seq_len if window is None else min(window, seq_len)
    return w * (w + 1) // 2 + (t - w) * w


def _mamba_params(d_model: int, d_inner: int, n_heads: int, ssm: SSMConfig, out_proj: bool = True) -> int:
    bc = 2 * ssm.n_groups * ssm.d_state
    in_proj = d_model * (2 * d_inner + bc + n_heads)
    conv = (d_inner + bc) * (ssm.conv_kernel + 1)
    per_head = 3 * n_heads  # dt_bias, A_log, D
    gated_norm = d_inner
    return in_proj + conv + per_head + gated_norm + (d_inner * d_model if out_proj else 0)


def _mamba_cache_elements(d_inner: int, ssm: SSMConfig) -> int:
    return d_inner * ssm.d_state + (d_inner + 2 * ssm.n_groups * ssm.d_state) * ssm.conv_kernel


def _ssd_train_flops(d_inner: int, d_state: int) -> float:
    return 3 * (9 * d_inner * d_state + 2 * d_inner)


def _ssd_step_flops(d_inner: int, d_state: int) -> float:
    return 5 * d_inner * d_state + 2 * d_inner


def _hybrid_params(spec: ArchSpec) -> int:
    d, h, hd = spec.d_model, spec.hybrid, spec.dims.hybrid
    assert hd is not None, "validated specs with H have hybrid dims"
    attn_branch = d * (hd.d_attn + 2 * hd.attn_kv_heads * spec.attn.head_dim)
    ssm_branch = _mamba_params(d, hd.d_ssm, hd.ssm_heads, spec.ssm, out_proj=False)
    branch_channels = hd.d_attn + hd.d_ssm
    norms = {"none": 0, "rms": branch_channels, "group": 2 * branch_channels}[h.norm]
    scales = {"none": 0, "scalar": 2, "vector": branch_channels}[h.scale]
    m = hd.merge_width
    if h.out_proj == "separate":
        out = branch_channels * d
    else:
        out = m * d  # joint: from the merged width (the concatenation, for concat)
    merge = {
        "mean": 0,
        "add": 0,
        "sub": 0,
        "concat": 2 * d * d if h.out_proj == "separate" else 0,
        "merge_attention": d * m + m * m,
    }[h.merge]
    gate = d * m if h.gate == "sigmoid" else 0
    return attn_branch + ssm_branch + norms + scales + out + merge + gate


# ---- per layer ----------------------------------------------------------------------------


def attention_shape(spec: ArchSpec, symbol: str) -> tuple[int, int, int | None] | None:
    """(attention width, key/value width, window or None) of a layer symbol; None without attention."""
    dims = spec.dims
    if symbol in "*W":
        return dims.d_attn, dims.d_kv, spec.attn.window if symbol == "W" else None
    if symbol == "H":
        assert dims.hybrid is not None, "validated specs with H have hybrid dims"
        return dims.hybrid.d_attn, dims.hybrid.attn_kv_heads * spec.attn.head_dim, None
    return None


def _layer_cost(spec: ArchSpec, index: int, symbol: str, seq_len: int, nbytes: int) -> LayerCost:
    d, dims, s = spec.d_model, spec.dims, spec.ssm
    ssm_d = 0
    moe_inactive = 0  # parameters of the routed experts a token does not visit
    if symbol in "*W":
        params = 2 * d * dims.d_attn + 2 * d * dims.d_kv
    elif symbol == "M":
        params = _mamba_params(d, dims.d_ssm, dims.ssm_heads, s)
        ssm_d = dims.d_ssm
    elif symbol == "H":
        assert dims.hybrid is not None, "validated specs with H have hybrid dims"
        params = _hybrid_params(spec)
        ssm_d = dims.hybrid.d_ssm
    elif symbol == "-":
        params = 3 * d * spec.d_ffn
    elif symbol == "E":
        moe = spec.moe
        router, expert = d * moe.n_experts, 3 * d * moe.d_expert
        params = router + (moe.n_experts + moe.n_shared) * expert
        moe_inactive = (moe.n_experts - moe.top_k) * expert
    else:  # pragma: no cover - the pattern is validated
        raise AssertionError(symbol)
    params += d  # the layer's pre-norm
    active = params - moe_inactive

    train = 6.0 * active
    infer = 2.0 * active
    cache = 0
    attention = attention_shape(spec, symbol)
    if attention is not None:
        attn_d, attn_kv, window = attention
        train += 12.0 * attn_d * attention_pairs(seq_len, window) / seq_len
        seen = seq_len if window is None else min(seq_len, window)
        infer += 4.0 * attn_d * seen
        cache += 2 * attn_kv * seen
    if symbol == "H" and spec.hybrid.merge == "merge_attention":
        assert dims.hybrid is not None, "validated specs with H have hybrid dims"
        m = dims.hybrid.merge_width  # W_k is applied to both branch outputs: once more than 6·N counts
        train += 6.0 * m * m
        infer += 2.0 * m * m
    if ssm_d:
        train += _ssd_train_flops(ssm_d, s.d_state)
        infer += _ssd_step_flops(ssm_d, s.d_state)
        cache += _mamba_cache_elements(ssm_d, s)
    return LayerCost(index, symbol, params, active, train, infer, cache * nbytes)


def cost(spec: ArchSpec, seq_len: int = 2048, *, bytes_per_element: int = 2) -> CostReport:
    """Per-layer and total cost of ``spec`` at sequence length / context ``seq_len``."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r}: must be a positive integer")
    d, v = spec.d_model, spec.vocab_size
    layers = tuple(_layer_cost(spec, i, ch, seq_len, bytes_per_element) for i, ch in enumerate(spec.pattern))
    return CostReport(
        spec=spec,
        seq_len=seq_len,
        layers=layers,
        embedding_params=v * d,
        final_norm_params=d,
        head_params=0 if spec.tie_embeddings else v * d,
        head_train_flops_per_token=6.0 * d * v,
        head_infer_flops_per_token=2.0 * d * v,
    )


def train_flops_per_token(spec: ArchSpec, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) at sequence length ``seq_len``."""
    return cost(spec, seq_len).total.train_flops_per_token
