"""What one recall-proxy training step costs, and what the ways of making it cheaper buy.

The recall proxy trains tiny models (d_model 64) for thousands of steps, once per rate of its
learning-rate grid. On a GPU such steps are launch-bound; on a CPU they are compute-bound.
For the shrunk layout of each ``--layouts`` entry this prints, in ms per step of the whole
grid (``--grid`` models, forward + backward + AdamW):

- ``eager``: the grid's models one after another (what ``score_recall`` does today);
- ``vmap``: the grid as one batched model (``torch.func.stack_module_state`` + ``vmap`` of
  ``grad``; one AdamW over the stacked parameters), with the largest gradient difference
  from the eager models as a check that it computes the same thing;
- ``compile``: ``torch.compile`` of one model's forward + backward, times the grid, and
  the seconds the first step took (the compile);
- ``graphs`` (CUDA only): the same with ``mode="reduce-overhead"`` (CUDA graphs).

    python benchmarks/recall_step.py [--layouts bae-intra-1:5,bae-inter-1:5,*-*-] [--grid 3] [--batch 32]
        [--seq-len 64] [--head-dim 32] [--max-run 2] [--no-compile]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch
from torch.func import functional_call, grad, stack_module_state, vmap

from hybridnas.model import HybridLM
from hybridnas.proxies import recall, synthetic
from hybridnas.search_space.load import load_spec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ms_per_step(step, device: torch.device, repeat: int) -> float:
    step()
    step()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        step()
    sync(device)
    return 1000 * (time.perf_counter() - started) / repeat


def eager(models, x, y, args, device) -> str:
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]

    def step() -> None:
        for model, optimizer in zip(models, optimizers, strict=True):
            synthetic.answer_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return f"{ms_per_step(step, device, args.repeat):.1f}"


def vmapped(models, x, y, args, device) -> str:
    params, buffers = stack_module_state(models)  # fresh copies: [grid, ...] per tensor
    skeleton = copy.deepcopy(models[0]).to("meta")
    grads_of = vmap(grad(lambda p, b: synthetic.answer_loss(functional_call(skeleton, (p, b), (x,)), y)))
    stacked = torch.optim.AdamW(list(params.values()), lr=1e-3)
    batched = grads_of(params, buffers)
    for model in models:  # the check: the same gradients as each model on its own
        model.zero_grad(set_to_none=True)
        synthetic.answer_loss(model(x), y).backward()
    with torch.no_grad():
        gap = max(float((batched[name][i] - dict(m.named_parameters())[name].grad).abs().max())
                  for i, m in enumerate(models) for name in batched)

    def step() -> None:
        for name, g in grads_of(params, buffers).items():
            params[name].grad = g
        stacked.step()

    return f"{ms_per_step(step, device, args.repeat):.1f} (max |grad diff| {gap:.1e})"


def compiled(models, x, y, args, device, mode: str | None = None) -> str:
    model = copy.deepcopy(models[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model, mode=mode)

    def step() -> None:
        synthetic.answer_loss(forward(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - started
    return f"{args.grid * ms_per_step(step, device, args.repeat):.1f} (first step {first:.0f} s)"


def options(args, device: torch.device) -> dict:
    """label -> how to measure it: (models, x, y, args, device) -> a table cell."""
    chosen = {"eager": eager, "vmap": vmapped}
    if not args.no_compile:
        chosen["compile"] = compiled
        if device.type == "cuda":
            chosen["graphs"] = lambda *a: compiled(*a, mode="reduce-overhead")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", default="bae-intra-1:5,bae-inter-1:5,*-*-")
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--max-run", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; grid {args.grid}, "
          f"batch {args.batch} x {args.seq_len}, MQAR V 64, d_model 64, heads of {args.head_dim}, "
          f"no FFNs, max_run {args.max_run}; ms per step of the whole grid")
    config = recall.RecallConfig(head_dim=args.head_dim, ffn=False, max_run=args.max_run, d_state=4)
    settings = synthetic.with_overrides(synthetic.default_settings("mqar"), vocab_size=64, seq_len=args.seq_len,
                                        n_train=args.batch, n_test=8)
    data = synthetic.make_task(settings)
    for layout in args.layouts.split(","):
        spec = recall.reduced_spec(load_spec(layout), config, settings.vocab_size)
        x, y = (t[: args.batch].to(device) for t in (data.train_inputs, data.train_targets))
        cells = {}
        for label, measure in options(args, device).items():
            models = [HybridLM(spec, seed=i).to(device) for i in range(args.grid)]
            try:
                cells[label] = measure(models, x, y, args, device)
            except RuntimeError as exc:  # e.g. a fast kernel's autograd.Function that vmap cannot enter
                cells[label] = "fails: " + str(exc).splitlines()[0][:160]
        print(f"{layout:14s} {spec.pattern:8s} " + "  ".join(f"{k} {v}" for k, v in cells.items()), flush=True)


if __name__ == "__main__":
    main()
