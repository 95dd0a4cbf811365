"""Benchmark (d): hybridnas.analysis.pareto on random objective values, on the CPU.

    python benchmarks/pareto.py

Prints one table: operation, n, k, median seconds of 5 runs (after one warm-up run). Points
are uniform in [0, 1)^k, all minimised; hypervolumes use the reference (1.1, ..., 1.1).
Target: 2-objective non-dominated sorting of 100,000 points in under a second.
"""

import platform
import statistics
import time

import numpy as np

from hybridnas.analysis.pareto import hypervolume, hypervolume_history, nondominated_ranks, pareto_front

REPEATS = 5


def median_seconds(fn):
    """Median wall-clock seconds of fn() over REPEATS runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
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


if __name__ == "__main__":
    main()
