"""``StudyConfig``: one study, read from TOML and validated, with one-line errors.

A study file names what is searched (``[space]``), at what size (``[size]``), for which
objectives (``[[objectives]]``), under which FLOP budget and rungs (``[budget]``), with which
Optuna sampler (``[sampler]``) and how each candidate is trained (``[trainer]``, a
:class:`~hybridnas.trainer.config.TrainConfig`). Every dimension of ``[space]`` is a single
value (fixed) or a list of choices (searched when it holds more than one)::

    name = "my-study"
    trials = 48
    [space]
    fusion = ["inter", "intra"]
    attn_ratio = ["1:1", "1:5"]
    [space.merge]
    op = ["sub", "mean"]

:func:`load_study_config` takes a preset name (see :func:`preset_names`) or a path. Every
error is a :class:`StudyConfigError` whose message is one line naming the dotted key, e.g.
``space.fusion: 'intre' is not one of inter, intra``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from hybridnas.cli_storage import DEFAULT_STORAGE
from hybridnas.errors import UserError, format_validation_error
from hybridnas.proxies.recall import RecallConfig
from hybridnas.search_space.errors import SpecError
from hybridnas.search_space.layout import Placement
from hybridnas.search_space.spec import MAX_D_MODEL, ArchSpec
from hybridnas.studies.objectives import DEFAULT_CONTEXT, REGISTRY, Direction, ObjectiveRef, names
from hybridnas.studies.resources import ResourcesConfig
from hybridnas.trainer.config import MAX_FLOPS, TrainConfig

__all__ = [
    "StudyConfig",
    "StudyConfigError",
    "SpaceConfig",
    "MergeSpace",
    "MoESpace",
    "IntRange",
    "SizeConfig",
    "Objective",
    "BudgetConfig",
    "SamplerConfig",
    "RecallSettings",
    "BASELINES",
    "RECALL_TASKS",
    "Ratio",
    "Split",
    "load_study_config",
    "preset_names",
]

# the synthetic tasks a recall objective can score (the registry's recall entries but the
# "recall" summary, which averages the study's [recall] tasks)
RECALL_TASKS = tuple(m.task for m in REGISTRY.values() if m.task is not None)
BASELINES = ("attention", "mamba2", "bae-inter-1:5", "bae-intra-1:5")

# Literals of names computed at import (the registry's, the baselines above): ``Literal[tuple]``
# is the same type as ``Literal[a, b, ...]`` at runtime, which is what pydantic validates
# against, but mypy cannot evaluate it; to mypy they are the str they are.
if TYPE_CHECKING:
    ObjectiveName = str
    RecallTask = str
    Baseline = str
else:
    ObjectiveName = Literal[names()]
    RecallTask = Literal[RECALL_TASKS]
    Baseline = Literal[BASELINES]


class StudyConfigError(UserError):
    """An invalid study file or override; the message is one line naming the dotted key."""


# ---- ratios: parsed once, when the study file is validated ----------------------------------


@dataclass(frozen=True)
class Ratio:
    """An ``attention:mamba`` ratio such as ``"1:5"``: non-negative integers, not both zero.
    ``str(ratio)`` is its spelling in study files and Optuna parameters."""

    attn: int
    ssm: int

    @classmethod
    def parse(cls, text: Any) -> Ratio:
        if isinstance(text, Ratio):
            return text
        parts = text.split(":") if isinstance(text, str) else []
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{text!r} is not a ratio such as 1:5")
        ratio = cls(int(parts[0]), int(parts[1]))
        if ratio.attn + ratio.ssm == 0:
            raise ValueError(f"{text!r}: parts must not both be zero")
        return ratio

    def __str__(self) -> str:
        return f"{self.attn}:{self.ssm}"

    @property
    def fraction(self) -> float:
        """The attention share, attn / (attn + ssm)."""
        return float(Fraction(self.attn, self.attn + self.ssm))

    def same_as(self, other: Ratio) -> bool:
        """The same share (1:2 and 2:4 are)."""
        return self.attn * other.ssm == self.ssm * other.attn


@dataclass(frozen=True)
class Split:
    """The attention share of an ``H`` block's channels: written ``"2:1"`` (attention:SSM)
    or as a fraction in (0, 1). ``choice`` is the value as written (the Optuna parameter)."""

    choice: str | float
    fraction: float

    @classmethod
    def parse(cls, choice: Any) -> Split:
        if isinstance(choice, Split):
            return choice
        if isinstance(choice, str):
            ratio = Ratio.parse(choice)
            if ratio.attn == 0 or ratio.ssm == 0:
                raise ValueError(f"{choice!r} leaves a branch of the H block empty")
            return cls(choice, ratio.fraction)
        if isinstance(choice, bool) or not isinstance(choice, int | float) or not 0 < choice < 1:
            raise ValueError(f"{choice!r} is not a ratio such as 1:2 or a fraction in (0, 1)")
        return cls(float(choice), float(choice))


# in a study file and in the saved config, the text as written; in code, the typed value
RatioField = Annotated[Ratio, BeforeValidator(Ratio.parse), PlainSerializer(str, return_type=str)]
SplitField = Annotated[Split, BeforeValidator(Split.parse), PlainSerializer(lambda s: s.choice)]


# ---- choices: a single value or a list ----------------------------------------------------


def _as_tuple(value: Any) -> Any:
    """A scalar is the one fixed choice; a list (TOML array) is searched."""
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,)


def _check_choices(values: tuple) -> tuple:
    if not values:
        raise ValueError("needs at least one choice")
    seen = []
    for v in values:
        if v in seen:
            raise ValueError(f"{v!r} is listed twice")
        seen.append(v)
    return values


_Item = TypeVar("_Item")
# ``Choices[X]``: a tuple of choices of ``X``, given in TOML as one value or an array.
Choices = Annotated[tuple[_Item, ...], BeforeValidator(_as_tuple), Field(min_length=1)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="after")
    def _no_duplicates(self) -> _Section:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, tuple) and value:  # emptiness is each field's own rule
                try:
                    _check_choices(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return self


class IntRange(_Section):
    """An integer range ``{min = 0, max = 4, step = 1}``, searched with ``suggest_int``."""

    min: Annotated[int, Field(ge=0)]
    max: Annotated[int, Field(ge=0)]
    step: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.max < self.min:
            raise ValueError(f"max: {self.max} is below min={self.min}")
        return self

    def values(self) -> tuple[int, ...]:
        return tuple(range(self.min, self.max + 1, self.step))


class MergeSpace(_Section):
    """How the two branches of an ``H`` block are merged (``ArchSpec.hybrid``); defaults are
    ArchSpec's (Bae et al.'s best block)."""

    norm: Choices[Literal["none", "rms", "group"]] = ("group",)
    op: Choices[Literal["mean", "add", "sub", "concat", "merge_attention"]] = ("sub",)
    scale: Choices[Literal["none", "scalar", "vector"]] = ("none",)
    gate: Choices[Literal["none", "sigmoid"]] = ("none",)
    out_proj: Choices[Literal["joint", "separate"]] = ("separate",)


class MoESpace(_Section):
    """Which FFNs are mixtures of experts (``ffn``) and their shape (``ArchSpec.moe``)."""

    ffn: Choices[Literal["none", "every", "every_other"]] = ("none",)
    n_experts: Choices[Literal[4, 8, 16]] = (8,)
    top_k: Choices[Literal[1, 2]] = (1,)
    n_shared: Choices[Literal[0, 1]] = (1,)


class SpaceConfig(_Section):
    """The searched dimensions (DESIGN.md). Give the attention share as ``n_attn`` (a count:
    int, list or ``{min, max}``) or ``attn_ratio`` (``"attention:mamba"`` strings), not both;
    neither means ``attn_ratio = "1:5"``."""

    n_attn: Annotated[tuple[Annotated[int, Field(ge=0)], ...], BeforeValidator(_as_tuple)] | IntRange | None = None
    attn_ratio: Choices[RatioField] | None = None
    placement: Choices[Placement] = ("even",)
    fusion: Choices[Literal["inter", "intra"]] = ("inter",)
    attention: Choices[Literal["global", "window"]] = ("global",)  # inter-layer attention only
    window: Choices[Annotated[int, Field(gt=0)]] = (512,)  # keys per query for "window"
    rope: Choices[bool] = (True,)
    attn_fraction: tuple[SplitField, ...] = (Split("1:1", 0.5),)  # H blocks: "attention:SSM" or a fraction
    merge: MergeSpace = MergeSpace()
    moe: MoESpace = MoESpace()

    @field_validator("n_attn", mode="before")
    @classmethod
    def _n_attn(cls, value: Any) -> Any:
        return IntRange(**value) if isinstance(value, dict) else value

    @field_validator("attn_fraction", mode="before")
    @classmethod
    def _fractions(cls, value: Any) -> tuple:
        # parsed here: a str | float union would report one error per branch
        value = _as_tuple(value)
        if not value:
            raise ValueError("needs at least one choice")
        return tuple(Split.parse(choice) for choice in value)

    @model_validator(mode="after")
    def _one_share(self) -> SpaceConfig:
        if self.n_attn is not None and self.attn_ratio is not None:
            raise ValueError("n_attn: give n_attn or attn_ratio, not both")
        return self

    @property
    def share(self) -> tuple[Literal["n_attn", "attn_ratio"], tuple | IntRange]:
        """Which attention-share dimension is used, and its choices."""
        if self.n_attn is not None:
            return "n_attn", self.n_attn
        return "attn_ratio", self.attn_ratio or (Ratio(1, 5),)


class SizeConfig(_Section):
    """``mode = "fixed"``: ``d_model`` and ``n_mixers``. ``mode = "params"``: ``d_model`` and a
    parameter target ``params`` (of ``count``: total, non-embedding or active); the depth
    between ``min_mixers`` and ``max_mixers`` whose parameters come closest is used, and a
    candidate further than ``tolerance`` (relative) from the target is infeasible.
    ``attn`` / ``ssm`` override ArchSpec's derived attention / Mamba-2 sizes (e.g. heads)."""

    mode: Literal["fixed", "params"] = "fixed"
    d_model: Annotated[int, Field(gt=0, le=MAX_D_MODEL)]
    n_mixers: Annotated[int, Field(gt=0)] | None = None
    params: Annotated[float, Field(gt=0, le=1e13, allow_inf_nan=False)] | None = None
    count: Literal["total", "nonembed", "active"] = "total"
    min_mixers: Annotated[int, Field(gt=0)] = 1
    max_mixers: Annotated[int, Field(gt=0)] = 64
    tolerance: Annotated[float, Field(gt=0)] = 0.15
    attn: dict[str, Any] = Field(default_factory=dict)
    ssm: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _mode_fields(self) -> SizeConfig:
        if self.mode == "fixed":
            if self.n_mixers is None:
                raise ValueError("n_mixers: required when mode = 'fixed'")
            if self.params is not None:
                raise ValueError("params: only with mode = 'params'")
        else:
            if self.params is None:
                raise ValueError("params: required when mode = 'params'")
            if self.n_mixers is not None:
                raise ValueError("n_mixers: only with mode = 'fixed' (mode = 'params' finds the depth)")
            if self.max_mixers < self.min_mixers:
                raise ValueError(f"max_mixers: {self.max_mixers} is below min_mixers={self.min_mixers}")
        for key in ("window", "rope"):
            if key in self.attn:
                raise ValueError(f"attn.{key}: searched in space.{key if key == 'rope' else 'window'}, not set here")
        try:  # the sizes must make valid attention and Mamba-2 layers (H splits are per candidate)
            ArchSpec.from_pattern("*-M-", d_model=self.d_model, attn=self.attn, ssm=self.ssm)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return self


