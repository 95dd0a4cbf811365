"""Recall proxies: a candidate's layout, shrunk, trained briefly on each synthetic task.

At small scale pure Mamba-2 can beat hybrids on loss while failing at recall, which is what
attention is kept for (Bae et al. 2025); a search that sees only loss picks the wrong
frontier. So a candidate is also scored on MQAR and the MAD tasks
(:mod:`hybridnas.proxies.synthetic`), as the Zoology and MAD papers do:

- the candidate's own pattern at reduced width (:func:`reduced_spec`: d_model, heads and
  state scaled down; merge, window, MoE and fusion choices kept), with the task's vocabulary;
  on demand at reduced depth too (:func:`recall_pattern`: the mixers only, each run of Mamba-2
  or H layers cut short, attention kept), since a 26-layer candidate costs seconds per CPU
  step even at width 64;
- per task, a short training run (``steps`` AdamW steps of ``batch_size`` sequences, warm-up
  then cosine decay, loss at answer positions only) for each learning rate of a small grid,
  since short-training rankings flip with the learning rate; each run keeps its best
  held-out accuracy over its evaluations, and the task keeps its best run;
- the summary score is the mean accuracy over the tasks.

The cost is bounded: tasks x learning rates x steps x batch x sequence, fixed by
:class:`RecallConfig` whatever the candidate. Each task and learning rate runs as its own Ray
task when asked (``parallel=True``; one CPU each, and a share of the GPUs where there are
any), else one after another, a task's remaining rates skipped once one has learned it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from hybridnas.proxies import synthetic
from hybridnas.proxies.synthetic import TaskSettingsError
from hybridnas.search_space import ArchSpec
from hybridnas.search_space.pattern import FFN_SYMBOLS, MIXER_SYMBOLS

__all__ = [
    "RecallConfig", "RecallReport", "RECALL_TASKS", "gpu_share", "parallel_pays", "reduced_spec", "score_recall",
    "train_task",
]

RECALL_TASKS = synthetic.TASK_NAMES
# the overrides --seq-len / --kv-pairs apply to: the tasks that recall keys in context
RECALL_FAMILY = ("mqar", "in_context_recall", "fuzzy_recall", "noisy_recall")
# The proxy's choices over the published settings, and the tasks trained on fresh rows (see
# RecallConfig): MQAR on 64 tokens, since at Zoology's 8,192 nothing learns in a proxy's budget,
# with 8 pairs, where the hybrids learn sooner and a 4-wide state in fewer seeds than at 4.
PROXY_TASK_SETTINGS: dict[str, dict[str, int]] = {"mqar": {"vocab_size": 64, "num_kv_pairs": 8}}
FRESH_ROWS = frozenset({"mqar"})
MAX_FRESH_ROWS = 200_000  # beyond this, rows repeat (200,000 x 64 tokens: 200 MB as int64 inputs + targets)


@dataclass(frozen=True)
class RecallConfig:
    """How a candidate is scored. The defaults are chosen from the learning-curve sweeps in
    docs/benchmarks.md ("Seeds and rates decide when MQAR is learned", "Eight pairs,
    measured"), one H200, 3 seeds:

    - MQAR only, on Zoology's smallest sequence (64) with 8 pairs, on a 64-token vocabulary
      (``PROXY_TASK_SETTINGS``): with Zoology's 8,192 tokens nothing learns in a proxy's
      budget. At Zoology's 4 pairs the inter hybrid left its plateau as late as step 5,000
      and a 4-wide state beat 0.5 in two seeds of three; at 8 both hybrids learn by step
      1,750 and the state in one seed of three; at 10 or 12 the state learns as often, and at
      12 ``**`` fails a seed ("Eight pairs, measured"). The MAD tasks stay available
      (``tasks``), each at MAD's published settings.
    - width 64 (Zoology's smallest), heads of 32: four heads of 16 kept ``**`` on the plateau
      for thousands of steps, one head of 64 leaves an intra block's attention branch empty;
    - the mixers only (``ffn = False``), each run of Mamba-2 layers cut to one
      (``max_run = 1``): ``M*M*M`` for Bae's inter 1:5, ``MHMHM`` for its intra 1:5, ``**``
      for ``*-*-``, so a candidate costs a few layers, whatever its depth;
    - 5,000 steps of 32 fresh rows at lr 2e-3 (then 1e-3), on a cosine over ``steps``: a
      layout with a Mamba-2 layer before its attention first sits on a plateau (its state
      recalls the latest pair) and leaves it on a high rate, so a shorter budget, whose rate
      decays sooner, is not the start of this one (2,000 steps left the inter hybrid at
      0.15-0.65 where this budget had it at 0.95 by step 1,750). The grid's top rate decides
      a race: at 3e-3 a lone 4-wide state left the plateau in 2 seeds of 5 (0.92, 0.89) and the
      inter hybrid missed one (0.17); at 1e-3 alone the state never did but the hybrids missed
      3 runs of 10; at 2e-3 every hybrid and ``**`` learned in 5 seeds of 5 and the state in
      one ("Two rates, five seeds"). At lr 1e-2 a lone state learns (0.53-0.66 at 4 pairs). A
      task counts as learned at 95% (``stop_at``): ``**`` with heads of 32 levels off at
      0.96-0.99, so a higher mark would spend every rate's full budget on it.

    At exactly these defaults (one H200, seeds 0-4; docs/benchmarks.md): ``**`` 0.955-0.996,
    ``MHMHM`` 0.952-0.985, ``M*M*M`` 0.951-0.967, a lone 4-wide state (pure Mamba-2's proxy)
    0.131-0.274 in seeds 0-3 and 0.741 in seed 4, which leaves the plateau at step 4,500."""

    tasks: tuple[str, ...] = ("mqar",)
    d_model: int = 64  # the reduced width (MAD: 128; Zoology sweeps 64-512)
    head_dim: int = 32  # attention and SSM heads of this width: d_model / head_dim heads
    d_state: int | None = None  # SSM state; None: the candidate's, scaled with the width
    ffn: bool = False  # keep the FFN/MoE layers
    max_run: int | None = 1  # longest run of M (or of H) layers kept; None: the full depth
    lrs: tuple[float, ...] = (2e-3, 1e-3)  # tried in this order; Zoology and MAD sweep a log grid
    weight_decay: float = 0.1  # AdamW's, as Zoology's
    steps: int = 5000
    batch_size: int = 32
    eval_every: int = 250
    stop_at: float = 0.95  # a run stops at this held-out accuracy: the task is learned
    seq_len: int | None = None  # overrides for the recall family (mqar, *_recall)
    kv_pairs: int | None = None
    task_overrides: dict[str, dict] = field(default_factory=dict)  # {"mqar": {"vocab_size": 256}}
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in RECALL_TASKS]
        if unknown or not self.tasks:
            given = ", ".join(unknown) or "none given"
            raise TaskSettingsError(f"tasks: {given}: expected some of {', '.join(RECALL_TASKS)}")
        for name, value in (("d_model", self.d_model), ("head_dim", self.head_dim), ("steps", self.steps),
                            ("batch_size", self.batch_size), ("eval_every", self.eval_every)):
            if value < 1:
                raise TaskSettingsError(f"{name}={value}: must be at least 1")
        for name, value, bound in (("d_model", self.d_model, 4096), ("steps", self.steps, 1_000_000),
                                   ("batch_size", self.batch_size, 65_536)):
            if value > bound:  # a proxy, shrunk on purpose: past these it is a full training run
                raise TaskSettingsError(f"{name}={value}: must be at most {bound}")
        if self.d_model % self.head_dim:
            raise TaskSettingsError(f"d_model={self.d_model}: must be a multiple of head_dim={self.head_dim}")
        if not self.lrs or not all(0 < lr <= 1 for lr in self.lrs):  # NaN fails the comparison too
            raise TaskSettingsError(f"lrs={list(self.lrs)}: need one or more learning rates, each in (0, 1]")
        if self.max_run is not None and self.max_run < 1:
            raise TaskSettingsError(f"max_run={self.max_run}: must be at least 1 (or None for the full depth)")
        if not 0 <= self.weight_decay < 1:
            raise TaskSettingsError(f"weight_decay={self.weight_decay}: must be in [0, 1)")
        if not 0 < self.stop_at <= 1:
            raise TaskSettingsError(f"stop_at={self.stop_at}: must be in (0, 1]")
        if self.d_state is not None and self.d_state < 1:
            raise TaskSettingsError(f"d_state={self.d_state}: must be at least 1")

    def settings(self, task: str) -> synthetic.TaskSettings:
        """The task's settings: published defaults, the proxy's own (``PROXY_TASK_SETTINGS``),
        then --seq-len / --kv-pairs (recall family), then ``task_overrides``. ValueError naming
        the setting if infeasible."""
        s = synthetic.default_settings(task)
        changes: dict = dict(PROXY_TASK_SETTINGS.get(task, {}))
        if task in FRESH_ROWS:  # every row a run trains on is new, as in the sweeps behind the defaults
            changes["n_train"] = min(self.steps * self.batch_size, MAX_FRESH_ROWS)
        if task in RECALL_FAMILY and self.seq_len is not None:
            changes["seq_len"] = self.seq_len
        if task == "mqar" and self.kv_pairs is not None:
            changes["num_kv_pairs"] = self.kv_pairs
        changes.update(self.task_overrides.get(task, {}))
        return synthetic.with_overrides(s, **changes) if changes else s


@dataclass
class RecallReport:
    """Per-task accuracy (best over the learning-rate grid), the mean as the score, and
    every run's figures."""

    tasks: dict[str, float]
    score: float
    runs: list[dict]  # [{"task", "lr", "accuracy", "loss", "steps", "curve": [[step, accuracy], ...]}]
    spec: dict  # the reduced spec of the first task (its vocabulary differs per task)
    wall_s: float

    def to_dict(self) -> dict:
        return asdict(self)


_CUT_KINDS = frozenset("MH")  # the mixers whose runs max_run cuts: those with an SSM scan


def recall_pattern(pattern: str, *, ffn: bool, max_run: int | None) -> str:
    """The layout the proxy trains: ``pattern`` without its FFN/MoE layers unless ``ffn``,
    and each run of more than ``max_run`` consecutive SSM-bearing mixers of one kind (``M``
    or ``H``) cut to ``max_run`` (a run's FFNs go with its mixers). Which kinds meet, and
    where attention sits (first, spread, last), are kept; ``recall_pattern(
    "M-M-M-M-*-M-M-M-M-*-M-M-M-", ffn=False, max_run=1)`` is ``"M*M*M"``.

    Runs of attention (``*``, ``W``) are never cut: two stacked attention layers can form
    the induction circuit that MQAR needs and one cannot, so cutting them would change the
    recall the proxy measures, while at the proxy's sequence lengths an attention layer
    costs a fraction of a Mamba-2 layer (the cost that ``max_run`` bounds)."""
    ffns = "".join(sorted(FFN_SYMBOLS))
    lead = pattern[: len(pattern) - len(pattern.lstrip(ffns))]  # FFNs before the first mixer
    # each layer: a mixer and the FFNs that follow it
    layers = re.findall(f"[{re.escape(''.join(sorted(MIXER_SYMBOLS)))}][{re.escape(ffns)}]*", pattern)
    kept, run = [lead] if ffn else [], 0
    for i, layer in enumerate(layers):
        run = run + 1 if i and layer[0] == layers[i - 1][0] else 1
        if max_run is None or run <= max_run or layer[0] not in _CUT_KINDS:
            kept.append(layer if ffn else layer[0])
    return "".join(kept)


def reduced_spec(spec: ArchSpec, config: RecallConfig, vocab_size: int) -> ArchSpec:
    """``spec``'s pattern at ``config.d_model``: heads of ``config.head_dim`` (GQA groups
    derived as usual), the SSM state ``config.d_state`` or the candidate's scaled with the
    width, and every structural choice (merge, window, RoPE, MoE routing, expand) kept."""
    d_state = config.d_state or max(4, round(spec.ssm.d_state * config.d_model / spec.d_model))
    fields = {
        "d_model": config.d_model,
        "vocab_size": vocab_size,
        "tie_embeddings": spec.tie_embeddings,
        "attn": {"head_dim": config.head_dim, "window": spec.attn.window, "rope": spec.attn.rope,
                 "rope_theta": spec.attn.rope_theta},
        "ssm": {"d_state": d_state, "expand": spec.ssm.expand, "head_dim": config.head_dim,
                "n_groups": spec.ssm.n_groups, "conv_kernel": spec.ssm.conv_kernel, "chunk_size": 64},
        "hybrid": spec.hybrid.model_dump(),
        "moe": {k: v for k, v in spec.moe.model_dump().items() if k != "d_expert"},
    }
    return ArchSpec.from_pattern(recall_pattern(spec.pattern, ffn=config.ffn, max_run=config.max_run), **fields)


def _device(config: RecallConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def train_task(spec: ArchSpec, data: synthetic.TaskData, lr: float, config: RecallConfig, *,
               cuda_graph: bool = True) -> dict:
    """Train a fresh model of ``spec`` on ``data`` at ``lr``; {"accuracy": best held-out
    accuracy over the evaluations, "loss": its answer loss, "steps": the step it was reached at,
    "curve": [[step, accuracy], ...] at every evaluation, "graphed": whether the steps ran as
    a CUDA graph}. Stops early at ``config.stop_at``.

    On a GPU these steps are launch-bound (a d_model-64 step is a few hundred tiny kernels),
    so after a few eager warm-up steps the whole step (forward, backward, clipping, AdamW) is
    captured once as a CUDA graph and replayed; the rows each step trains on are the same
    either way. Layouts with MoE layers stay eager (their routing has data-dependent shapes),
    as does a step the capture refuses (``"graphed": false``)."""
    from hybridnas.model import HybridLM

    device = _device(config)
    model = HybridLM(spec, seed=config.seed).to(device)
    graphed = cuda_graph and device.type == "cuda" and not model.has_moe
    # a capturable AdamW keeps its step count on the GPU and takes the rate as a GPU tensor,
    # so the schedule below updates it in place and the replayed graph sees each new value
    rate = torch.tensor(lr, device=device) if graphed else lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=rate, betas=(0.9, 0.98), weight_decay=config.weight_decay,
                                  capturable=graphed)
    warmup = max(1, config.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, step / config.steps))))
    generator = torch.Generator().manual_seed(config.seed)
    all_rows = torch.randint(0, len(data.train_inputs), (config.steps, config.batch_size), generator=generator)
    inputs, targets, all_rows = data.train_inputs.to(device), data.train_targets.to(device), all_rows.to(device)
    x, y = inputs[all_rows[0]], targets[all_rows[0]]  # the step's batch, refilled in place

    def step() -> None:
        synthetic.answer_loss(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    graph = None
    best: dict = {"accuracy": 0.0, "loss": math.inf, "steps": 0, "curve": [], "graphed": False}
    for i in range(config.steps):
        model.train()
        x.copy_(inputs[all_rows[i]])
        y.copy_(targets[all_rows[i]])
        if graphed and i == _GRAPH_WARMUP:
            graph = _capture(step, optimizer)
            graphed = best["graphed"] = graph is not None
        if graph is not None:
            graph.replay()
        else:
            _on_side_stream(step) if graphed else step()
            optimizer.zero_grad(set_to_none=True)
        schedule.step()
        model.update_moe_balance()
        done = i + 1
        if done % config.eval_every == 0 or done == config.steps:
            accuracy, test_loss = _evaluate(model, data, device)
            best["curve"].append([done, round(accuracy, 4)])
            if accuracy > best["accuracy"] or best["steps"] == 0:
                best.update(accuracy=accuracy, loss=test_loss, steps=done)
            if accuracy >= config.stop_at:
                break
    return best


_GRAPH_WARMUP = 3  # eager steps before the capture: Triton autotuning and cuBLAS workspaces settle


def _on_side_stream(step: Callable[[], None]) -> None:
    """Run ``step`` on a side stream, as CUDA-graph warm-up must (PyTorch's "whole network
    capture" recipe), and make the default stream wait for it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)


def _capture(step: Callable[[], None], optimizer: torch.optim.Optimizer) -> torch.cuda.CUDAGraph | None:
    """``step`` captured as a CUDA graph (not run), or None where capture fails. Gradients
    are set to None first, so the captured backward allocates them in the graph's pool and
    every replay overwrites rather than accumulates them."""
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError:  # an op that syncs with the host or allocates by data: stay eager
        torch.cuda.synchronize()
        return None
    return graph


@torch.no_grad()
def _evaluate(model, data: synthetic.TaskData, device: torch.device, chunk: int = 256) -> tuple[float, float]:
    """(accuracy, loss) over every answer position of the held-out test set."""
    model.eval()
    correct, total = 0.0, 0
    loss_sum = 0.0
    for start in range(0, len(data.test_inputs), chunk):
        targets = data.test_targets[start : start + chunk].to(device)
        logits = model(data.test_inputs[start : start + chunk].to(device))
        answers = targets != synthetic.IGNORE
        n = int(answers.sum())
        if n == 0:
            continue
        loss, accuracy = synthetic.answer_metrics(logits, targets)
        correct += accuracy * n
        loss_sum += float(loss) * n
        total += n
    return (correct / total, loss_sum / total) if total else (0.0, math.inf)


def _task_runs(spec_dict: dict, task: str, config: RecallConfig, lrs: tuple[float, ...],
               one_thread: bool = False) -> list[dict]:
    """The runs of ``lrs`` on one task, in order (one Ray task per rate when parallel). Once
    a run reaches ``config.stop_at`` the task is learned and the remaining rates are skipped:
    none could rank it higher, and the hybrids that learn are the expensive layouts."""
    if one_thread:  # a Ray task holds one CPU: more threads would fight the other tasks
        torch.set_num_threads(1)
    spec = ArchSpec.from_dict(spec_dict)
    settings = config.settings(task)
    data = synthetic.make_task(settings, seed=config.seed)
    small = reduced_spec(spec, config, settings.vocab_size)
    runs: list[dict] = []
    for lr in lrs:
        runs.append({"task": task, "lr": lr, **train_task(small, data, lr, config)})
        if runs[-1]["accuracy"] >= config.stop_at:
            break
    return runs


def gpu_share(gpus: float, tasks: int) -> float:
    """The GPU fraction each of ``tasks`` Ray tasks asks for, so that all run at once: the
    shrunk models are tiny and their steps launch-bound, so a whole GPU per task would run
    them in turn. Rounded down to Ray's 4 decimals (7 x 0.1429 would not fit on one GPU)."""
    return min(1.0, math.floor(gpus / tasks * 1e4) / 1e4) if gpus else 0


def parallel_pays(config: RecallConfig) -> bool:
    """Whether ``score_recall(parallel=None)`` sends the runs to Ray tasks at once (on a GPU)
    or trains them one after another (on a CPU). A GPU time-slices the tiny launch-bound
    steps of several runs at little cost each; a CPU's cores are what a run is bound by, so
    two runs at once each take one core and both rates run to the end, while in sequence a
    run takes every core and the second rate is skipped once the first has learned the task
    (bae-intra-1:5 on 2 cores: 18 min at once, 6 min in sequence; docs/benchmarks.md)."""
    return _device(config).type == "cuda"


def score_recall(spec: ArchSpec, config: RecallConfig | None = None, *,
                 parallel: bool | None = False) -> RecallReport:
    """Score ``spec`` on ``config.tasks``. ``parallel``: one Ray task per task and learning
    rate (starts a local Ray if none is running), so every rate of the grid runs; in
    sequence a task's remaining rates are skipped once one has learned it; ``None``: as
    :func:`parallel_pays` chooses for the device. A study's worker scores in sequence."""
    config = config or RecallConfig()
    if parallel is None:
        parallel = parallel_pays(config)
    started = time.perf_counter()
    # bad settings and unbuildable layouts fail here, before any training
    shrunk = [reduced_spec(spec, config, config.settings(task).vocab_size) for task in config.tasks]
    if parallel:
        import ray

        from hybridnas.cluster import ensure_ray

        ensure_ray()
        gpu = gpu_share(ray.cluster_resources().get("GPU", 0), len(config.tasks) * len(config.lrs))
        job = ray.remote(num_cpus=1, num_gpus=gpu)(_task_runs)
        batches = ray.get([job.remote(spec.to_dict(), t, config, (lr,), not gpu)
                           for t in config.tasks for lr in config.lrs])
        runs = [r for batch in batches for r in batch]
    else:
        runs = [r for t in config.tasks for r in _task_runs(spec.to_dict(), t, config, config.lrs)]
    tasks = {t: max(r["accuracy"] for r in runs if r["task"] == t) for t in config.tasks}
    return RecallReport(tasks=tasks, score=sum(tasks.values()) / len(tasks), runs=runs, spec=shrunk[0].to_dict(),
                        wall_s=time.perf_counter() - started)
