"""Training: data, the FLOP-budgeted loop, schedules, rung checkpoints, failures as results."""

from hybridnas.trainer.config import ConfigError, TrainConfig
from hybridnas.trainer.data import DataError, TokenData, load_tokens
from hybridnas.trainer.memory import FitError
from hybridnas.trainer.train import (
    BudgetError,
    CheckpointError,
    Plan,
    Run,
    RungReport,
    TrainResult,
    make_plan,
    peak_flops,
    train,
)

__all__ = [
    "train",
    "Run",
    "peak_flops",
    "TrainConfig",
    "TrainResult",
    "RungReport",
    "Plan",
    "make_plan",
    "load_tokens",
    "TokenData",
    "ConfigError",
    "DataError",
    "BudgetError",
    "CheckpointError",
    "FitError",
]
