"""Benchmark (d): hybridnas.pareto on random objective values, on the CPU, and its users.

    python benchmarks/pareto.py [--trials 10000] [--decisions 10000]

Prints three tables:

1. operation, n, k, median seconds of 5 runs (after one warm-up run). Points are uniform in
   [0, 1)^k, all minimised; hypervolumes use the reference (1.1, ..., 1.1). Target:
   2-objective non-dominated sorting of 100,000 points in under a second.
2. ``hybridnas query STUDY --pareto val_loss,params`` on a study of ``--trials`` complete rows
   in a fresh SQLite file: ``query_study`` in-process (median of 5 after a warm-up) and the
   command end to end in a subprocess (median of 3: interpreter start, imports, the query,
   the table printed). Target: under 2 seconds.
3. ``--decisions`` ParetoHalving decisions at one rung (eta 3): total seconds and the last
   1,000, for points uniform at random and for a study that improves as it runs (each point
   dominates many of those before it). If a decision's cost grows linearly with the points at
   the rung, the last 1,000 of 10,000 take 19% of the total (10% if constant, 27% if
   quadratic, as re-sorting the rung was); last 1,000 / 1,000 is the cost of one decision
   with about 9,500 points at the rung.
"""

import argparse
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_study import write_study
from hybridnas.pareto import hypervolume, hypervolume_history, nondominated_ranks, pareto_front
from hybridnas.studies.halving import ParetoHalving
from hybridnas.studies.query import query_study

REPEATS = 5


def median_seconds(fn, clock=time.perf_counter):
    """Median seconds (wall-clock, or ``clock``) of fn() over REPEATS runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(REPEATS):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def query_case(trials: int) -> list[tuple[str, float, float]]:
    """(measure, wall seconds, CPU seconds) of query_study and of the command on a fresh
    ``trials``-row study. CPU time (user + system) is what a busy shared machine inflates least."""
    command = Path(sys.executable).with_name("hybridnas")
    command = [str(command)] if command.exists() else [sys.executable, "-m", "hybridnas"]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'study.db'}"
        write_study(url, trials, curves=True)
        front = query_study(url, "bench", pareto=["val_loss", "params"])
        in_process = median_seconds(lambda: query_study(url, "bench", pareto=["val_loss", "params"]))
        cpu = median_seconds(lambda: query_study(url, "bench", pareto=["val_loss", "params"]), clock=time.process_time)
        argv = [*command, "query", "bench", "--pareto", "val_loss,params", "--storage", url]
        walls, cpus = [], []
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return [(f"query_study(pareto=[val_loss, params]): {len(front)} rows on the front", in_process, cpu),
            ("`hybridnas query bench --pareto val_loss,params` (subprocess, median of 3)",
             statistics.median(walls), statistics.median(cpus))]


def halving_case(decisions: int, improving: bool, k: int = 2) -> tuple[float, float]:
    """(total seconds, seconds of the last 1,000) of ``decisions`` decisions at one rung."""
    rng = np.random.default_rng(1)
    points = rng.random((decisions, k))
    if improving:  # loss falls as the study learns: a new point dominates many earlier ones
        points[:, 0] -= np.linspace(0, 10, decisions)
    rule = ParetoHalving(eta=3, signs=(1,) * k)
    points = points.tolist()
    last = max(decisions - 1000, 0)
    start = time.perf_counter()
    for i in range(last):
        rule.decide(f"t{i}", 0, points[i])
    middle = time.perf_counter()
    for i in range(last, decisions):
        rule.decide(f"t{i}", 0, points[i])
    end = time.perf_counter()
    return end - start, end - middle


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = []  # (operation, points, fn)
    for name, n, k in [
        ("nondominated_ranks", 100_000, 2),
        ("pareto_front", 100_000, 2),
        ("hypervolume", 100_000, 2),
        ("hypervolume", 2_000, 3),
        ("nondominated_ranks", 2_000, 3),
        ("hypervolume_history", 1_000, 2),
    ]:
        points = rng.random((n, k))
        directions = ["minimize"] * k
        reference = [1.1] * k
        fn = {
            "nondominated_ranks": lambda p=points, d=directions: nondominated_ranks(p, d),
            "pareto_front": lambda p=points, d=directions: pareto_front(p, d),
            "hypervolume": lambda p=points, r=reference, d=directions: hypervolume(p, r, d),
            "hypervolume_history": lambda p=points, r=reference, d=directions: hypervolume_history(p, r, d),
        }[name]
        cases.append((name, n, k, fn))

    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    print("| operation | n | k | seconds (median of 5) |")
    print("|---|---|---|---|")
    for name, n, k, fn in cases:
        print(f"| {name} | {n:,} | {k} | {median_seconds(fn):.4f} |")

    print(f"\n| {args.trials:,}-row study, SQLite | wall seconds | CPU seconds |")
    print("|---|---|---|")
    for measure, seconds, cpu in query_case(args.trials):
        print(f"| {measure} | {seconds:.3f} | {cpu:.3f} |")

    print(f"\n| ParetoHalving, {args.decisions:,} decisions at one rung, eta 3 | k | total seconds | last 1,000 |")
    print("|---|---|---|---|")
    for k in (2, 3):
        for improving in (False, True):
            total, last = halving_case(args.decisions, improving, k)
            print(f"| {'improving' if improving else 'uniform random'} points | {k} | {total:.2f} | {last:.2f} |")


if __name__ == "__main__":
    main()