_WITH_CONTEXT = tuple(sorted(n for n, m in REGISTRY.items() if m.takes_context))


class Objective(_Section):
    """One ``[[objectives]]`` entry, a name of the registry (``studies/objectives.py``);
    ``context`` (tokens) only for those taken at a context. :attr:`ref` is the typed value
    the rest of hybridnas reads."""

    name: ObjectiveName
    direction: Literal["minimize", "maximize"] | None = None
    context: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _defaults(self) -> Objective:
        takes_context = REGISTRY[self.name].takes_context
        if self.context is not None and not takes_context:
            raise ValueError(f"context: only for {', '.join(_WITH_CONTEXT)}, not {self.name}")
        if takes_context and self.context is None:
            object.__setattr__(self, "context", DEFAULT_CONTEXT)
        if self.direction is None:
            object.__setattr__(self, "direction", REGISTRY[self.name].direction)
        return self

    @property
    def ref(self) -> ObjectiveRef:
        return ObjectiveRef(self.name, self.direction, self.context)

    @property
    def label(self) -> str:
        """A short unique name, e.g. ``val_loss`` or ``decode_tokens_per_s@32768``."""
        return self.ref.label


class BudgetConfig(_Section):
    """Training FLOPs per candidate, the rungs (budget fractions) of successive halving,
    and eta (keep the top 1/eta at each rung)."""

    flops: Annotated[float, Field(gt=0, le=MAX_FLOPS, allow_inf_nan=False)]
    rungs: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = (0.25, 0.5)
    eta: Annotated[int, Field(ge=2)] = 3

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, rungs: tuple) -> tuple:
        if any(b <= a for a, b in zip(rungs, rungs[1:], strict=False)):
            raise ValueError(f"{list(rungs)} must be increasing")
        return rungs


