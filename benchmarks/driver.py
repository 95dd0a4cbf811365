"""Benchmark (f): the study driver's own work per trial, as a study grows, on the CPU.

    python benchmarks/driver.py [--trials 10000] [--window 1000] [--sampler random]

Drives the bridge and scheduler of ``hybridnas launch`` through ``--trials`` simulated trials
(``hybridnas.studies.simulate``: Optuna ask/tell on a real SQLite file, the rung rule, reuse
of identical candidates, every results-table write; no Ray, no training) of a space with
thousands of distinct candidates (24 mixers, 0-24 attention mixers, 6 placements, inter and
intra fusion, 2 splits, 5 merge ops, 3 norms, 3 scales, 2 gates). Prints, for each window of
Optuna trials (trained, reused or infeasible), the milliseconds one trial took the driver on
average, and the median over the window's trained trials. Flat means the
driver reads nothing back per event: before this benchmark existed, each report re-read every
row of the study and each suggestion scanned every trial.

Optuna's own per-trial cost is part of the figure: its RDB storage and the sampler (TPE and
GP model every finished trial at each ask, so they grow with the study by design; the
default ``random`` sampler does not).
"""

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from hybridnas.studies.config import parse_study_config
from hybridnas.studies.simulate import simulate


def study(url: str, trials: int, sampler: str) -> dict:
    return {
        "name": "driver-benchmark", "storage": url, "trials": trials, "baselines": [],
        "space": {"n_attn": {"min": 0, "max": 24}, "fusion": ["inter", "intra"],
                  "placement": ["even", "front", "middle", "back", "sandwich", "cluster"],
                  "attn_fraction": ["1:1", "2:1"],
                  "merge": {"op": ["sub", "mean", "add", "concat", "merge_attention"],
                            "norm": ["group", "rms", "none"], "scale": ["none", "scalar", "vector"],
                            "gate": ["none", "sigmoid"]}},
        "size": {"mode": "fixed", "d_model": 64, "n_mixers": 24, "attn": {"n_heads": 4},
                 "ssm": {"d_state": 16, "head_dim": 16}},
        "objectives": [{"name": "val_loss"}, {"name": "cache_bytes", "context": 8192}],
        "budget": {"flops": 1e12, "rungs": [0.5], "eta": 2},
        "sampler": {"kind": sampler, "seed": 0},
        "trainer": {"tokenizer": "bytes", "seq_len": 64},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=1_000)
    parser.add_argument("--sampler", default="random", choices=["random", "tpe", "nsga2"])
    # in memory by default: on a VM disk each of Optuna's ~20 commits per trial waits ~4 ms for
    # fsync, which would hide the driver's own work (pass a folder on disk to include it)
    parser.add_argument("--folder", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        url = f"sqlite:///{Path(folder) / 'driver.db'}"
        config = parse_study_config(study(url, args.trials, args.sampler))
        started = time.perf_counter()
        result = simulate(config, runs_dir=Path(folder) / "runs")
        total = time.perf_counter() - started
    t = result.tally
    print(f"# driver overhead per trial: {sum(result.trials)} simulated trials, sampler {args.sampler}; "
          f"{platform.processor() or platform.machine()}, Python {sys.version.split()[0]}, optuna {optuna.__version__}")
    print(f"# database in {args.folder or tempfile.gettempdir()}")
    print(f"# {t.done} complete, {t.pruned} pruned, {t.reused} reused, {t.infeasible} infeasible; {total:.0f} s in all")
    print(f"{'trials':>13} | {'ms / trial':>10} | {'median ms / trained trial':>25}")
    print(f"{'-' * 13}-+-{'-' * 10}-+-{'-' * 25}")
    first, window_seconds, window_trials, trained = 1, 0.0, 0, []
    for i, (seconds, trials) in enumerate(zip(result.seconds, result.trials, strict=True)):
        window_seconds, window_trials = window_seconds + seconds, window_trials + trials
        trained.append(seconds)
        if window_trials >= args.window or i == len(result.seconds) - 1:
            last = first + window_trials - 1
            print(f"{first:>6}-{last:<6} | {1e3 * window_seconds / window_trials:>10.2f} | "
                  f"{1e3 * statistics.median(trained):>25.2f}")
            first, window_seconds, window_trials, trained = last + 1, 0.0, 0, []


if __name__ == "__main__":
    main()
