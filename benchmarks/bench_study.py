"""The study the benchmarks read: ``trials`` complete rows shaped like a real study's.

Shared by ``benchmarks/dashboard.py`` and ``benchmarks/pareto.py`` (run as scripts, so this
folder is on ``sys.path``).
"""

import random

import optuna

from hybridnas import ArchSpec
from hybridnas.search_space import layout
from hybridnas.studies.storage import TRIALS, ResultsStore, spec_columns

OBJECTIVES = [{"name": "val_loss", "direction": "minimize"},
              {"name": "cache_bytes", "direction": "minimize", "context": 8192},
              {"name": "params", "direction": "minimize"}]


def write_study(url: str, trials: int, seed: int = 0, *, curves: bool = False) -> None:
    """A study named "bench" with ``trials`` complete rows of 200 distinct candidates and its
    objectives (val_loss, cache_bytes@8192, params) in Optuna. Each row has its spec, the
    objective columns and metrics (and a decode speed); with ``curves``, rungs and an 8-point
    loss curve too (the JSON columns a full read decodes)."""
    rng = random.Random(seed)
    study = optuna.create_study(study_name="bench", storage=url, directions=["minimize"] * len(OBJECTIVES))
    study.set_user_attr("config", {"objectives": OBJECTIVES})
    candidates = []
    for _ in range(200):
        n, fusion = rng.randint(8, 16), rng.choice(["inter", "intra"])
        spec = ArchSpec.from_pattern(layout(n, rng.randint(0, n // 2), fusion=fusion), d_model=512)
        candidates.append(spec_columns(spec, {"placement": "even"}))
    rows = []
    for trial in range(trials):
        columns = rng.choice(candidates)
        n_attn = columns["n_attn"] or 0
        loss = 3.0 + rng.random() - 0.05 * n_attn
        params = int(1e8 * rng.uniform(0.8, 1.2))
        cache = int(1e6 * (1 + n_attn) * rng.uniform(0.9, 1.1))
        metrics = {"val_loss": loss, "params": params, "cache_bytes@8192": cache,
                   "decode_tokens_per_s@8192": rng.uniform(1e3, 5e3)}
        curve = [{"tokens": 2**20 * i, "val_loss": loss + 2.0 / (i + 1)} for i in range(8)] if curves else []
        rungs = [{"rung": r, "tokens": 2**22 * r, "val_loss": loss + 0.5 / (r + 1)} for r in range(3)] if curves else []
        rows.append({**columns, "study": "bench", "trial": trial, "status": "complete", "val_loss": loss,
                     "params": params, "cache_bytes": cache, "metrics": metrics,
                     "loss_curve": {"train": curve, "val": curve}, "rungs": rungs})
    store = ResultsStore(url)
    store.create()
    with store.engine.begin() as conn:
        conn.execute(TRIALS.insert(), rows)
    store.dispose()
