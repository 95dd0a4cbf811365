"""``SearchSpace``: a study's dimensions as define-by-run Optuna parameters -> ``ArchSpec``.

``suggest(trial)`` asks only what matters for the candidate so far (conditional parameters):

| parameter | asked when |
|---|---|
| ``n_attn`` or ``attn_ratio`` | always |
| ``fusion`` | the candidate has attention |
| ``placement`` | the candidate has attention and Mamba mixers |
| ``attn``, then ``attn.window`` | inter fusion with attention; the window only for ``window`` |
| ``rope`` | the candidate has attention |
| ``hybrid.split``, ``merge.norm/op/scale/gate/out_proj`` | intra fusion with attention |
| ``moe``, then ``moe.n_experts/top_k/n_shared`` | always; the shape only when MoE is on |

A dimension with one choice is fixed and never asked, so ``trial.params`` holds only what
is searched. Values that do not matter for a candidate stay at ArchSpec's defaults, so two
suggestions that compute the same function build the same spec (and :func:`spec_key`).

**Infeasible candidates.** Every trial records the same constraints with
``trial.set_constraint`` (:data:`CONSTRAINTS`; positive = violated, by how much). When one
is violated, ``suggest`` raises :class:`Infeasible` carrying the reason; it never returns a
spec that cannot be trained. The driver should then ``study.tell(trial,
state=TrialState.PRUNED)`` and record the reason: Optuna's constrained samplers (TPE,
NSGA-II, GP) read ``trial.constraints`` of finished trials and steer away from the region.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from hybridnas.proxies.cost import cost
from hybridnas.search_space.errors import SpecError
from hybridnas.search_space.layout import layout, n_attn_for_ratio
from hybridnas.search_space.pattern import ATTENTION_SYMBOLS
from hybridnas.search_space.spec import ArchSpec
from hybridnas.studies.config import IntRange, StudyConfig, StudyConfigError, parse_ratio, split_fraction

__all__ = ["SearchSpace", "Infeasible", "CONSTRAINTS", "spec_key", "make_sampler"]

# Recorded on every trial, in this order (samplers compare constraint vectors across trials).
CONSTRAINTS = ("n_attn", "branch_widths", "params_target", "spec")
_MOE_EVERY = {"none": 0, "every": 1, "every_other": 2}


class Infeasible(Exception):
    """A suggested combination that cannot be built; ``constraints`` as recorded on the trial."""

    def __init__(self, reason: str, constraints: dict[str, float]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.constraints = constraints


def spec_key(spec: ArchSpec) -> str:
    """A canonical identity of the function a candidate computes: a hash of its spec with the
    sections its layout does not use left out (a pure-Mamba spec's attention heads, a dense
    spec's MoE settings, the window without ``W`` layers). Identical keys, identical models."""
    data = spec.to_dict()
    used = set(spec.pattern)
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


class SearchSpace:
    """The dimensions of ``config.space`` at the size of ``config.size``."""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.space = config.space
        self.share_kind, self.share_choices = config.space.share

    # ---- suggest ----------------------------------------------------------------------------

    def suggest(self, trial: optuna.Trial | optuna.trial.FixedTrial) -> ArchSpec:
        """The trial's candidate; raises :class:`Infeasible` after recording the constraints."""
        return self._build(self._ask(trial), trial)

    def spec_from_params(self, params: dict[str, Any]) -> ArchSpec:
        """Rebuild the candidate of a finished trial from its ``trial.params``."""
        return self.suggest(optuna.trial.FixedTrial(params))

    def _ask(self, trial: Any) -> dict[str, Any]:
        """The resolved value of every dimension that matters for this candidate."""
        s, merge, moe = self.space, self.space.merge, self.space.moe

        def pick(name: str, choices: tuple) -> Any:
            return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))

        v: dict[str, Any] = {"share_kind": self.share_kind}
        if isinstance(self.share_choices, IntRange):
            r = self.share_choices
            v["share"] = r.min if r.min == r.max else trial.suggest_int("n_attn", r.min, r.max, step=r.step)
        else:
            v["share"] = pick(self.share_kind, self.share_choices)
        has_attn, all_attn = self._attention(v["share"])
        # without attention mixers the fusion does not matter: a pure-Mamba stack either way
        v["fusion"] = pick("fusion", s.fusion) if has_attn else "inter"
        if has_attn and not all_attn:
            v["placement"] = pick("placement", s.placement)
        if has_attn and v["fusion"] == "inter":
            v["attn"] = pick("attn", s.attention)
            if v["attn"] == "window":
                v["window"] = pick("attn.window", s.window)
        if has_attn:
            v["rope"] = pick("rope", s.rope)
        if has_attn and v["fusion"] == "intra":
            v["split"] = pick("hybrid.split", s.attn_fraction)
            for key in ("norm", "op", "scale", "gate", "out_proj"):
                v[f"merge.{key}"] = pick(f"merge.{key}", getattr(merge, key))
        v["moe"] = pick("moe", moe.ffn)
        if v["moe"] != "none":
            for key in ("n_experts", "top_k", "n_shared"):
                v[f"moe.{key}"] = pick(f"moe.{key}", getattr(moe, key))
        return v

    def _attention(self, share: Any) -> tuple[bool, bool]:
        """(has attention mixers, all mixers carry attention) for an n_attn / ratio choice."""
        if self.share_kind == "attn_ratio":
            a, m = parse_ratio(share)
            return a > 0, m == 0
        n = self.config.size.n_mixers
        return share > 0, n is not None and share >= n

    # ---- build ------------------------------------------------------------------------------

    @staticmethod
    def _n_attn(v: dict[str, Any]) -> Callable[[int], int]:
        """Attention mixers at depth n: a fixed count, or a ratio of the depth."""
        share = v["share"]
        if v["share_kind"] == "attn_ratio":
            return lambda n: n_attn_for_ratio(n, share)
        return lambda n: share

    def _fields(self, v: dict[str, Any]) -> dict[str, Any]:
        """ArchSpec fields other than the pattern; unused sections keep their defaults."""
        size = self.config.size
        attn = dict(size.attn)
        if "rope" in v:
            attn["rope"] = v["rope"]
        if "window" in v:
            attn["window"] = v["window"]
        fields: dict[str, Any] = {"d_model": size.d_model, "vocab_size": self.config.vocab_size, "attn": attn, "ssm": dict(size.ssm)}
        if "split" in v:
            fields["hybrid"] = {
                "attn_fraction": split_fraction(v["split"]),
                "norm": v["merge.norm"],
                "merge": v["merge.op"],
                "scale": v["merge.scale"],
                "gate": v["merge.gate"],
                "out_proj": v["merge.out_proj"],
            }
        if v["moe"] != "none":
            fields["moe"] = {key: v[f"moe.{key}"] for key in ("n_experts", "top_k", "n_shared")}
        return fields

    def _pattern(self, v: dict[str, Any], n: int) -> str:
        fusion = v["fusion"]
        return layout(
            n,
            self._n_attn(v)(n),
            v.get("placement", "even"),
            fusion,
            moe_every=_MOE_EVERY[v["moe"]],
            window=v.get("attn") == "window",
        )

    def _build(self, v: dict[str, Any], trial: Any) -> ArchSpec:
        violations = dict.fromkeys(CONSTRAINTS, 0.0)
        spec, reason = None, ""
        size = self.config.size
        n_attn = self._n_attn(v)
        if size.mode == "fixed":
            depths = [size.n_mixers]
        else:  # every depth that can hold the attention mixers
            depths = [n for n in range(size.min_mixers, size.max_mixers + 1) if n_attn(n) <= n]
        if not depths:
            violations["n_attn"] = float(n_attn(size.max_mixers) - size.max_mixers)
            reason = f"n_attn={n_attn(size.max_mixers)} exceeds size.max_mixers={size.max_mixers}"
        else:
            try:
                spec = self._sized(v, depths, violations)
            except SpecError as exc:
                reason = str(exc)
                widths = self._width_gap(v)
                violations["branch_widths" if widths else "spec"] = widths or 1.0
            if spec is not None and violations["params_target"] > 0:
                reason = f"no depth in {size.min_mixers}..{size.max_mixers} comes within size.tolerance of size.params"
        for key, value in violations.items():
            _record(trial, key, value)
        if reason:
            raise Infeasible(reason, violations)
        return spec

    def _sized(self, v: dict[str, Any], depths: list[int], violations: dict[str, float]) -> ArchSpec:
        """The spec at the fixed depth, or at the depth closest to the parameter target."""
        fields = self._fields(v)
        first = ArchSpec.from_pattern(self._pattern(v, depths[0]), **fields)  # raises if invalid
        size = self.config.size
        if size.mode == "fixed":
            return first
        attr = {"total": "params", "nonembed": "params_nonembed", "active": "params_active"}[size.count]
        seq_len = self.config.trainer.seq_len

        def error(spec: ArchSpec) -> float:
            return abs(getattr(cost(spec, seq_len).total, attr) - size.params) / size.params

        best, best_error = first, error(first)
        for n in depths[1:]:
            spec = ArchSpec.from_pattern(self._pattern(v, n), **fields)
            e = error(spec)
            if e < best_error:
                best, best_error = spec, e
            elif e > best_error:
                break  # parameters grow with depth: past the closest, every depth is further off
        violations["params_target"] = max(0.0, best_error - size.tolerance)
        return best

    def _width_gap(self, v: dict[str, Any]) -> float:
        """For a joint output projection with an elementwise merge, the branch-width mismatch
        relative to d_model (0 when the widths are equal or this is not the case)."""
        if "split" not in v or v["merge.out_proj"] != "joint" or v["merge.op"] == "concat":
            return 0.0
        probe = {**v, "merge.out_proj": "separate"}
        depth = self.config.size.n_mixers or self.config.size.max_mixers
        try:
            dims = ArchSpec.from_pattern(self._pattern(probe, depth), **self._fields(probe)).dims.hybrid
        except SpecError:
            return 0.0
        return abs(dims.d_attn - dims.d_ssm) / self.config.size.d_model

    # ---- baselines --------------------------------------------------------------------------

    _BASELINE_VALUES: dict[str, dict[str, Any]] = {
        "attention": {"fusion": "inter", "ratio": "1:0"},
        "mamba2": {"fusion": "inter", "ratio": "0:1"},
        "bae-inter-1:5": {"fusion": "inter", "ratio": "1:5", "placement": "even"},
        "bae-intra-1:5": {"fusion": "intra", "ratio": "1:5", "placement": "even"},
    }

    def baseline_specs(self) -> dict[str, ArchSpec]:
        """The configured baselines at the study's size: pure attention, pure Mamba-2, and
        Bae et al.'s inter / intra 1:5 (even placement, global attention with RoPE, their
        best H block, dense FFNs), built with the layout builders as in ``examples.py``."""
        return {name: self._baseline(name) for name in self.config.baselines}

    def _baseline(self, name: str) -> ArchSpec:
        b = self._BASELINE_VALUES[name]
        a, m = parse_ratio(b["ratio"])
        # baselines are ratios whatever the space searches, so they scale with the depth
        v: dict[str, Any] = {"fusion": b["fusion"], "share_kind": "attn_ratio", "share": b["ratio"], "moe": "none"}
        if a and m:
            v["placement"] = b["placement"]
        if a:
            v["rope"] = True
            if b["fusion"] == "inter":
                v["attn"] = "global"
        if b["fusion"] == "intra":
            h = ArchSpec.model_fields["hybrid"].default
            v.update({"split": h.attn_fraction, "merge.norm": h.norm, "merge.op": h.merge})
            v.update({"merge.scale": h.scale, "merge.gate": h.gate, "merge.out_proj": h.out_proj})
        return self._build(v, None)

    def baseline_params(self, name: str) -> dict[str, Any] | None:
        """Optuna parameters that make :meth:`suggest` reproduce baseline ``name``, for
        ``study.enqueue_trial``; None when the space cannot express it (then train the spec of
        :meth:`baseline_specs` outside the sampler)."""
        target = self._baseline(name)
        b = self._BASELINE_VALUES[name]
        wanted = {
            "fusion": b["fusion"],
            "placement": b.get("placement", "even"),
            "attn": "global",
            "rope": True,
            "moe": "none",
            "merge.norm": target.hybrid.norm,
            "merge.op": target.hybrid.merge,
            "merge.scale": target.hybrid.scale,
            "merge.gate": target.hybrid.gate,
            "merge.out_proj": target.hybrid.out_proj,
        }
        params: dict[str, Any] = {}
        for name_, choices in self.grid().items():
            if name_ in ("n_attn", "attn_ratio"):
                value = self._share_for(target, b["ratio"], choices)
            elif name_ == "hybrid.split":
                value = next((c for c in choices if split_fraction(c) == target.hybrid.attn_fraction), None)
            else:
                value = wanted.get(name_, choices[0])  # others do not apply to this baseline
            if value is None or value not in choices:
                return None
            params[name_] = value
        try:
            rebuilt = self.spec_from_params(params)
        except (Infeasible, ValueError):
            return None
        return params if spec_key(rebuilt) == spec_key(target) else None

    def check_enqueued(self) -> None:
        """Each ``enqueue`` entry names searched parameters and allowed values; raises
        StudyConfigError naming the entry and key otherwise."""
        grid = self.grid()
        for i, params in enumerate(self.config.enqueue):
            for key, value in params.items():
                if key not in grid:
                    raise StudyConfigError(f"enqueue[{i}].{key}: not a searched parameter "
                                           f"(searched: {', '.join(grid) or 'none'})")
                if value not in grid[key]:
                    allowed = ", ".join(str(c) for c in grid[key])
                    raise StudyConfigError(f"enqueue[{i}].{key}: {value!r} is not one of {allowed}")

    def _share_for(self, target: ArchSpec, ratio: str, choices: list) -> Any:
        if self.share_kind == "n_attn":
            return target.n_attention_mixers
        a, m = parse_ratio(ratio)
        return next((c for c in choices if _same_ratio(parse_ratio(c), (a, m))), None)

    # ---- grid ---------------------------------------------------------------------------

    def grid(self) -> dict[str, list]:
        """Every searched parameter and its choices (for ``GridSampler``; conditional ones
        included, so a grid revisits a candidate once per value of a parameter it ignores)."""
        s = self.space
        dims: dict[str, tuple] = {
            "fusion": s.fusion,
            self.share_kind: self.share_choices.values() if isinstance(self.share_choices, IntRange) else self.share_choices,
            "placement": s.placement,
            "attn": s.attention,
            "attn.window": s.window,
            "rope": s.rope,
            "hybrid.split": s.attn_fraction,
            **{f"merge.{k}": getattr(s.merge, k) for k in ("norm", "op", "scale", "gate", "out_proj")},
            "moe": s.moe.ffn,
            **{f"moe.{k}": getattr(s.moe, k) for k in ("n_experts", "top_k", "n_shared")},
        }
        return {name: list(choices) for name, choices in dims.items() if len(choices) > 1}