_RECALL = RecallConfig()


class RecallSettings(_Section):
    """How recall objectives are scored (see :class:`hybridnas.proxies.recall.RecallConfig`):
    the shrunk width and state, the learning-rate grid and steps per task, the tasks the
    "recall" summary averages, and the recall family's sequence length and MQAR pairs."""

    # the defaults are RecallConfig's (one home, so the study's and the CLI's cannot drift)
    tasks: tuple[RecallTask, ...] = _RECALL.tasks
    d_model: Annotated[int, Field(ge=8, le=4096)] = _RECALL.d_model
    head_dim: Annotated[int, Field(ge=4)] = _RECALL.head_dim
    d_state: Annotated[int, Field(ge=1)] | None = _RECALL.d_state
    ffn: bool = _RECALL.ffn
    max_run: Annotated[int, Field(ge=1)] | None = _RECALL.max_run
    lrs: tuple[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)], ...] = _RECALL.lrs
    weight_decay: Annotated[float, Field(ge=0, lt=1)] = _RECALL.weight_decay
    steps: Annotated[int, Field(ge=1, le=1_000_000)] = _RECALL.steps
    batch_size: Annotated[int, Field(ge=1)] = _RECALL.batch_size
    seq_len: Annotated[int, Field(ge=8)] | None = _RECALL.seq_len
    kv_pairs: Annotated[int, Field(ge=1)] | None = _RECALL.kv_pairs

    @model_validator(mode="after")
    def _buildable(self) -> RecallSettings:
        if self.d_model % self.head_dim:
            raise ValueError(f"d_model: {self.d_model} is not a multiple of head_dim={self.head_dim}")
        if not self.tasks or not self.lrs:
            raise ValueError("tasks and lrs need at least one entry each")
        return self


