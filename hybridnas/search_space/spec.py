"""``ArchSpec``: one candidate architecture, frozen, validated, JSON round-trip.

A spec is the layout string plus the sizes of every layer family. Sizes that follow from
``d_model`` are *derived* when left out — in one place, :func:`_fill_derived`, which runs
before validation on every route in (constructor, ``from_pattern``, ``from_json``) — and
then stored, so the JSON of a spec is complete and re-reads to the same spec.

Derived defaults (each overridable):

- ``d_ffn``: 8/3 · d_model rounded up to a multiple of 64 (SwiGLU at the parameter count of
  a 4·d GeLU FFN, as in Llama).
- ``attn.head_dim``: the largest divisor of d_model that is <= 64; ``attn.n_heads`` =
  d_model / head_dim (or d_model / head_dim when only head_dim is given).
- ``attn.n_kv_heads``: the largest divisor of n_heads that is <= n_heads / 4 (GQA with
  groups of 4, as Llama-3.2 / Bae et al.'s 32 heads / 8 kv), at least 1.
- ``ssm.head_dim``: the largest divisor of the Mamba-2 width expand · d_model that is <= 64.
- ``moe.d_expert``: d_ffn / (top_k + n_shared), so an MoE layer's active FFN parameters
  match the dense FFN (Bae et al.: 1 shared + top-1 of 8 half-width experts).

The intra-layer hybrid ``H`` splits the block between its two branches by
``hybrid.attn_fraction``: the attention branch gets round(f · n_heads) heads, the Mamba-2
branch round((1 - f) · expand · d_model / ssm.head_dim) heads. Branch widths, and the
width the merge works in, are in :attr:`ArchSpec.dims`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridnas.errors import format_validation_error
from hybridnas.search_space.errors import SpecError
from hybridnas.search_space.pattern import ATTENTION_SYMBOLS, MIXER_SYMBOLS, check_pattern

__all__ = ["ArchSpec", "AttnConfig", "SSMConfig", "HybridConfig", "MoEConfig", "Dims", "HybridDims"]

DEFAULT_D_MODEL = 512
DEFAULT_VOCAB_SIZE = 8192  # the default BPE vocabulary of the trainer
# Upper bounds, checked before any size is derived (deriving head sizes scans d_model's
# divisors): far above any published language model (d_model 18,432 in PaLM 540B, vocabularies
# of 262k in Gemma 3, 126 layers in Llama 3.1 405B), low enough that a typo fails at once
MAX_D_MODEL = 65_536
MAX_VOCAB_SIZE = 4_194_304
MAX_LAYERS = 1024

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class _Frozen(BaseModel):
    # strict: "512" is not an int and 1 is not a bool; extra: unknown keys are errors.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class AttnConfig(_Frozen):
    """Attention, used by ``*``, ``W`` and the attention branch of ``H``."""

    n_heads: PositiveInt
    n_kv_heads: PositiveInt  # GQA: key/value heads, dividing n_heads
    head_dim: PositiveInt  # n_heads * head_dim == d_model
    window: PositiveInt = 512  # keys per query for ``W`` layers (itself included)
    rope: bool = True
    rope_theta: Annotated[float, Field(gt=0)] = 10_000.0


class SSMConfig(_Frozen):
    """Mamba-2 (SSD), used by ``M`` and the SSM branch of ``H``. Defaults are Mamba-2's."""

    d_state: PositiveInt = 128  # N; Bae et al. use 128
    expand: PositiveInt = 2  # inner width d_ssm = expand * d_model
    head_dim: PositiveInt  # P; d_ssm / head_dim heads, each with its own decay
    n_groups: PositiveInt = 1  # B/C shared by groups of heads (like GQA)
    conv_kernel: PositiveInt = 4
    chunk_size: PositiveInt = 256  # SSD chunk length; changes speed, not the function


class HybridConfig(_Frozen):
    """The intra-layer hybrid ``H``. Defaults are Bae et al.'s best block: GroupNorm on each
    branch, subtract, separate output projections, no extra scales or gates."""

    attn_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    norm: Literal["none", "rms", "group"] = "group"
    merge: Literal["mean", "add", "sub", "concat", "merge_attention"] = "sub"
    scale: Literal["none", "scalar", "vector"] = "none"
    gate: Literal["none", "sigmoid"] = "none"
    out_proj: Literal["joint", "separate"] = "separate"


