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
suggestions that compute the same function build the same spec (and ``ArchSpec.key``).

**Infeasible candidates.** Every trial records the same constraints with
``trial.set_constraint`` (:data:`CONSTRAINTS`; positive = violated, by how much). When one
is violated, ``suggest`` raises :class:`Infeasible` carrying the reason; it never returns a
spec that cannot be trained. The driver should then ``study.tell(trial,
state=TrialState.PRUNED)`` and record the reason: Optuna's constrained samplers (TPE,
NSGA-II, GP) read ``trial.constraints`` of finished trials and steer away from the region.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict

import optuna

from hybridnas.search_space.cost import cost
from hybridnas.search_space.errors import SpecError
from hybridnas.search_space.layout import Placement, layout, n_attn_for_ratio
from hybridnas.search_space.spec import ArchSpec
from hybridnas.studies.config import IntRange, Ratio, Split, StudyConfig, StudyConfigError

__all__ = ["SearchSpace", "Infeasible", "CONSTRAINTS", "make_sampler", "Candidate"]

# Recorded on every trial, in this order (samplers compare constraint vectors across trials).
CONSTRAINTS = ("n_attn", "branch_widths", "params_target", "spec")
_MOE_EVERY = {"none": 0, "every": 1, "every_other": 2}
Fusion = Literal["inter", "intra"]


