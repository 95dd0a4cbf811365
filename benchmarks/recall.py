"""The recall proxy at its defaults on the layouts its calibration is stated for.

For each layout, ``score_recall`` with ``RecallConfig()`` (or ``--set`` changes): every
task's best held-out accuracy, the learning rate and step it was reached at, the summary
score and the wall time. The calibration claims (README, issue 14) read: ``*-*-`` >= 0.9 on
mqar, ``M-M-`` at d_state 4 <= 0.5, both 1:5 hybrids >= 0.8, pure Mamba-2 below both
hybrids on the summary.

    python benchmarks/recall.py [--layouts '*-*-,M-M-@4,bae-inter-1:5,...'] [--parallel | --sequential]
                                [--set steps=3000 --set 'lrs=[1e-3, 3e-3]'] [--json out.json]

``NAME@N`` scores NAME at d_state N. As ``hybridnas proxy recall`` does, each task and
learning rate of a layout runs as a Ray task on a GPU (a share of it each) and in sequence on
a CPU (``parallel_pays``); ``--parallel`` or ``--sequential`` chooses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import torch

from hybridnas.cli import _setting
from hybridnas.errors import UserError
from hybridnas.proxies.recall import RecallConfig, score_recall
from hybridnas.search_space.load import load_spec

CALIBRATION = "*-*-,M-M-@4,bae-inter-1:5,bae-intra-1:5,mamba2-1b"


def config_from(sets: list[str]) -> RecallConfig:
    """``RecallConfig()`` with each ``FIELD=VALUE`` read as ``launch --set`` reads it (TOML,
    else the bare string); a bare value for a tuple field becomes a tuple of one."""
    fields = {f.name: f for f in dataclasses.fields(RecallConfig)}
    changes: dict[str, object] = {}
    try:
        for item in sets:
            key, value = _setting(item)
            if key not in fields or fields[key].type.startswith("dict"):
                raise UserError(f"--set {item}: {key!r} is not a scalar or list field of RecallConfig")
            if fields[key].type.startswith("tuple"):
                value = tuple(value) if isinstance(value, list) else (value,)
            changes[key] = value
        return RecallConfig(**changes)
    except UserError as exc:  # one line and exit 2, as the CLI answers bad input
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", default=CALIBRATION)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--parallel", dest="parallel", action="store_true", default=None)
    mode.add_argument("--sequential", dest="parallel", action="store_false")
    parser.add_argument("--json", help="also write every run (curves included) here")
    args = parser.parse_args()
    base = config_from(args.set)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    print(f"# {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; {base}")
    rows = []
    for item in args.layouts.split(","):
        name, _, state = item.partition("@")
        config = dataclasses.replace(base, d_state=int(state)) if state else base
        spec = load_spec(name)
        started = time.perf_counter()
        report = score_recall(spec, config, parallel=args.parallel)
        shrunk = report.spec["pattern"]
        best = {t: max((r for r in report.runs if r["task"] == t), key=lambda r: r["accuracy"]) for t in report.tasks}
        cells = "  ".join(f"{t} {a:.3f} (lr {best[t]['lr']:g}, step {best[t]['steps']})"
                          for t, a in report.tasks.items())
        print(f"{item:16s} {shrunk:10s} score {report.score:.3f}  {cells}  {time.perf_counter() - started:.0f} s",
              flush=True)
        rows.append({"layout": item, "shrunk": shrunk, **report.to_dict()})
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": device, "torch": torch.__version__, "config": dataclasses.asdict(base),
                       "layouts": rows}, out, indent=1)


if __name__ == "__main__":
    main()