class MoEConfig(_Frozen):
    """Mixture-of-experts FFN ``E``. Defaults are Bae et al.'s: 1 shared + top-1 of 8
    half-width experts, sigmoid router, auxiliary-loss-free balancing."""

    n_experts: PositiveInt = 8
    top_k: PositiveInt = 1
    n_shared: NonNegativeInt = 1
    d_expert: PositiveInt
    router: Literal["softmax", "sigmoid"] = "sigmoid"
    balance: Literal["aux_free", "aux_loss"] = "aux_free"
    aux_loss_coef: Annotated[float, Field(ge=0)] = 0.01  # used when balance == "aux_loss"


@dataclass(frozen=True)
class HybridDims:
    """Widths inside one ``H`` block."""

    attn_heads: int
    attn_kv_heads: int
    d_attn: int  # attention branch width, attn_heads * head_dim
    ssm_heads: int
    d_ssm: int  # Mamba-2 branch width, ssm_heads * ssm.head_dim
    merge_width: int  # the width the two branches are merged in


@dataclass(frozen=True)
class Dims:
    """Widths every room needs, derived from a spec in this one place."""

    d_attn: int  # n_heads * head_dim (== d_model)
    d_kv: int  # n_kv_heads * head_dim
    d_ssm: int  # Mamba-2 inner width, expand * d_model
    ssm_heads: int
    hybrid: HybridDims | None  # None when the widths cannot split (only checked if H is used)


