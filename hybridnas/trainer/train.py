"""``train(spec, budget_flops, config) -> TrainResult``: one FLOP-budgeted training run.

The budget becomes tokens through the analytic cost model: C / train_flops_per_token(spec, T),
rounded to whole sequences (the last optimiser step may hold fewer), so the FLOPs spent land
within half a sequence of the budget: within 1% once the budget buys 50 sequences. Every
candidate of a study sees the same tokens in the same order for a given seed: batches are a
pure function of (seed, step).

Schedule: AdamW, linear warm-up, a stable phase at the peak rate, then a linear decay to 0
over the last ``decay_frac`` of the steps (warmup-stable-decay; Bae et al. 2025 use it).

Learning rate per candidate: with ``config.lr_grid`` (two or more multipliers of
``config.lr``), the run first trains the first ``lr_sweep_frac`` of its steps once per
multiplier, from the same initial weights on the same batches; each is scored like a rung
(a short cool-down branched off, then the validation loss) and the best is continued, so
the main run is the winner's, unchanged. The other runs' steps and every cool-down are
``extra_flops``; the chosen rate is ``TrainResult.lr``, every one tried ``lr_sweep``.

Rungs (multi-fidelity): at each fraction in ``config.rungs`` (inside the stable phase) the
run saves a checkpoint, branches off a short cool-down (``rung_cooldown_frac`` of the steps
so far, the learning rate decaying linearly to 0), measures the validation loss there, then
restores the checkpoint, so the main run continues exactly as if it had not stopped.
``rung_callback(report) -> "continue" | "stop"`` decides; ``train(..., resume_from=path)``
continues a stopped run from its rung checkpoint.

Failures are results, never exceptions: a non-finite loss, or an EMA(0.9) of the training
loss above ``diverge_factor`` x the first step's loss after warm-up, gives ``diverged`` (on a
GPU the losses are read every ``SYNC_EVERY`` steps, so the run may go a few steps past the
step it reports);
CUDA out-of-memory gives ``oom``; anything else ``error``. Each keeps what was measured.
Bad input (corpus, budget, checkpoint, process count) raises before training starts.

Data parallel: ``train(..., processes=N)`` trains the same plan on N processes (gloo on CPU,
NCCL on N GPUs; ``trainer/distributed.py``): each step's batch is split across them and the
gradients summed, so the run computes what one process computes, up to the order of the sums;
budget, rungs, checkpoints (interchangeable between process counts), resume and failures as
results are unchanged. The calling process is rank 0: it keeps the callback and writes files.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

import torch

from hybridnas.errors import UserError
from hybridnas.model import HybridLM
from hybridnas.search_space import ArchSpec, train_flops_per_token
from hybridnas.trainer.config import MAX_FLOPS, ConfigError, TrainConfig
from hybridnas.trainer.data import TokenData, load_tokens
from hybridnas.trainer.distributed import Ended, Group, check_processes, start_ranks
from hybridnas.trainer.memory import check_fits

__all__ = [
    "train",
    "Run",
    "peak_flops",
    "TrainResult",
    "RungReport",
    "Plan",
    "make_plan",
    "plan_run",
    "forward_seqs",
    "training_device",
    "BudgetError",
    "CheckpointError",
]

Status = Literal["complete", "stopped", "diverged", "oom", "error"]
RungCallback = Callable[["RungReport"], Literal["continue", "stop"]]

EMA_DECAY = 0.9
SYNC_EVERY = 16  # on a GPU, training losses are read back (a wait for the GPU) every this many steps
# dense bf16 tensor-core peaks (FLOP/s), for MFU
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


class BudgetError(UserError):
    """A FLOP budget that cannot buy one training sequence."""


class CheckpointError(UserError):
    """A checkpoint that is missing or belongs to another run."""


# ---- the plan: budget -> steps -------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    seq_len: int
    flops_per_token: float
    total_seqs: int
    batch_seqs: int
    steps: int
    warmup_steps: int
    decay_steps: int
    eval_steps: frozenset[int]
    rung_steps: tuple[int, ...]
    sweep_steps: int = 0  # steps each learning rate of the grid trains before the choice (0: no sweep)

    def seqs_at(self, step: int) -> int:
        """Sequences in optimiser step ``step`` (0-indexed): full batches, the remainder in the
        last step; a rung's cool-down branch may run past the plan, on full batches."""
        if step == self.steps - 1:
            return self.total_seqs - step * self.batch_seqs
        return self.batch_seqs

    def tokens_after(self, steps_done: int) -> int:
        return min(steps_done * self.batch_seqs, self.total_seqs) * self.seq_len

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step < self.steps - self.decay_steps:
            return 1.0
        return (self.steps - step) / self.decay_steps


