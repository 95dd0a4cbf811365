"""Benchmark: small trials packed onto one GPU vs one GPU per trial (issue 16, item 3).

    python benchmarks/packing.py [--flops 1e15] [--out DIR]

Runs ``benchmarks/studies/packing.toml`` (six ~35M candidates, all enqueued) through the real
``hybridnas launch`` twice on this machine's GPU(s) and embedded Ray: once with
``gpus_per_trial = 1`` (each trial holds a GPU alone: one at a time on one GPU), once with the
file's ``"auto"`` (an eighth of a GPU each, six at once). Prints wall time, trials per hour
and each candidate's validation loss in both runs (the same models on the same batches: they
should agree to within GPU nondeterminism).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hybridnas.studies.storage import ResultsStore

STUDY = Path(__file__).parent / "studies" / "packing.toml"


def run(name: str, gpus: str, flops: float, folder: Path) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, mean GPU utilization %, {candidate: val_loss}) of one launch of the study.
    Utilization is nvidia-smi's, sampled every second over the run (all GPUs averaged)."""
    url = f"sqlite:///{folder / f'{name}.db'}"
    command = [sys.executable, "-m", "hybridnas", "launch", str(STUDY), "--storage", url, "--set", f"name={name}",
               "--set", f"budget.flops={flops}", "--set", f"resources.gpus_per_trial={gpus}"]
    sampler = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                "-l", "1"], stdout=subprocess.PIPE, text=True)
    started = time.perf_counter()
    try:
        subprocess.run(command, check=True, cwd=folder)
    finally:
        wall = time.perf_counter() - started
        sampler.terminate()
    samples = [float(line) for line in sampler.communicate()[0].split() if line.strip().isdigit()]
    store = ResultsStore(url)
    rows = [r for r in store.rows(name) if r["status"] == "complete"]
    store.dispose()
    losses = {f"{r['pattern']} {r.get('merge_op') or ''}".strip(): r["val_loss"] for r in rows}
    return wall, sum(samples) / max(1, len(samples)), losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flops", type=float, default=1e15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="packing-"))
    folder.mkdir(parents=True, exist_ok=True)
    alone_s, alone_util, alone = run("packing-alone", "1", args.flops, folder)
    packed_s, packed_util, packed = run("packing-auto", '"auto"', args.flops, folder)
    print("| run | trials | wall s | trials/hour | mean GPU utilization |\n|---|---|---|---|---|")
    for label, wall, util, losses in (("one GPU per trial", alone_s, alone_util, alone),
                                      ('"auto" (packed)', packed_s, packed_util, packed)):
        print(f"| {label} | {len(losses)} | {wall:.0f} | {3600 * len(losses) / wall:.1f} | {util:.0f}% |")
    print(f"\nspeed-up {alone_s / packed_s:.2f}x\n")
    print("| candidate | val loss alone | val loss packed | diff |\n|---|---|---|---|")
    for key in sorted(alone):
        other = packed.get(key)
        diff = f"{other - alone[key]:+.4f}" if other is not None else "-"
        print(f"| {key} | {alone[key]:.4f} | {other if other is None else f'{other:.4f}'} | {diff} |")


if __name__ == "__main__":
    main()