class ArchSpec(_Frozen):
    """One candidate: a layout string and the sizes of every layer family.

    Build with :meth:`from_pattern` (defaults filled in) or :meth:`from_json`. Invalid input
    raises :class:`SpecError` whose message names the field, e.g.
    ``attn.n_heads=3 does not divide d_model=100``.
    """

    pattern: str
    d_model: PositiveInt = DEFAULT_D_MODEL
    vocab_size: PositiveInt = DEFAULT_VOCAB_SIZE
    d_ffn: PositiveInt
    tie_embeddings: bool = True
    attn: AttnConfig
    ssm: SSMConfig
    hybrid: HybridConfig = HybridConfig()
    moe: MoEConfig

    def __init__(self, /, **data: Any) -> None:
        _check_bounds(data)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, ArchSpec)) from None

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_pattern(cls, pattern: str, **overrides: Any) -> ArchSpec:
        """A spec for ``pattern`` with documented defaults; nested overrides are dicts,
        e.g. ``ArchSpec.from_pattern("H-M-", hybrid={"merge": "merge_attention"})``."""
        return cls(pattern=pattern, **overrides)

    @classmethod
    def from_dict(cls, data: Any) -> ArchSpec:
        if not isinstance(data, dict):
            raise SpecError(f"spec: expected a JSON object, got {type(data).__name__}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        return cls.from_dict(data)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=indent)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def short_id(self) -> str:
        """A stable 10-hex-digit hash of the full spec (same spec, same id, any machine)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]

    @property
    def key(self) -> str:
        """The identity of the function this spec computes: a 16-hex-digit hash of the spec
        with the sections its layout does not use left out (a pure-Mamba spec's attention
        heads, a dense spec's MoE settings, the window without ``W`` layers). Identical keys,
        identical models; a study reuses one trial's result for an identical candidate by it."""
        data = self.to_dict()
        used = set(self.pattern)
        if not used & ATTENTION_SYMBOLS:
            data.pop("attn")
        elif "W" not in used:
            data["attn"].pop("window")
        if not used & {"M", "H"}:
            data.pop("ssm")
        if "H" not in used:
            data.pop("hybrid")
        if "E" not in used:
            data.pop("moe")
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    # ---- derived structure --------------------------------------------------------------

    @property
    def mixers(self) -> str:
        """The mixer symbols in order, e.g. ``"MM*M"``."""
        return "".join(ch for ch in self.pattern if ch in MIXER_SYMBOLS)

    @property
    def n_attention_mixers(self) -> int:
        return sum(ch in ATTENTION_SYMBOLS for ch in self.pattern)

    @property
    def dims(self) -> Dims:
        d_ssm = self.ssm.expand * self.d_model
        return Dims(
            d_attn=self.attn.n_heads * self.attn.head_dim,
            d_kv=self.attn.n_kv_heads * self.attn.head_dim,
            d_ssm=d_ssm,
            ssm_heads=d_ssm // self.ssm.head_dim,
            hybrid=_hybrid_dims(self),
        )

    def describe(self) -> str:
        """One line, e.g. ``13 mixers: 2 attn (inter) + 11 mamba; dense FFN``."""
        n = Counter(self.pattern)
        mixers = [
            (n["*"], "attn (inter)"),
            (n["W"], f"window-{self.attn.window} attn (inter)"),
            (n["H"], f"hybrid (intra, {self.hybrid.merge})"),
            (n["M"], "mamba"),
        ]
        mixer_text = " + ".join(f"{count} {name}" for count, name in mixers if count)
        n_ffn = n["-"] + n["E"]
        moe = self.moe
        moe_text = f"MoE FFN ({moe.n_experts} experts, top-{moe.top_k}, {moe.n_shared} shared)"
        if n_ffn == 0:
            ffn_text = "no FFN"
        elif n["E"] == 0:
            ffn_text = "dense FFN"
        elif n["-"] == 0:
            ffn_text = moe_text
        else:
            ffn_text = f"{n['E']} of {n_ffn} FFNs {moe_text}"
        return f"{len(self.mixers)} mixers: {mixer_text}; {ffn_text}"

    # ---- validation ---------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        return _fill_derived(data) if isinstance(data, dict) else data

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, pattern: str) -> str:
        return check_pattern(pattern)

    @model_validator(mode="after")
    def _check_consistency(self) -> ArchSpec:
        used = set(self.pattern)
        a, s, d = self.attn, self.ssm, self.d_model
        if used & ATTENTION_SYMBOLS:
            if a.n_heads * a.head_dim != d:
                raise ValueError(
                    f"attn.n_heads={a.n_heads} x attn.head_dim={a.head_dim} = "
                    f"{a.n_heads * a.head_dim}, expected d_model={d}"
                )
            if a.rope and a.head_dim % 2:
                raise ValueError(f"attn.head_dim={a.head_dim} must be even for rotary embeddings (attn.rope=true)")
            if a.n_heads % a.n_kv_heads:
                raise ValueError(f"attn.n_kv_heads={a.n_kv_heads} does not divide attn.n_heads={a.n_heads}")
        if used & {"M", "H"}:
            d_ssm = s.expand * d
            if d_ssm % s.head_dim:
                raise ValueError(
                    f"ssm.head_dim={s.head_dim} does not divide the Mamba-2 width "
                    f"ssm.expand*d_model={d_ssm}"
                )
            if "M" in used and (d_ssm // s.head_dim) % s.n_groups:
                raise ValueError(
                    f"ssm.n_groups={s.n_groups} does not divide the {d_ssm // s.head_dim} Mamba-2 heads"
                )
        if "H" in used:
            _check_hybrid(self)
        if "E" in used and self.moe.top_k > self.moe.n_experts:
            raise ValueError(f"moe.top_k={self.moe.top_k} exceeds moe.n_experts={self.moe.n_experts}")
        return self


# ---- derivation (the one place) ---------------------------------------------------------


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(k for k in range(1, max(1, min(n, limit)) + 1) if n % k == 0)


def _is_positive_int(x: Any, minimum: int = 1) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


def _section(data: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The nested section ``key`` as a fresh dict, or None if it is not a mapping."""
    value = data.get(key, {})
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return dict(value) if isinstance(value, dict) else None


def _check_bounds(data: dict[str, Any]) -> None:
    """The sizes' upper bounds (MAX_*), before anything is derived from them."""
    pattern = data.get("pattern")
    if isinstance(pattern, str) and len(pattern) > MAX_LAYERS:
        raise SpecError(f"pattern: {len(pattern)} layers, more than {MAX_LAYERS}")
    for key, bound in (("d_model", MAX_D_MODEL), ("vocab_size", MAX_VOCAB_SIZE)):
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and not value <= bound:
            shown = f"{value:.3g}" if isinstance(value, float) or value > 10**12 else str(value)
            raise SpecError(f"{key}={shown}: must be at most {bound}")


def _fill_derived(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill every size left out of ``raw`` that follows from d_model (see module docstring).

    Inputs of the wrong type are left alone for field validation to report."""
    data = dict(raw)
    d = data.setdefault("d_model", DEFAULT_D_MODEL)
    if not _is_positive_int(d):
        return data
    data.setdefault("d_ffn", -(-8 * d // (3 * 64)) * 64)

    attn = _section(data, "attn")
    if attn is not None:
        heads, head_dim = attn.get("n_heads"), attn.get("head_dim")
        if heads is None and head_dim is None:
            attn["head_dim"] = head_dim = _largest_divisor_at_most(d, 64)
            attn["n_heads"] = d // head_dim
        elif heads is None and _is_positive_int(head_dim) and d % head_dim == 0:
            attn["n_heads"] = d // head_dim
        elif head_dim is None and _is_positive_int(heads):
            if d % heads:
                raise ValueError(f"attn.n_heads={heads} does not divide d_model={d}")
            attn["head_dim"] = d // heads
        heads = attn.get("n_heads")
        if "n_kv_heads" not in attn and _is_positive_int(heads):
            attn["n_kv_heads"] = _largest_divisor_at_most(heads, heads // 4)
        data["attn"] = attn

    ssm = _section(data, "ssm")
    if ssm is not None:
        expand = ssm.get("expand", SSMConfig.model_fields["expand"].default)
        if "head_dim" not in ssm and _is_positive_int(expand):
            ssm["head_dim"] = _largest_divisor_at_most(expand * d, 64)
        data["ssm"] = ssm

    moe = _section(data, "moe")
    if moe is not None:
        top_k = moe.get("top_k", MoEConfig.model_fields["top_k"].default)
        shared = moe.get("n_shared", MoEConfig.model_fields["n_shared"].default)
        d_ffn = data["d_ffn"]
        well_typed = _is_positive_int(top_k) and _is_positive_int(d_ffn) and _is_positive_int(shared, minimum=0)
        if "d_expert" not in moe and well_typed:
            moe["d_expert"] = max(1, d_ffn // (top_k + shared))
        data["moe"] = moe
    return data


def _hybrid_dims(spec: ArchSpec) -> HybridDims | None:
    a, s, h = spec.attn, spec.ssm, spec.hybrid
    attn_heads = round(h.attn_fraction * a.n_heads)
    ssm_heads = round((1 - h.attn_fraction) * spec.ssm.expand * spec.d_model / s.head_dim)
    if attn_heads < 1 or ssm_heads < 1:
        return None
    group = max(1, a.n_heads // a.n_kv_heads)  # keep the GQA group size of full attention
    kv_heads = _largest_divisor_at_most(attn_heads, max(1, attn_heads // group))
    d_attn, d_ssm = attn_heads * a.head_dim, ssm_heads * s.head_dim
    if h.out_proj == "separate":
        merge_width = spec.d_model  # each branch is projected to d_model, then merged
    elif h.merge == "concat":
        merge_width = d_attn + d_ssm
    else:
        merge_width = d_attn  # == d_ssm, checked in _check_hybrid
    return HybridDims(attn_heads, kv_heads, d_attn, ssm_heads, d_ssm, merge_width)


def _check_hybrid(spec: ArchSpec) -> None:
    h, a, s = spec.hybrid, spec.attn, spec.ssm
    dims = _hybrid_dims(spec)
    if dims is None:
        raise ValueError(
            f"hybrid.attn_fraction={h.attn_fraction} leaves a branch of the H block empty "
            f"(attn.n_heads={a.n_heads}, {spec.ssm.expand * spec.d_model // s.head_dim} Mamba-2 heads)"
        )
    if dims.ssm_heads % s.n_groups:
        raise ValueError(
            f"ssm.n_groups={s.n_groups} does not divide the {dims.ssm_heads} Mamba-2 heads of an H block"
        )
    if h.out_proj == "joint" and h.merge != "concat" and dims.d_attn != dims.d_ssm:
        raise ValueError(
            f"hybrid.merge={h.merge!r} with hybrid.out_proj='joint' needs equal branch widths, "
            f"got attention {dims.d_attn} vs Mamba-2 {dims.d_ssm}; "
            "use out_proj='separate', merge='concat', or change attn_fraction / ssm.expand"
        )
    if h.merge == "merge_attention" and dims.merge_width % a.head_dim:
        raise ValueError(
            f"hybrid.merge='merge_attention' splits width {dims.merge_width} into heads of "
            f"attn.head_dim={a.head_dim}, which does not divide it"
        )