class Infeasible(Exception):
    """A suggested combination that cannot be built; ``constraints`` as recorded on the trial."""

    def __init__(self, reason: str, constraints: dict[str, float]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.constraints = constraints


@dataclass(frozen=True)
class Merge:
    """How an ``H`` block merges its branches (``ArchSpec.hybrid``)."""

    norm: str
    op: str
    scale: str
    gate: str
    out_proj: str


@dataclass(frozen=True)
class MoEShape:
    n_experts: int
    top_k: int
    n_shared: int


@dataclass(frozen=True)
class Candidate:
    """Every dimension's resolved value for one candidate; None where it does not apply
    (no placement without a mix, no merge without intra fusion...). ``share`` is an
    attention count (``n_attn``) or a :class:`Ratio` of the depth (``attn_ratio``)."""

    share: int | Ratio
    fusion: Fusion = "inter"
    placement: Placement | None = None
    attention: str | None = None  # "global" | "window", inter fusion only
    window: int | None = None
    rope: bool | None = None
    split: float | None = None  # the attention share of an H block's channels
    merge: Merge | None = None
    moe: str = "none"
    moe_shape: MoEShape | None = None

    def n_attn(self, n_mixers: int) -> int:
        """Attention mixers at depth ``n_mixers``: the count, or the ratio of the depth."""
        if isinstance(self.share, Ratio):
            return n_attn_for_ratio(n_mixers, (self.share.attn, self.share.ssm))
        return self.share


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

    def _ask(self, trial: Any) -> Candidate:
        """The resolved value of every dimension that matters for this candidate."""
        s, merge, moe = self.space, self.space.merge, self.space.moe

        def pick(name: str, choices: tuple) -> Any:
            return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))

        def pick_typed(name: str, choices: tuple, as_param: Callable[[Any], Any]) -> Any:
            """A typed choice asked as its spelling in the study file (str or float)."""
            by_param = {as_param(c): c for c in choices}
            return by_param[pick(name, tuple(by_param))]

        share: int | Ratio
        if isinstance(self.share_choices, IntRange):
            r = self.share_choices
            share = r.min if r.min == r.max else trial.suggest_int("n_attn", r.min, r.max, step=r.step)
        elif self.share_kind == "attn_ratio":
            share = pick_typed("attn_ratio", self.share_choices, str)
        else:
            share = pick("n_attn", self.share_choices)
        has_attn, all_attn = self._attention(share)
        # without attention mixers the fusion does not matter: a pure-Mamba stack either way
        c = Candidate(share, fusion=pick("fusion", s.fusion) if has_attn else "inter")
        if has_attn and not all_attn:
            c = replace(c, placement=pick("placement", s.placement))
        if has_attn and c.fusion == "inter":
            c = replace(c, attention=pick("attn", s.attention))
            if c.attention == "window":
                c = replace(c, window=pick("attn.window", s.window))
        if has_attn:
            c = replace(c, rope=pick("rope", s.rope))
        if has_attn and c.fusion == "intra":
            split: Split = pick_typed("hybrid.split", s.attn_fraction, lambda x: x.choice)
            c = replace(c, split=split.fraction, merge=Merge(
                *(pick(f"merge.{key}", getattr(merge, key)) for key in ("norm", "op", "scale", "gate", "out_proj"))))
        c = replace(c, moe=pick("moe", moe.ffn))
        if c.moe != "none":
            c = replace(c, moe_shape=MoEShape(
                *(pick(f"moe.{key}", getattr(moe, key)) for key in ("n_experts", "top_k", "n_shared"))))
        return c

    def _attention(self, share: int | Ratio) -> tuple[bool, bool]:
        """(has attention mixers, all mixers carry attention) for an n_attn / ratio choice."""
        if isinstance(share, Ratio):
            return share.attn > 0, share.ssm == 0
        n = self.config.size.n_mixers
        return share > 0, n is not None and share >= n

    # ---- build ------------------------------------------------------------------------------

    def _fields(self, c: Candidate) -> dict[str, Any]:
        """ArchSpec fields other than the pattern; unused sections keep their defaults."""
        size = self.config.size
        attn = dict(size.attn)
        if c.rope is not None:
            attn["rope"] = c.rope
        if c.window is not None:
            attn["window"] = c.window
        fields: dict[str, Any] = {"d_model": size.d_model, "vocab_size": self.config.vocab_size, "attn": attn,
                                  "ssm": dict(size.ssm)}
        if c.merge is not None:
            m = c.merge
            fields["hybrid"] = {"attn_fraction": c.split, "norm": m.norm, "merge": m.op, "scale": m.scale,
                                "gate": m.gate, "out_proj": m.out_proj}
        if c.moe_shape is not None:
            shape = c.moe_shape
            fields["moe"] = {"n_experts": shape.n_experts, "top_k": shape.top_k, "n_shared": shape.n_shared}
        return fields

    def _pattern(self, c: Candidate, n: int) -> str:
        return layout(n, c.n_attn(n), c.placement or "even", c.fusion, moe_every=_MOE_EVERY[c.moe],
                      window=c.attention == "window")

    def _build(self, c: Candidate, trial: Any) -> ArchSpec:
        violations = dict.fromkeys(CONSTRAINTS, 0.0)
        spec, reason = None, ""
        size = self.config.size
        n_attn = c.n_attn
        if size.mode == "fixed":
            assert size.n_mixers is not None, "SizeConfig requires n_mixers when mode = 'fixed'"
            depths = [size.n_mixers]
        else:  # every depth that can hold the attention mixers
            depths = [n for n in range(size.min_mixers, size.max_mixers + 1) if n_attn(n) <= n]
        if not depths:
            violations["n_attn"] = float(n_attn(size.max_mixers) - size.max_mixers)
            reason = f"n_attn={n_attn(size.max_mixers)} exceeds size.max_mixers={size.max_mixers}"
        else:
            try:
                spec = self._sized(c, depths, violations)
            except SpecError as exc:
                reason = str(exc)
                widths = self._width_gap(c)
                violations["branch_widths" if widths else "spec"] = widths or 1.0
            if spec is not None and violations["params_target"] > 0:
                reason = f"no depth in {size.min_mixers}..{size.max_mixers} comes within size.tolerance of size.params"
        for key, value in violations.items():
            _record(trial, key, value)
        if reason:
            raise Infeasible(reason, violations)
        assert spec is not None, "every path that leaves no spec sets a reason"
        return spec

    def _sized(self, c: Candidate, depths: list[int], violations: dict[str, float]) -> ArchSpec:
        """The spec at the fixed depth, or at the depth closest to the parameter target."""
        fields = self._fields(c)
        first = ArchSpec.from_pattern(self._pattern(c, depths[0]), **fields)  # raises if invalid
        size = self.config.size
        if size.mode == "fixed":
            return first
        attr = {"total": "params", "nonembed": "params_nonembed", "active": "params_active"}[size.count]
        seq_len = self.config.trainer.seq_len

        def error(spec: ArchSpec) -> float:
            return abs(getattr(cost(spec, seq_len).total, attr) - size.params) / size.params

        best, best_error = first, error(first)
        for n in depths[1:]:
            spec = ArchSpec.from_pattern(self._pattern(c, n), **fields)
            e = error(spec)
            if e < best_error:
                best, best_error = spec, e
            elif e > best_error:
                break  # parameters grow with depth: past the closest, every depth is further off
        violations["params_target"] = max(0.0, best_error - size.tolerance)
        return best

    def _width_gap(self, c: Candidate) -> float:
        """For a joint output projection with an elementwise merge, the branch-width mismatch
        relative to d_model (0 when the widths are equal or this is not the case)."""
        if c.merge is None or c.merge.out_proj != "joint" or c.merge.op == "concat":
            return 0.0
        probe = replace(c, merge=replace(c.merge, out_proj="separate"))
        depth = self.config.size.n_mixers or self.config.size.max_mixers
        try:
            dims = ArchSpec.from_pattern(self._pattern(probe, depth), **self._fields(probe)).dims.hybrid
        except SpecError:
            return 0.0
        assert dims is not None, "a validated spec with H blocks has hybrid dims"
        return abs(dims.d_attn - dims.d_ssm) / self.config.size.d_model

    # ---- baselines --------------------------------------------------------------------------

    _BASELINE_VALUES: dict[str, tuple[Fusion, Ratio]] = {  # fusion, attention:mamba
        "attention": ("inter", Ratio(1, 0)),
        "mamba2": ("inter", Ratio(0, 1)),
        "bae-inter-1:5": ("inter", Ratio(1, 5)),
        "bae-intra-1:5": ("intra", Ratio(1, 5)),
    }

    def baseline_specs(self) -> dict[str, ArchSpec]:
        """The configured baselines at the study's size: pure attention, pure Mamba-2, and
        Bae et al.'s inter / intra 1:5 (even placement, global attention with RoPE, their
        best H block, dense FFNs), built with the layout builders as in ``examples.py``."""
        return {name: self._baseline(name) for name in self.config.baselines}

    def _baseline(self, name: str) -> ArchSpec:
        fusion, ratio = self._BASELINE_VALUES[name]
        # baselines are ratios whatever the space searches, so they scale with the depth;
        # even placement, global attention with RoPE, ArchSpec's default (Bae et al.'s) H block
        c = Candidate(ratio, fusion=fusion)
        if ratio.attn and ratio.ssm:
            c = replace(c, placement="even")
        if ratio.attn:
            c = replace(c, rope=True, attention="global" if fusion == "inter" else None)
        if fusion == "intra":
            h = ArchSpec.model_fields["hybrid"].default
            c = replace(c, split=h.attn_fraction, merge=Merge(h.norm, h.merge, h.scale, h.gate, h.out_proj))
        return self._build(c, None)

    def baseline_params(self, name: str) -> dict[str, Any] | None:
        """Optuna parameters that make :meth:`suggest` reproduce baseline ``name``, for
        ``study.enqueue_trial``; None when the space cannot express it (then train the spec of
        :meth:`baseline_specs` outside the sampler)."""
        target = self._baseline(name)
        fusion, ratio = self._BASELINE_VALUES[name]
        wanted = {
            "fusion": fusion,
            "placement": "even",
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
                value = self._share_for(target, ratio, choices)
            elif name_ == "hybrid.split":
                value = next((c for c in self.space.attn_fraction if c.fraction == target.hybrid.attn_fraction), None)
                value = value.choice if value is not None else None
            else:
                value = wanted.get(name_, choices[0])  # others do not apply to this baseline
            if value is None or value not in choices:
                return None
            params[name_] = value
        try:
            rebuilt = self.spec_from_params(params)
        except (Infeasible, ValueError):
            return None
        return params if rebuilt.key == target.key else None

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

    def _share_for(self, target: ArchSpec, ratio: Ratio, choices: list) -> Any:
        """The share parameter's value for a baseline: its count, or the spelling of a ratio
        choice equal to its own."""
        if self.share_kind == "n_attn":
            return target.n_attention_mixers
        return next((c for c in choices if Ratio.parse(c).same_as(ratio)), None)

    # ---- every candidate ----------------------------------------------------------------

    def distinct_keys(self, limit: int) -> set[str] | None:
        """The ``ArchSpec.key`` of every feasible candidate the space can suggest (the driver
        stops a study that has evaluated them all), or None when the space holds more than
        ``limit`` combinations of the parameters asked. Walks the define-by-run tree of
        :meth:`_ask`: each path is a list of choice indices, the next path the last question
        with a choice left, advanced by one (so conditional parameters are asked only where
        they matter, unlike :meth:`grid`'s product)."""
        keys: set[str] = set()
        path: list[int] = []
        for _ in range(limit):
            script = _Scripted(path)
            try:
                keys.add(self._build(self._ask(script), None).key)
            except Infeasible:
                pass
            taken, sizes = script.taken, script.sizes
            while taken and taken[-1] + 1 >= sizes[-1]:
                taken, sizes = taken[:-1], sizes[:-1]
            if not taken:
                return keys
            path = [*taken[:-1], taken[-1] + 1]
        return None

    # ---- grid ---------------------------------------------------------------------------

    def grid(self) -> dict[str, list]:
        """Every searched parameter and its choices (for ``GridSampler``; conditional ones
        included, so a grid revisits a candidate once per value of a parameter it ignores)."""
        s = self.space
        dims: dict[str, tuple] = {
            "fusion": s.fusion,
            self.share_kind: (self.share_choices.values() if isinstance(self.share_choices, IntRange)
                              else tuple(str(c) if isinstance(c, Ratio) else c for c in self.share_choices)),
            "placement": s.placement,
            "attn": s.attention,
            "attn.window": s.window,
            "rope": s.rope,
            "hybrid.split": tuple(split.choice for split in s.attn_fraction),
            **{f"merge.{k}": getattr(s.merge, k) for k in ("norm", "op", "scale", "gate", "out_proj")},
            "moe": s.moe.ffn,
            **{f"moe.{k}": getattr(s.moe, k) for k in ("n_experts", "top_k", "n_shared")},
        }
        return {name: list(choices) for name, choices in dims.items() if len(choices) > 1}


class _Scripted:
    """A stand-in for an Optuna trial that answers the i-th question with choice ``path[i]``
    (the first choice past the path), recording each answer's index and number of choices."""

    def __init__(self, path: list[int]) -> None:
        self.path = path
        self.taken: list[int] = []
        self.sizes: list[int] = []

    def _answer(self, choices: Sequence[Any]) -> Any:
        i = len(self.taken)
        index = self.path[i] if i < len(self.path) else 0
        self.taken.append(index)
        self.sizes.append(len(choices))
        return choices[index]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(choices)

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return int(self._answer(range(low, high + 1, step)))


def _record(trial: Any, key: str, value: float) -> None:
    if trial is None:  # baselines are built outside a trial
        return
    if hasattr(trial, "set_constraint"):
        trial.set_constraint(key, value)
    else:  # Optuna < 5: kept as user attributes, read back by make_sampler's constraints_func
        trial.set_user_attr(f"constraint:{key}", value)


def _constraints_from_user_attrs(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [float(trial.user_attrs.get(f"constraint:{key}", 0.0)) for key in CONSTRAINTS]


# the optional keyword arguments make_sampler passes to the samplers that take them
class _Constrained(TypedDict, total=False):
    constraints_func: Callable[[optuna.trial.FrozenTrial], Sequence[float]]


class _Startup(TypedDict, total=False):
    n_startup_trials: int


class _Population(TypedDict, total=False):
    population_size: int


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``config.sampler``, seeded.

    Constraints: from Optuna 5, TPE, NSGA-II and GP read ``trial.constraints`` (set by
    :meth:`SearchSpace.suggest`) themselves and ``constraints_func`` is deprecated (it would
    also count every constraint twice); before 5 they get a ``constraints_func`` reading the
    same values. Random and grid sampling ignore constraints."""
    s = config.sampler
    native = hasattr(optuna.Trial, "set_constraint")
    constrained: _Constrained = {} if native else {"constraints_func": _constraints_from_user_attrs}
    startup: _Startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.kind == "tpe":
        # multivariate + group: TPE models the conditional dimensions jointly per branch of
        # the space (merge.* only with intra, moe.* only with MoE). Both are long-standing
        # but still flagged experimental: silence that warning, not others.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True, **startup, **constrained)
    if s.kind == "nsga2":
        population: _Population = {} if s.population_size is None else {"population_size": s.population_size}
        return optuna.samplers.NSGAIISampler(seed=s.seed, **population, **constrained)
    if s.kind == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, **startup, **constrained)
    if s.kind == "grid":
        return optuna.samplers.GridSampler(SearchSpace(config).grid(), seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)