class SamplerConfig(_Section):
    """The Optuna sampler (see :func:`hybridnas.studies.space.make_sampler`)."""

    kind: Literal["tpe", "nsga2", "random", "grid", "gp"] = "tpe"
    seed: int = 0
    n_startup_trials: Annotated[int, Field(ge=0)] | None = None  # tpe, gp
    population_size: Annotated[int, Field(ge=2)] | None = None  # nsga2

    @model_validator(mode="after")
    def _applies(self) -> SamplerConfig:
        if self.n_startup_trials is not None and self.kind not in ("tpe", "gp"):
            raise ValueError(f"n_startup_trials: only for kind tpe or gp, not {self.kind}")
        if self.population_size is not None and self.kind != "nsga2":
            raise ValueError(f"population_size: only for kind nsga2, not {self.kind}")
        return self


_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
MAX_NAME_CHARS = 100  # a study's name is a folder name (runs) and a key in two tables


class StudyConfig(_Section):
    """A whole study, resolved. ``model_dump(mode="json")`` is what is saved with it."""

    name: str
    storage: str = DEFAULT_STORAGE  # below --storage and HYBRIDNAS_STORAGE (cli_storage.py)
    # where Tune keeps trial folders and rung checkpoints: a local path, a shared one (NFS), or a
    # pyarrow filesystem URI (s3://bucket/runs); None: beside a SQLite file, else ~/hybridnas-runs
    runs_dir: str | None = None
    # bounds: a study beyond 10^5 trials or 4,096 trials at once is a typo, not a search
    trials: Annotated[int, Field(ge=1, le=100_000)] = 32
    concurrent: Annotated[int, Field(ge=1, le=4096)] = 1
    seeds_per_candidate: Annotated[int, Field(ge=1, le=64)] = 1
    baselines: tuple[Baseline, ...] = BASELINES
    # candidates to try right after the baselines, as Optuna parameters ({"fusion": "intra",
    # "merge.op": "mean"}; the rest is sampled). Like baselines they are reference points of
    # the frontier: the rung rule ranks them but never stops them
    enqueue: tuple[dict[str, Any], ...] = ()
    space: SpaceConfig = SpaceConfig()
    size: SizeConfig
    objectives: tuple[Objective, ...] = (Objective(name="val_loss"), Objective(name="params"))
    budget: BudgetConfig
    sampler: SamplerConfig = SamplerConfig()
    trainer: TrainConfig = TrainConfig()
    recall: RecallSettings = RecallSettings()
    resources: ResourcesConfig = ResourcesConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name[:60]!r} must be non-empty letters, digits and _ . : -")
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"{len(name)} characters: at most {MAX_NAME_CHARS} (it names a folder of runs)")
        return name

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, names: tuple) -> tuple:
        return _check_choices(names) if names else names

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, objectives: tuple[Objective, ...]) -> tuple:
        if not objectives:
            raise ValueError("needs at least one objective")
        labels = [o.label for o in objectives]
        for label in labels:
            if labels.count(label) > 1:
                raise ValueError(f"{label!r} is listed twice")
        if "val_loss" not in labels:
            raise ValueError("val_loss is required (the quality every candidate is compared on)")
        return objectives

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        t = self.trainer
        if t.rungs:
            raise ValueError("trainer.rungs: set budget.rungs instead (the driver passes them to the trainer)")
        for r in self.budget.rungs:
            if not t.warmup_frac <= r <= 1 - t.decay_frac:
                raise ValueError(
                    f"budget.rungs: {r} is outside the trainer's stable phase "
                    f"[trainer.warmup_frac={t.warmup_frac}, 1 - trainer.decay_frac={1 - t.decay_frac:g}]"
                )
        if len(t.lr_grid) > 1 and self.budget.rungs and t.lr_sweep_frac >= self.budget.rungs[0]:
            raise ValueError(f"trainer.lr_sweep_frac: {t.lr_sweep_frac} must end before the first of "
                             f"budget.rungs ({self.budget.rungs[0]}): a rung ranks the rate the sweep chose")
        gpus = self.resources.gpus_per_trial
        if gpus != "auto" and gpus > 0 and t.device == "cpu":
            raise ValueError(f"resources.gpus_per_trial: {gpus:g} GPUs for trials that train on trainer.device = 'cpu'")
        if gpus == 0 and t.device == "cuda":
            raise ValueError("resources.gpus_per_trial: 0 GPUs for trials that train on trainer.device = 'cuda'")
        kind, choices = self.space.share
        if kind == "n_attn" and self.size.mode == "fixed":
            most = max(choices.values() if isinstance(choices, IntRange) else choices)
            assert self.size.n_mixers is not None, "SizeConfig requires n_mixers when mode = 'fixed'"
            if most > self.size.n_mixers:
                raise ValueError(f"space.n_attn: {most} exceeds size.n_mixers={self.size.n_mixers}")
        return self

    @property
    def refs(self) -> tuple[ObjectiveRef, ...]:
        """The objectives as typed values, in order."""
        return tuple(o.ref for o in self.objectives)

    @property
    def directions(self) -> list[Direction]:
        """For ``optuna.create_study(directions=...)``, in objective order."""
        return [ref.direction for ref in self.refs]

    @property
    def vocab_size(self) -> int:
        """The vocabulary candidates are built with: the tokenizer's."""
        return 257 if self.trainer.tokenizer == "bytes" else self.trainer.vocab_size