def _same_ratio(x: tuple[int, int], y: tuple[int, int]) -> bool:
    return x[0] * y[1] == x[1] * y[0]


def _record(trial: Any, key: str, value: float) -> None:
    if trial is None:  # baselines are built outside a trial
        return
    if hasattr(trial, "set_constraint"):
        trial.set_constraint(key, value)
    else:  # Optuna < 5: kept as user attributes, read back by make_sampler's constraints_func
        trial.set_user_attr(f"constraint:{key}", value)


def _constraints_from_user_attrs(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [float(trial.user_attrs.get(f"constraint:{key}", 0.0)) for key in CONSTRAINTS]


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``config.sampler``, seeded.

    Constraints: from Optuna 5, TPE, NSGA-II and GP read ``trial.constraints`` (set by
    :meth:`SearchSpace.suggest`) themselves and ``constraints_func`` is deprecated (it would
    also count every constraint twice); before 5 they get a ``constraints_func`` reading the
    same values. Random and grid sampling ignore constraints."""
    s = config.sampler
    native = hasattr(optuna.Trial, "set_constraint")
    constrained = {} if native else {"constraints_func": _constraints_from_user_attrs}
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.kind == "tpe":
        # multivariate + group: TPE models the conditional dimensions jointly per branch of
        # the space (merge.* only with intra, moe.* only with MoE). Both are long-standing
        # but still flagged experimental: silence that warning, not others.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True, **startup, **constrained)
    if s.kind == "nsga2":
        population = {} if s.population_size is None else {"population_size": s.population_size}
        return optuna.samplers.NSGAIISampler(seed=s.seed, **population, **constrained)
    if s.kind == "gp":
        if importlib.util.find_spec("scipy") is None:  # GPSampler's optimiser; not a dependency of ours
            raise StudyConfigError("sampler.kind: 'gp' needs scipy, which is not installed (pip install scipy)")
        return optuna.samplers.GPSampler(seed=s.seed, **startup, **constrained)
    if s.kind == "grid":
        return optuna.samplers.GridSampler(SearchSpace(config).grid(), seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)
