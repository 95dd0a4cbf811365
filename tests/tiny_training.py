"""The tiny training setup the trainer tests share: a 4-layer hybrid, a budget of about 40
steps of 1024 tokens (seconds on a CPU), and a TrainConfig on the built-in corpus's bytes."""

from hybridnas import ArchSpec
from hybridnas.trainer import TrainConfig

TINY = ArchSpec.from_pattern(
    "M-*-", d_model=64, vocab_size=257, attn={"n_heads": 4}, ssm={"d_state": 16, "head_dim": 16, "chunk_size": 32}
)
BUDGET = 4e10


def config(token_cache: str, **overrides) -> TrainConfig:
    base = {"tokenizer": "bytes", "seq_len": 64, "batch_tokens": 1024, "cache_dir": token_cache, "progress": False}
    return TrainConfig(**{**base, **overrides})