def forward_seqs(plan: Plan, config: TrainConfig, processes: int = 1) -> int:
    """Sequences in one forward pass of one process: the micro-batch, or the process's whole
    share of the step (the larger share, where the step does not split evenly) without one."""
    share = -(-plan.batch_seqs // processes)
    return min(config.micro_batch or share, share)


def plan_run(spec: ArchSpec, budget_flops: float, config: TrainConfig, data: TokenData,
             device: torch.device | None, processes: int = 1) -> tuple[ArchSpec, Plan]:
    """What ``train`` settles before it builds anything: ``spec`` with the tokenizer's
    vocabulary (the tokenizer decides it) and its plan. Raises BudgetError, and FitError where
    ``device`` is given and the run cannot fit it (trainer/memory.py: each of ``processes``
    holds the whole model and optimiser and its share of the micro-batch)."""
    if spec.vocab_size != data.vocab_size:
        spec = ArchSpec.from_dict({**spec.to_dict(), "vocab_size": data.vocab_size})
    plan = make_plan(spec, budget_flops, config)
    if device is not None:
        check_fits(spec, plan.seq_len, forward_seqs(plan, config, processes), device)
    return spec, plan


def make_plan(spec: ArchSpec, budget_flops: float, config: TrainConfig) -> Plan:
    if not 0 < budget_flops <= MAX_FLOPS:  # NaN fails too
        raise BudgetError(f"budget {budget_flops:.3g} FLOPs: must be a positive number of at most {MAX_FLOPS:.0e}")
    t = config.seq_len
    fpt = train_flops_per_token(spec, t)
    total_seqs = round(budget_flops / (fpt * t))
    if total_seqs < 1:
        raise BudgetError(
            f"budget {budget_flops:.3g} FLOPs is less than one training sequence "
            f"({t} tokens x {fpt:.3g} FLOPs/token = {fpt * t:.3g})"
        )
    batch_seqs = max(1, min(total_seqs, config.batch_tokens // t))
    steps = math.ceil(total_seqs / batch_seqs)
    warmup = round(config.warmup_frac * steps)
    decay = max(1, round(config.decay_frac * steps))
    evals = frozenset(max(1, round(k * steps / config.eval_points)) for k in range(1, config.eval_points + 1)) | {steps}
    rungs = tuple(sorted({min(max(1, round(f * steps)), max(1, steps - decay)) for f in config.rungs}))
    sweep = 0
    if len(config.lr_grid) > 1:  # past warm-up, before the first rung, at least one step
        sweep = max(1, min(max(warmup + 1, round(config.lr_sweep_frac * steps)), (rungs[0] if rungs else steps) - 1))
    return Plan(t, fpt, total_seqs, batch_seqs, steps, warmup, decay, evals, rungs, sweep)


# ---- results -------------------------------------------------------------------------------


@dataclass
class RungReport:
    index: int
    fraction: float  # of the budget reached
    step: int
    tokens: int
    flops: float
    val_loss: float  # after the rung's cool-down
    train_loss: float
    checkpoint: str  # resume with train(..., resume_from=checkpoint)
    lr: float  # the peak learning rate the run trains at (chosen by the sweep, if any)


@dataclass
class TrainResult:
    status: Status
    budget_flops: float
    flops: float  # tokens x flops_per_token of the main run
    extra_flops: float  # rung cool-downs, spent beside the main run
    tokens: int
    steps: int
    val_loss: float | None  # the last validation loss measured (a rung's, if stopped there)
    val_curve: list[dict]  # [{"tokens", "val_loss"}], starting with the untrained model at 0
    train_curve: list[dict]  # [{"tokens", "loss"}] at every validation point
    rungs: list[dict]
    tokens_per_s: float | None  # of the whole run (every process)
    mfu: float | None  # against the peak of every device used; None where it is unknown (CPUs)
    wall_s: float
    failure: dict | None  # {"step", "message"} for diverged / oom / error
    flops_per_token: float
    seq_len: int
    device: str
    spec: dict
    config: dict
    checkpoint: str | None = None  # the rung checkpoint a stopped run can resume from
    model_path: str | None = None  # the trained weights (model.pt in out_dir) of a complete run
    lr: float | None = None  # the peak learning rate: config.lr, or the sweep's choice
    lr_sweep: list[dict] = field(default_factory=list)  # [{"lr", "val_loss", "failure"}] per rate tried
    processes: int = 1  # data-parallel training processes (one per GPU on CUDA)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the run -------------------------------------------------------------------------------


def training_device(config: TrainConfig) -> torch.device:
    """The device a run of ``config`` trains on; ConfigError for ``device="cuda"`` where
    PyTorch sees no CUDA GPU (every run would fail)."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': PyTorch sees no CUDA GPU on this host (use 'auto' or 'cpu')")
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


# the compile="auto" rule's figures (H100, 136M Inter 1:5, docs/benchmarks.md)
EAGER_MFU, COMPILED_MFU, COMPILE_COST_S = 0.13, 0.20, 120.0


def peak_flops(device: torch.device | str) -> float | None:
    """The dense bf16 tensor-core peak (FLOP/s) of ``device``, the denominator of MFU; None on a
    CPU or on a GPU not in ``PEAK_FLOPS``."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def _optimizer(model: HybridLM, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on vectors (norms, biases) or Mamba-2's dt, A and D."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (decay if p.dim() >= 2 and not getattr(p, "no_weight_decay", False) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda")


@dataclass
class _State:
    """What a checkpoint must carry besides weights and optimiser for an exact resume."""

    step: int = 0
    first_loss: float | None = None
    ema_loss: float | None = None
    last_loss: float | None = None
    val_curve: list[dict] = field(default_factory=list)
    train_curve: list[dict] = field(default_factory=list)
    rungs: list[dict] = field(default_factory=list)
    extra_flops: float = 0.0
    lr: float | None = None  # the peak learning rate chosen by the sweep (None: config.lr)
    lr_sweep: list[dict] = field(default_factory=list)


class _Record:
    """A run's identity and what it has measured so far, and how that becomes a ``TrainResult``.
    A :class:`Run` is one; ``train`` reports a run that failed while being built from a bare
    record (no model, nothing trained)."""

    def __init__(self, spec: ArchSpec, budget: float, config: TrainConfig, plan: Plan, group: Group) -> None:
        self.spec, self.budget, self.config, self.plan = spec, budget, config, plan
        self.group, self.device = group, group.device
        self.state = _State()
        self.train_seconds = 0.0
        self.tokens_this_call = 0
        self.out_dir = Path(config.out_dir) if config.out_dir else None
        self.model: HybridLM | None = None

    def result(self, status: Status, failure: dict | None, wall_s: float) -> TrainResult:
        s, plan = self.state, self.plan
        tokens = plan.tokens_after(s.step)
        tokens_per_s = self.tokens_this_call / self.train_seconds if self.train_seconds > 0 else None
        peak = peak_flops(self.device)
        mfu = tokens_per_s * plan.flops_per_token / (peak * self.group.size) if tokens_per_s and peak else None
        val_loss = s.val_curve[-1]["val_loss"] if s.val_curve else None
        if status == "stopped" and s.rungs:
            val_loss = s.rungs[-1]["val_loss"]
        result = TrainResult(
            status=status,
            budget_flops=self.budget,
            flops=tokens * plan.flops_per_token,
            extra_flops=s.extra_flops,
            tokens=tokens,
            steps=s.step,
            val_loss=val_loss,
            val_curve=s.val_curve,
            train_curve=s.train_curve,
            rungs=s.rungs,
            tokens_per_s=tokens_per_s,
            mfu=mfu,
            wall_s=wall_s,
            failure=failure,
            flops_per_token=plan.flops_per_token,
            seq_len=plan.seq_len,
            device=str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            spec=self.spec.to_dict(),
            config=self.config.model_dump(mode="json"),
            checkpoint=s.rungs[-1]["checkpoint"] if status == "stopped" and s.rungs else None,
            lr=self.config.lr if s.lr is None else s.lr,
            lr_sweep=s.lr_sweep,
            processes=self.group.size,
        )
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if status == "complete":  # what probes of the trained model (long context) load
                assert self.model is not None, "a complete run has a model"  # only a Run completes
                result.model_path = str(self.out_dir / "model.pt")
                torch.save({"spec": self.spec.to_dict(), "model": self.model.state_dict()}, result.model_path)
            (self.out_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        return result


class Run(_Record):
    """One training run of ``spec`` on ``budget`` FLOPs under ``plan``, complete on construction:
    the model (seeded by ``config.seed``, on the config's device, in train mode), the AdamW
    optimiser, the loss function (compiled when ``config.compile`` says so) and the validation
    sequences are built, and ``state`` is at step 0, so ``train_step`` can be called right away
    (measured speed times it so). ``loop`` runs the plan with its evaluations and rungs,
    ``load`` resumes from a rung checkpoint, and ``result`` reports what was measured. Building
    raises what it raises (CUDA out-of-memory, a model error); ``train`` makes that a result.
    ``group`` is this process's rank of a data-parallel run (default: the only one); every
    rank constructs the same Run and steps it in lockstep."""

    model: HybridLM  # built in __init__: a Run always has its model

    def __init__(self, spec: ArchSpec, budget: float, config: TrainConfig, data: TokenData, plan: Plan,
                 group: Group | None = None) -> None:
        super().__init__(spec, budget, config, plan, group or Group(0, 1, training_device(config)))
        self.data = data
        self.model = HybridLM(self.spec, seed=self.config.seed).to(self.device).train()
        self.optimizer = _optimizer(self.model, self.config, self.device)
        compiled = self.compile_pays() if self.config.compile == "auto" else self.config.compile
        self.chunk_seqs = forward_seqs(self.plan, self.config, self.group.size)
        # dynamic=False: one shape (a micro-batch); see train_step for the short last chunk
        self.loss_fn = torch.compile(self.model.losses, dynamic=False) if compiled else self.model.losses
        val = self.data.val_sequences(self.config.val_sequences, self.plan.seq_len)
        self.val_seqs = val.shape[0]  # of every rank together
        self.val = val[self.group.shard(self.val_seqs)].to(self.device)

    def compile_pays(self) -> bool:
        """``compile="auto"``: compile where the time it saves exceeds what it costs. Measured
        on an H100 (docs/benchmarks.md): the step runs at about 13% MFU eager and 20% compiled,
        and compiling a candidate costs 1-3 minutes (more with cold Triton caches), so a run
        gains only past about 4e16 FLOPs there. CPUs never compile (short trials dominate)."""
        peak = peak_flops(self.device)
        if self.device.type != "cuda" or peak is None:
            return False
        seconds_saved = self.budget / (peak * self.group.size) * (1 / EAGER_MFU - 1 / COMPILED_MFU)
        return seconds_saved > COMPILE_COST_S

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()  # fp32 on CPU

    # -- steps --

    def train_step(self, step: int, lr: float) -> torch.Tensor:
        """One optimiser step on the batch of ``step``; returns its mean training loss as a
        0-dim tensor (reading it would wait for the GPU; the loop reads in batches). Each rank
        trains its shard of the batch (maybe none), weighted by its share of the whole batch,
        and the group sums the gradients: every rank steps on the whole batch's gradient."""
        n = self.plan.seqs_at(step)
        batch = self.data.batch(self.config.seed, step, n, self.plan.seq_len)[self.group.shard(n)]
        batch = batch.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for chunk in batch.split(self.chunk_seqs) if batch.shape[0] else ():
            # a shorter chunk (the last step's remainder) runs eagerly: recompiling the loss for
            # a shape seen once took longer than ten steps on an H100
            loss_fn = self.loss_fn if chunk.shape[0] == self.chunk_seqs else self.model.losses
            with self.autocast():
                parts = loss_fn(chunk)
            (parts.total * (chunk.shape[0] / n)).backward()
            total += parts.lm.detach() * (chunk.shape[0] / n)
        total = self.group.reduce_step(self.model, total)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_moe_balance()
        return total

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        batch = self.config.micro_batch or self.plan.batch_seqs
        total = 0.0
        for chunk in self.val.split(batch) if self.val.shape[0] else ():
            with self.autocast():
                total += self.model.losses(chunk).lm.item() * chunk.shape[0]
        self.model.train()
        return self.group.sum(total) / self.val_seqs

    def record_eval(self) -> None:
        tokens = self.plan.tokens_after(self.state.step)
        self.state.val_curve.append({"tokens": tokens, "val_loss": self.evaluate()})
        if self.state.last_loss is not None:
            self.state.train_curve.append({"tokens": tokens, "loss": self.state.last_loss})

    # -- the loop --

    @property
    def peak_lr(self) -> float:
        return self.config.lr if self.state.lr is None else self.state.lr

    def loop(self, rung_callback: RungCallback | None, progress) -> tuple[Status, dict | None]:
        self.group.broadcast_weights(self.model)
        if not self.state.val_curve:
            self.record_eval()  # the untrained model, at 0 tokens
        if self.plan.sweep_steps and not self.state.lr_sweep:  # a resumed run has chosen already
            failure = self.sweep_lr(progress)
            if failure is not None:
                return "diverged", failure
        return self.advance(self.plan.steps, rung_callback, progress)

    def sweep_lr(self, progress) -> dict | None:
        """Train ``plan.sweep_steps`` steps once per multiplier of ``config.lr_grid``, each from
        the state at entry, score each by its cooled-down validation loss, and leave the run
        in the best one's state (``state.lr`` its rate, ``state.lr_sweep`` every score).
        Returns a failure only when every rate diverged."""
        plan, fpt = self.plan, self.plan.flops_per_token
        start = self._snapshot()
        best: tuple[float, tuple] | None = None
        tried, failure, extra = [], None, 0.0
        for multiplier in self.config.lr_grid:
            self._restore(start)
            self.state.lr = self.config.lr * multiplier
            _, failure = self.advance(plan.sweep_steps, None, progress)
            if failure is not None:
                tried.append({"lr": self.state.lr, "val_loss": None, "failure": failure["message"]})
                continue
            loss, cooldown_tokens = self.cooled_loss()
            extra += cooldown_tokens * fpt
            tried.append({"lr": self.state.lr, "val_loss": loss, "failure": None})
            if best is None or loss < best[0]:
                best = (loss, self._snapshot())
        # every sweep run but the one continued is spent beside the main run
        extra += (len(self.config.lr_grid) - 1) * plan.tokens_after(plan.sweep_steps) * fpt
        if best is not None:
            self._restore(best[1])
        self.state.lr_sweep, self.state.extra_flops = tried, self.state.extra_flops + extra
        if best is None:
            assert failure is not None, "a sweep with no score has failures"
            return {"step": failure["step"], "message": f"every learning rate of lr_grid diverged; last: "
                                                        f"{failure['message']}"}
        return None

    def _snapshot(self) -> tuple:
        return (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                copy.deepcopy(self.state))

    def _restore(self, snapshot: tuple) -> None:
        model, optimizer, state = snapshot
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)
        self.state = copy.deepcopy(state)

    def advance(self, until: int, rung_callback: RungCallback | None, progress) -> tuple[Status, dict | None]:
        """Train from ``state.step`` to step ``until``, with the plan's evaluations and rungs."""
        plan, state = self.plan, self.state
        pending: list[tuple[int, torch.Tensor]] = []
        while state.step < until:
            started = time.perf_counter()
            loss = self.train_step(state.step, self.peak_lr * plan.lr_factor(state.step))
            self.tokens_this_call += plan.seqs_at(state.step) * plan.seq_len
            state.step += 1
            pending.append((state.step, loss))
            at_boundary = state.step in plan.eval_steps or state.step in plan.rung_steps or state.step == until
            failure = None
            if at_boundary or len(pending) >= SYNC_EVERY or self.device.type == "cpu":
                failure = self.check_losses(pending, progress)  # reading the losses waits for the GPU
                pending = []
            self.train_seconds += time.perf_counter() - started
            if failure is not None:
                return "diverged", failure
            if state.step in plan.eval_steps:
                self.record_eval()
            if state.step in plan.rung_steps:
                if self.rung(plan.rung_steps.index(state.step), rung_callback) == "stop":
                    return "stopped", None
        return "complete", None

    def check_losses(self, pending: list[tuple[int, torch.Tensor]], progress) -> dict | None:
        """Read the pending losses back and apply the divergence rule step by step."""
        state, factor = self.state, self.config.diverge_factor
        values = torch.stack([loss for _, loss in pending]).tolist()
        for (step, _), loss in zip(pending, values, strict=True):
            state.last_loss = loss
            progress(step, loss)
            if not math.isfinite(loss):
                return {"step": step, "message": f"non-finite training loss ({loss})"}
            state.first_loss = loss if state.first_loss is None else state.first_loss
            state.ema_loss = loss if state.ema_loss is None else EMA_DECAY * state.ema_loss + (1 - EMA_DECAY) * loss
            if step > self.plan.warmup_steps and state.ema_loss > factor * state.first_loss:
                return {
                    "step": step,
                    "message": f"training loss EMA {state.ema_loss:.3f} exceeds {factor} x "
                    f"the first loss {state.first_loss:.3f} after warm-up",
                }
        return None

    def cooled_loss(self) -> tuple[float, int]:
        """(validation loss, tokens trained) of a cool-down branched off here: the learning rate
        decaying linearly to 0 over ``rung_cooldown_frac`` of the steps so far, on the next
        batches. The model and optimiser are restored after, so the run goes on unchanged."""
        step = self.state.step
        saved_model = copy.deepcopy(self.model.state_dict())
        saved_optimizer = copy.deepcopy(self.optimizer.state_dict())
        cooldown = max(1, round(self.config.rung_cooldown_frac * step))
        peak = self.peak_lr * self.plan.lr_factor(step)
        for i in range(cooldown):
            self.train_step(step + i, peak * (cooldown - i) / cooldown)
        val_loss = self.evaluate()
        self.model.load_state_dict(saved_model)
        self.optimizer.load_state_dict(saved_optimizer)
        return val_loss, sum(self.plan.seqs_at(step + i) for i in range(cooldown)) * self.plan.seq_len

    def rung(self, index: int, callback: RungCallback | None) -> str:
        """Checkpoint, cool down on a branch, evaluate, restore; ask the callback. Of a
        data-parallel run, rank 0 saves and asks, and every rank follows its answer."""
        step = self.state.step
        checkpoint = self._checkpoint_dir() / f"rung-{index}.pt" if self.group.main else None
        val_loss, cooldown_tokens = self.cooled_loss()
        tokens = self.plan.tokens_after(step)
        # the loop reads the pending losses back at every rung boundary, before calling rung
        assert self.state.last_loss is not None, "rung before any training loss was read"
        self.state.extra_flops += cooldown_tokens * self.plan.flops_per_token
        report = RungReport(
            index=index,
            fraction=tokens * self.plan.flops_per_token / self.budget,
            step=step,
            tokens=tokens,
            flops=tokens * self.plan.flops_per_token,
            val_loss=val_loss,
            train_loss=self.state.last_loss,  # read back at the rung boundary
            checkpoint=str(checkpoint or ""),  # rank 0 saves it
            lr=self.peak_lr,
        )
        self.state.rungs.append(asdict(report))
        if checkpoint is None:  # not rank 0
            return self.group.decide("continue")  # rank 0's answer
        self.save(checkpoint)  # the restored state plus this report: what resuming continues from
        decision = callback(report) if callback is not None else "continue"
        if decision not in ("continue", "stop"):
            raise ValueError(f"rung callback returned {decision!r}, expected 'continue' or 'stop'")
        return self.group.decide(decision)

    # -- checkpoints --

    def _checkpoint_dir(self) -> Path:
        if self.out_dir is None:  # rungs need somewhere to put checkpoints
            self.out_dir = Path(tempfile.mkdtemp(prefix="hybridnas-run-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir

    def _identity(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "budget_flops": self.budget,
            "config": self.config.training_fields(),
            "corpus": self.data.meta["corpus"],
        }

    def save(self, path: Path) -> Path:
        payload = {
            "format": 1,
            "identity": self._identity(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": asdict(self.state),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    def load(self, path: str | Path) -> None:
        try:
            # tensors and plain data only: a checkpoint in a shared runs directory cannot run code here
            payload = torch.load(path, map_location=self.device, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path}: no such file") from None
        except Exception as exc:
            raise CheckpointError(f"checkpoint {path}: unreadable ({type(exc).__name__})") from None
        mine, theirs = self._identity(), payload.get("identity", {})
        for key in mine:
            if mine[key] != theirs.get(key):
                raise CheckpointError(f"checkpoint {path} belongs to another run: its {key} differs")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = _State(**payload["state"])


def _progress(config: TrainConfig, plan: Plan, spec: ArchSpec):
    """Progress on stderr: a rich bar when interactive; in a batch log (a cluster job, a Ray
    worker) a plain line at most every 30 s. Returns (update, close)."""
    if not config.progress:
        return (lambda step, loss: None), (lambda: None)
    if not sys.stderr.isatty():
        return _progress_lines(plan, spec, every_s=30.0), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"train {spec.short_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("train", total=plan.steps, loss="-")
    bar.start()
    return (lambda step, loss: bar.update(task, completed=step, loss=f"{loss:.3f}")), bar.stop


def _progress_lines(plan: Plan, spec: ArchSpec, every_s: float):
    started = time.perf_counter()
    last = [started]

    def update(step: int, loss: float) -> None:  # step: optimiser steps done
        now = time.perf_counter()
        if now - last[0] < every_s and step < plan.steps:
            return
        last[0] = now
        print(f"train {spec.short_id}: step {step}/{plan.steps}, loss {loss:.3f}, {now - started:.0f} s",
              file=sys.stderr, flush=True)

    return update


def failure_of(exc: Exception, step: int | None) -> tuple[Status, dict]:
    """A failed run's (status, failure) from what it raised at ``step``: ``oom`` for CUDA
    out-of-memory, else ``error`` with the exception and where it was raised."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom", {"step": step, "message": str(exc).splitlines()[0]}
    where = traceback.extract_tb(exc.__traceback__)[-1]
    message = f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
    return "error", {"step": step, "message": message}


def train(
    spec: ArchSpec,
    budget_flops: float,
    config: TrainConfig | None = None,
    *,
    rung_callback: RungCallback | None = None,
    resume_from: str | Path | None = None,
    processes: int = 1,
) -> TrainResult:
    """Train ``spec`` for ``budget_flops`` training FLOPs, on ``processes`` data-parallel
    processes (this one is rank 0: it calls ``rung_callback`` and writes the files). Never
    raises for a failed run, another rank's included; raises DataError / BudgetError / FitError
    / CheckpointError / ConfigError (a bad ``processes``) for bad input before training."""
    started = time.perf_counter()
    config = config or TrainConfig()
    device = training_device(config)
    check_processes(processes, device)
    data = load_tokens(config.corpus, config.tokenizer, config.vocab_size, config.val_fraction, config.cache_dir)
    data.check_trainable(config.seq_len)
    spec, plan = plan_run(spec, budget_flops, config, data, device, processes)
    group = Group(0, 1, device)
    record = _Record(spec, budget_flops, config, plan, group)  # what is reported if building the run fails
    update, close = _progress(config, plan, spec)
    status: Status = "error"
    failure: dict | None = None
    ended: Ended = "abandoned"  # until the loop returns or fails: an exception is passing through
    try:
        group = start_ranks(processes, device, {"spec": spec.to_dict(), "budget": budget_flops,
                                                "config": config.model_dump(mode="json"),
                                                "resume_from": None if resume_from is None else str(resume_from)})
        record.group = group
        group.connect()
        run = record = Run(spec, budget_flops, config, data, plan, group)
        if resume_from is not None:
            run.load(resume_from)
        status, failure = run.loop(rung_callback, update)
        ended = "finished"
    except CheckpointError:
        raise
    except Exception as exc:  # a failed candidate is a result, not a crash of the study
        status, failure = failure_of(exc, record.state.step)
        ended = "failed"
    finally:
        close()
        # the other ranks end with this one, however it ends: Tune stops a trial by raising
        # SystemExit inside the callback's report
        group.stop(ended)
    elsewhere = group.failure_elsewhere()
    if elsewhere is not None:  # another rank failed first: that broke this one's collective
        status, failure = cast(Status, elsewhere[0]), {**elsewhere[1], "step": record.state.step}
    return record.result(status, failure, time.perf_counter() - started)


def train_rank(job: dict, group: Group) -> tuple[Status, dict | None]:
    """Rank ``group.rank`` > 0 of a run ``train`` started: the same run from ``job`` (JSON: spec,
    budget, config, resume_from), stepped in lockstep with rank 0; returns how it ended."""
    config = TrainConfig(**job["config"])
    data = load_tokens(config.corpus, config.tokenizer, config.vocab_size, config.val_fraction, config.cache_dir)
    spec, plan = plan_run(ArchSpec.from_dict(job["spec"]), job["budget"], config, data, None)
    run = None
    try:
        run = Run(spec, job["budget"], config, data, plan, group)
        if job["resume_from"] is not None:
            run.load(job["resume_from"])
        return run.loop(None, lambda step, loss: None)
    except Exception as exc:
        return failure_of(exc, run.state.step if run is not None else None)
