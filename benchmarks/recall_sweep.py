"""Learning curves of the recall proxy for calibration: one training run per JSONL line.

Each line of CONFIGS names a layout (a pattern or an example name), a task, one learning
rate and the proxy's settings; every run prints its best held-out accuracy, the step it was
reached at, its wall time and every third evaluation, and is appended to OUT as JSON (its
whole curve included)::

    {"layout": "bae-intra-1:5", "task": "mqar", "lr": 0.003, "steps": 1500, "batch": 32,
     "hd": 32, "d_model": 64, "max_run": 2, "ffn": false, "d_state": null,
     "over": {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4}, "seed": 0, "graph": true}

``seed`` seeds the data, the model and the rows drawn; ``graph: false`` keeps a GPU run
eager (no CUDA graph); ``spec`` changes the shrunk spec's fields for a probe, e.g.
``{"attn": {"rope": false}}`` or ``{"ssm": {"conv_kernel": 1}}`` (merged section by
section). ``over`` changes the task's settings (``hybridnas.proxies.synthetic``); n_train is
set to steps x batch, so almost every row is fresh. Run shards in parallel processes (each
stops starting new runs after ``--seconds``):

    python benchmarks/recall_sweep.py CONFIGS.jsonl OUT.jsonl [--shard 0 --of 8] [--seconds 500]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hybridnas.proxies import recall, synthetic
from hybridnas.search_space import ArchSpec
from hybridnas.search_space.load import load_spec


def run(line: dict) -> dict:
    batch = line.get("batch", 32)
    config = recall.RecallConfig(
        tasks=(line["task"],), d_model=line.get("d_model", 64), head_dim=line.get("hd", 16),
        d_state=line.get("d_state"), ffn=line.get("ffn", False), max_run=line.get("max_run", 2),
        steps=line["steps"], batch_size=batch, eval_every=line.get("eval_every", 100), lrs=(line["lr"],),
        task_overrides={line["task"]: {**line.get("over", {}), "n_train": line["steps"] * batch}},
        seed=line.get("seed", 0), weight_decay=line.get("wd", 0.1), stop_at=line.get("stop", 1.0))
    settings = config.settings(line["task"])
    data = synthetic.make_task(settings, seed=line.get("seed", 0))
    small = recall.reduced_spec(load_spec(line["layout"]), config, settings.vocab_size)
    if line.get("spec"):
        fields = small.to_dict()
        for key, value in line["spec"].items():
            fields[key] = {**fields[key], **value} if isinstance(value, dict) else value
        small = ArchSpec.from_dict(fields)
    started = time.perf_counter()
    result = recall.train_task(small, data, line["lr"], config, cuda_graph=line.get("graph", True))
    return {**line, "pattern": small.pattern, "accuracy": result["accuracy"], "at": result["steps"],
            "curve": result["curve"], "graphed": result["graphed"], "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs")
    parser.add_argument("out")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=float("inf"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    deadline = time.monotonic() + args.seconds
    with open(args.configs) as lines:
        configs = [json.loads(text) for text in lines if text.strip()]
    with open(args.out, "a") as out:
        for line in configs[args.shard :: args.of]:
            if time.monotonic() > deadline:
                break
            r = run(line)
            out.write(json.dumps(r) + "\n")
            out.flush()
            every_third = [a for _, a in r["curve"]][2::3]
            print(r["layout"], r["pattern"], f"lr {r['lr']:g}", f"acc {r['accuracy']:.3f} at {r['at']}",
                  f"{r['wall_s']} s", every_third, flush=True)


if __name__ == "__main__":
    main()
