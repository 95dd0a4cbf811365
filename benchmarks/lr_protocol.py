"""How much a study's ranking depends on the base learning rate, with and without a sweep.

Trains ``--layouts`` candidates of a preset's space (its baselines first, then distinct
random suggestions) at the preset's budget and trainer settings, under two protocols:

- ``fixed``: every candidate at one learning rate (``trainer.lr``, no ``lr_grid``);
- ``sweep``: each candidate's rate chosen by the trainer's ``lr_grid`` sweep (``--grid``
  multipliers over the first ``--sweep-frac`` of its steps; see ``hybridnas.trainer.train``),

each with the base rate halved and doubled. For each protocol it prints the validation losses
and Kendall's tau between the rankings under the halved and the doubled base: 1 when the
base rate does not change which candidate wins, 0 when the two rankings are unrelated.

    python benchmarks/lr_protocol.py [--preset quickstart] [--layouts 8] [--grid 0.25,1,4]
                                     [--sweep-frac 0.25] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import optuna
from scipy.stats import kendalltau

from hybridnas.search_space import ArchSpec
from hybridnas.studies.config import load_study_config
from hybridnas.studies.space import Infeasible, SearchSpace


def layouts(preset: str, n: int, seed: int = 0) -> list[tuple[str, ArchSpec]]:
    """The preset's baselines, then distinct random suggestions of its space, ``n`` in all."""
    config = load_study_config(preset)
    space = SearchSpace(config)
    chosen = list(space.baseline_specs().items())[:n]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    keys = {spec.key for _, spec in chosen}
    for _ in range(1000):
        if len(chosen) >= n:
            break
        trial = study.ask()
        try:
            spec = space.suggest(trial)
        except Infeasible:
            continue
        if spec.key not in keys:
            keys.add(spec.key)
            chosen.append((f"sampled {trial.number}", spec))
    return chosen


def _train(job: tuple) -> dict:
    preset, spec_dict, lr, grid, sweep_frac = job
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from hybridnas.trainer import TrainConfig, train

    torch.set_num_threads(1)
    config = load_study_config(preset)
    settings = {**config.trainer.model_dump(), "lr": lr, "lr_grid": grid, "lr_sweep_frac": sweep_frac}
    result = train(ArchSpec.from_dict(spec_dict), config.budget.flops, TrainConfig(**settings))
    return {"val_loss": result.val_loss, "lr": result.lr, "status": result.status,
            "flops": result.flops + result.extra_flops, "wall_s": result.wall_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--layouts", type=int, default=8)
    parser.add_argument("--grid", default="0.25,1,4", help="the sweep protocol's lr_grid multipliers")
    parser.add_argument("--sweep-frac", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    grid = tuple(float(g) for g in args.grid.split(","))
    config = load_study_config(args.preset)
    base = config.trainer.lr
    chosen = layouts(args.preset, args.layouts)
    protocols = {"fixed": (), "sweep": grid}
    bases = {"halved": base / 2, "doubled": base * 2}
    jobs = [(p, b, name, spec) for p in protocols for b in bases for name, spec in chosen]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_train, [(args.preset, spec.to_dict(), bases[b], protocols[p], args.sweep_frac)
                                          for p, b, _, spec in jobs]))
    table = {(p, b, name): r for (p, b, name, _), r in zip(jobs, results, strict=True)}

    print(f"{args.preset}: {len(chosen)} layouts at {config.budget.flops:.3g} FLOPs, base lr {base:g} halved "
          f"({bases['halved']:g}) and doubled ({bases['doubled']:g}); sweep lr_grid {list(grid)} over the first "
          f"{args.sweep_frac:g} of the steps; {time.perf_counter() - started:.0f} s on {args.workers} workers\n")
    print("| layout | pattern | " + " | ".join(f"{p} {b}" for p in protocols for b in bases) + " |")
    print("|---|---|" + "---|" * (len(protocols) * len(bases)))
    for name, spec in chosen:
        cells = []
        for p in protocols:
            for b in bases:
                r = table[(p, b, name)]
                loss = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else r["status"]
                cells.append(loss + (f" (lr {r['lr']:.3g})" if p == "sweep" else ""))
        print(f"| {name} | `{spec.pattern}` | " + " | ".join(cells) + " |")
    summary = {}
    print("\n| protocol | Kendall tau, halved vs doubled base lr | FLOPs per candidate (mean) |")
    print("|---|---|---|")
    for p in protocols:
        halved = [table[(p, "halved", name)]["val_loss"] for name, _ in chosen]
        doubled = [table[(p, "doubled", name)]["val_loss"] for name, _ in chosen]
        tau = kendalltau(halved, doubled).statistic
        flops = sum(table[(p, b, name)]["flops"] for b in bases for name, _ in chosen) / (len(bases) * len(chosen))
        summary[p] = {"kendall_tau": tau, "mean_flops": flops}
        print(f"| {p} | {tau:.3f} | {flops:.3g} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"preset": args.preset, "grid": grid, "sweep_frac": args.sweep_frac, "base_lr": base,
                       "layouts": [{"name": n, "pattern": s.pattern} for n, s in chosen], "summary": summary,
                       "runs": [{"protocol": p, "base": b, "layout": n, **r}
                                for (p, b, n), r in table.items()]}, out, indent=2)


if __name__ == "__main__":
    main()