# ---- loading -----------------------------------------------------------------------------

_PRESETS = "presets"


def preset_names() -> list[str]:
    """The built-in presets, loadable by name."""
    folder = resources.files(__package__) / _PRESETS
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


MAX_STUDY_FILE_BYTES = 1_000_000  # the presets are 2-4 kB


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for the file system
        return False


def _is_path(target: str) -> bool:
    """Whether ``target`` names a study file (else a preset)."""
    return target.endswith(".toml") or "/" in target or "\\" in target or _exists(Path(target))


def _read(target: str) -> tuple[str, str]:
    """(file name for messages, TOML text) of a preset name or a path."""
    path = Path(target)
    if _is_path(target):
        try:
            if path.is_file() and path.stat().st_size > MAX_STUDY_FILE_BYTES:
                raise StudyConfigError(f"{target}: {path.stat().st_size:,} bytes; a study file is at most "
                                       f"{MAX_STUDY_FILE_BYTES:,}")
            return path.name, path.read_text(encoding="utf-8")
        except OSError as exc:
            raise StudyConfigError(f"{target}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise StudyConfigError(f"{target}: not a text file (a study file is TOML in UTF-8)") from None
    if target not in preset_names():
        raise StudyConfigError(f"unknown preset {target!r} (available: {', '.join(preset_names())})")
    text = (resources.files(__package__) / _PRESETS / f"{target}.toml").read_text(encoding="utf-8")
    return f"{target}.toml", text


def _parse(filename: str, text: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if found:  # Python 3.11-3.13 put the position in the message
            message = f"line {found[1]}: {message[: found.start()]} (column {found[2]})"
        elif lineno := getattr(exc, "lineno", None):  # Python 3.14+ has the position as attributes
            message = f"line {lineno}: {getattr(exc, 'msg', message)}"
        raise StudyConfigError(f"{filename}: {message}") from None


def _apply_override(data: dict, key: str, value: Any) -> None:
    *sections, leaf = key.replace("__", ".").split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise StudyConfigError(f"override {key}: {section!r} is not a table")
    node[leaf] = value


URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")  # two letters at least: C:\ is a path
BUILTIN_CORPORA = ("sotu",)  # corpus names that are not paths


def _anchor_paths(data: dict, folder: Path) -> None:
    """Make the study's relative paths absolute against ``folder``, in place: the corpus
    (unless a built-in name), the token cache and the runs folder (unless a URI). Workers
    run in folders of Ray's own, so a relative path there would name another file."""
    def anchored(value: Any) -> Any:
        if not isinstance(value, str) or not value or URI.match(value):
            return value
        path = Path(value).expanduser()
        if path.is_absolute():  # left as written (a relaunch compares the saved text)
            return value if path == Path(value) else str(path)
        return str(folder / path)

    trainer = data.get("trainer")
    if isinstance(trainer, dict):
        if trainer.get("corpus") not in BUILTIN_CORPORA:
            trainer["corpus"] = anchored(trainer.get("corpus"))
        trainer["cache_dir"] = anchored(trainer.get("cache_dir"))
        for key in ("corpus", "cache_dir"):
            if trainer[key] is None:
                del trainer[key]
    if "runs_dir" in data:
        data["runs_dir"] = anchored(data["runs_dir"])


def load_study_config(target: str, **overrides: Any) -> StudyConfig:
    """The study of a preset name or a ``.toml`` path, with ``overrides`` applied before
    validation. Override keys are top-level (``storage``, ``trials``) or dotted
    (``**{"budget.flops": 1e15}``; ``budget__flops`` works as a keyword too); None values
    are ignored, so CLI options that were not given can be passed straight through.

    Relative paths (``trainer.corpus``, ``trainer.cache_dir``, ``runs_dir``) written in a
    study file are taken from the file's folder, those given as overrides (``--set``,
    ``--runs-dir``) from the current one; both are absolute in the result."""
    filename, text = _read(target)
    data = _parse(filename, text)
    if _is_path(target):
        _anchor_paths(data, Path(target).expanduser().resolve().parent)
    for key, value in overrides.items():
        if value is not None:
            _apply_override(data, key, value)
    _anchor_paths(data, Path.cwd())  # what is still relative came from an override (or a preset)
    return parse_study_config(data)


def parse_study_config(data: dict) -> StudyConfig:
    """Validate a study given as a dict (parsed TOML); raises :class:`StudyConfigError`."""
    try:
        return StudyConfig(**data)
    except ValidationError as exc:
        raise StudyConfigError(format_validation_error(exc, StudyConfig, style="toml")) from None


__all__ += ["parse_study_config"]
