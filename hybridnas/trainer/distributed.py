"""Data-parallel training: one run on ``processes`` processes through ``torch.distributed``.

The calling process is rank 0: it keeps the rung callback (in a study that is ``tune.report``,
which must run in the Tune trial's own process), writes every file and returns the result.
:func:`start_ranks` starts ranks 1..N-1 as child processes of it (``python -c`` running
:func:`rank_main`), and :meth:`Group.connect` joins them in a process group: gloo on CPU, NCCL
on CUDA with rank i on ``cuda:i`` (the trial's visible GPUs), rendezvous through a TCP store
that rank 0 opens on a free loopback port.

Every rank runs the same plan in lockstep (``train.py`` calls the hooks of :class:`Group`):

- each step's global batch, ``data.batch(seed, step, n, T)`` (a pure function of seed and
  step), is cut into contiguous shards, sizes differing by at most one (a rank may get none in
  a small last step); each rank scales its loss by its share of the global batch and the
  gradients are SUM-reduced (:meth:`Group.reduce_step`), so every rank holds exactly the
  full-batch gradient and takes the same optimiser step; the reduced training loss is the
  global mean, so the divergence rule decides the same everywhere;
- validation is sharded the same way and summed (:meth:`Group.sum`);
- at a rung rank 0 saves the checkpoint and asks the callback; :meth:`Group.decide`
  broadcasts its answer.

Why an explicit all-reduce and not ``DistributedDataParallel``: DDP's reducer needs every rank
to run forward and backward on every step (a rank with no sequences would need a dummy batch),
``find_unused_parameters`` for MoE experts no token chose, ``no_sync`` for micro-batches, and
it averages where an uneven split needs a weighted sum; its state dict gains a ``module.``
prefix. One bucketed all-reduce after the backward pass is exact and keeps checkpoints
interchangeable between process counts. What it gives up is DDP's overlap of communication
with the backward pass (a cost on GPUs for large models; not measured).

Lifetimes: a child never outlives rank 0 (Linux's ``PR_SET_PDEATHSIG``, and a watchdog on the
parent's pid elsewhere), and rank 0 stops its children however it ends, Tune's ``SystemExit``
at a report included (:meth:`Group.stop`). A child that fails writes its failure to a file and
exits; rank 0's next collective then fails (gloo notices the closed socket at once; for NCCL a
watcher thread aborts the process group, untested here), and ``train`` reports the child's
failure (:meth:`Group.failure_elsewhere`) as the run's result.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from hybridnas.trainer.config import ConfigError

__all__ = ["Group", "check_processes", "start_ranks", "rank_main"]

Ended = Literal["finished", "failed", "abandoned"]  # how rank 0 left the loop; see Group.stop

# a last resort against a rank that hangs while alive (a dead one is noticed at once): long
# enough for rank 0 to save a large checkpoint and hear back from its callback at a rung
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
STARTUP_TIMEOUT_S = 300.0  # a child imports torch and opens the token cache: seconds, more on a cold disk
JOIN_S = 60.0  # a finished run's children only leave the process group and exit
GRACE_S = 2.0  # a child whose crash broke rank 0's collective is reaped within this
BUCKET_ELEMS = 1 << 24  # elements per all-reduce: 64 MiB of fp32 copied at a time, not the whole model
DECISIONS = ("continue", "stop")


def check_processes(processes: int, device: torch.device) -> None:
    """ConfigError unless ``processes`` can train on ``device``: at least one, and on CUDA at
    most the GPUs this process sees (a trial sees the GPUs Ray gave it)."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"processes={processes!r}: must be a whole number of at least 1")
    if processes == 1:
        return
    if not dist.is_available():
        raise ConfigError(f"processes={processes}: this PyTorch build has no torch.distributed")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if processes > visible:
            raise ConfigError(f"processes={processes}: only {visible} CUDA GPU(s) are visible to this process "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        if not dist.is_nccl_available():
            raise ConfigError(f"processes={processes} on CUDA: this PyTorch build has no NCCL")


class Group:
    """This process's place in a run: ``rank`` of ``size`` processes, training on ``device``.
    With ``size == 1`` every hook is the identity and nothing touches torch.distributed, so a
    single-process run computes exactly what it did before data parallelism existed. Rank 0 of
    a larger run also holds its child processes (``children``)."""

    def __init__(self, rank: int, size: int, device: torch.device, children: _Children | None = None) -> None:
        self.rank, self.size, self.device, self.children = rank, size, device, children

    @property
    def main(self) -> bool:
        """Whether this rank writes files and talks to the caller."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's rows of ``n``: contiguous, sizes differing by at most one, possibly empty."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    # -- the collectives the loop needs --

    def connect(self) -> None:
        """Rank 0: wait until every child has started, then join the process group (bounded:
        a child that exits first is an error, not a hang)."""
        if self.children is not None:
            self.children.wait_started()
            _join(self.children.store, 0, self.size, self.device)
            self.children.watch(self.device)

    @torch.no_grad()
    def broadcast_weights(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers to every rank, as DDP does at construction: the ranks
        build the same seeded model, and this makes their agreement a fact, not an assumption."""
        if self.size > 1:
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)

    @torch.no_grad()
    def reduce_step(self, model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """After a step's backward pass: sum every parameter's gradient, every MoE layer's
        ``expert_load`` (the aux-loss-free balance counts tokens, so the sum is the full
        batch's) and ``loss`` (0-dim, already scaled by this rank's share) over the ranks; returns
        the global loss. A gradient that is None on every rank stays None (AdamW then skips
        the parameter, as a single process would); reading which ones are waits for the device,
        so it happens only on a rank that lacks one (a rank without sequences, an MoE expert)."""
        if self.size == 1:
            return loss
        params = [p for p in model.parameters() if p.requires_grad]
        missing = [p.grad is None for p in params]
        for p, absent in zip(params, missing, strict=True):
            if absent:
                p.grad = torch.zeros_like(p)
        present = torch.tensor([not absent for absent in missing], dtype=torch.float32, device=self.device)
        loads = [buf for name, buf in model.named_buffers() if name.endswith("expert_load")]
        total = loss.detach().reshape(1).float()
        _all_reduce_sum([*(p.grad for p in params if p.grad is not None), *loads, total, present])
        if any(missing):
            for p, count in zip(params, present.tolist(), strict=True):
                if count == 0:
                    p.grad = None
        return total.reshape(())

    def sum(self, value: float) -> float:
        """``value`` summed over the ranks (a validation loss's parts; float64 on the device)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def decide(self, decision: str) -> str:
        """Rank 0's rung decision, on every rank."""
        if self.size == 1:
            return decision
        code = torch.tensor([DECISIONS.index(decision) if self.main else 0], device=self.device)
        dist.broadcast(code, src=0)
        return DECISIONS[int(code.item())]

    # -- ending --

    def stop(self, ended: Ended) -> None:
        """Rank 0: end the children and leave the process group, however the run ended.
        ``finished``: they are finishing the same plan; wait for them. ``failed``: one of them
        may have caused it; give it ``GRACE_S`` to be reaped, then kill the rest. ``abandoned``
        (an exception passing through, e.g. Tune's SystemExit at a report): kill them now."""
        if self.children is not None:
            self.children.stop(ended)
            _leave(self.device)

    def failure_elsewhere(self) -> tuple[str, dict] | None:
        """Rank 0, after ``stop``: (status, failure) of the first child that failed on its own
        (not killed by rank 0), or None."""
        return self.children.failure if self.children is not None else None


def _all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` over the ranks in place: flattened into buckets of one dtype and at most
    BUCKET_ELEMS elements (one collective each, not one per tensor)."""
    bucket: list[torch.Tensor] = []
    elems = 0
    for i, t in enumerate(tensors):
        bucket.append(t)
        elems += t.numel()
        if i == len(tensors) - 1 or elems >= BUCKET_ELEMS or tensors[i + 1].dtype != t.dtype:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            for b, part in zip(bucket, flat.split([b.numel() for b in bucket]), strict=True):
                b.copy_(part.view_as(b))
            bucket, elems = [], 0


def _join(store: dist.Store, rank: int, size: int, device: torch.device) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)


def _leave(device: torch.device) -> None:
    if not dist.is_initialized():  # the NCCL watcher aborted it already
        return
    if device.type == "cuda":  # peers may be dead: NCCL's orderly destroy could wait for them
        dist.distributed_c10d._abort_process_group()
    else:
        dist.destroy_process_group()


# ---- rank 0: the child processes -------------------------------------------------------------


def start_ranks(processes: int, device: torch.device, job: dict) -> Group:
    """Rank 0's group. With ``processes > 1``, starts ranks 1..N-1 (each rebuilds the run from
    ``job``: spec, budget, config, resume_from, all JSON) and returns at once; ``connect`` joins
    them. Raises only what starting a process raises (an OSError)."""
    if processes == 1:
        return Group(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    # port 0: the OS picks a free port and the store holds it, so no other process can take it
    store = dist.TCPStore("127.0.0.1", 0, processes, is_master=True, wait_for_workers=False,
                          timeout=COLLECTIVE_TIMEOUT)
    workdir = Path(tempfile.mkdtemp(prefix="hybridnas-ranks-"))
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps({**job, "size": processes, "port": store.port, "device": device.type,
                                    "threads": torch.get_num_threads(), "parent": os.getpid(),
                                    "workdir": str(workdir)}))
    # the child imports what this process imports (an uninstalled checkout, Ray's working dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    code = "from hybridnas.trainer.distributed import rank_main; rank_main()"
    children = _Children(store, workdir)
    try:
        for rank in range(1, processes):
            children.procs.append(subprocess.Popen([sys.executable, "-c", code, str(job_file), str(rank)],
                                                   env=env, stdin=subprocess.DEVNULL))
    except BaseException:
        children.stop("abandoned")
        raise
    return Group(0, processes, device, children)


class _Children:
    """Rank 0's handle on ranks 1..N-1: start-up, the NCCL watcher, stopping, their failures."""

    def __init__(self, store: dist.TCPStore, workdir: Path) -> None:
        self.store, self.workdir = store, workdir
        self.procs: list[subprocess.Popen] = []
        self.killed: set[int] = set()  # ranks rank 0 killed: their deaths are not failures
        self.failure: tuple[str, dict] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def wait_started(self) -> None:
        keys = [f"started/{rank}" for rank in range(1, len(self.procs) + 1)]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.store.check(keys):
            for rank, proc in enumerate(self.procs, start=1):
                if proc.poll() is not None:
                    raise RuntimeError(f"rank {rank} exited (code {proc.returncode}) before joining the run")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the other ranks did not start within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def watch(self, device: torch.device) -> None:
        """NCCL only: a dead peer never ends an NCCL collective (gloo's fails at once, its socket
        closes), so a thread aborts the process group when a child dies, which ends rank 0's
        wait with an error."""
        if device.type == "cuda":
            self._watcher = threading.Thread(target=self._watch, daemon=True, name="hybridnas-ranks")
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            if any(proc.poll() not in (None, 0) for proc in self.procs):
                dist.distributed_c10d._abort_process_group()
                return

    def stop(self, ended: Ended) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        wait = {"finished": JOIN_S, "failed": GRACE_S, "abandoned": 0.0}[ended]
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            exited = [proc.poll() is not None for proc in self.procs]
            if all(exited) or (ended == "failed" and any(exited)):
                break
            time.sleep(0.02)
        for rank, proc in enumerate(self.procs, start=1):
            if proc.poll() is None:
                proc.kill()
                self.killed.add(rank)
            proc.wait()
        self.failure = self._first_failure() if ended == "failed" else None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _first_failure(self) -> tuple[str, dict] | None:
        for rank, proc in enumerate(self.procs, start=1):
            if rank in self.killed or proc.returncode == 0:
                continue
            report = self.workdir / f"rank-{rank}.json"
            if report.exists():
                written = json.loads(report.read_text())
                failure = written["failure"]
                return written["status"], {**failure, "message": f"rank {rank}: {failure['message']}"}
            code = proc.returncode
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return "error", {"step": None, "message": f"rank {rank} (pid {proc.pid}) died: {how}"}
        return None


# ---- ranks 1..N-1 ----------------------------------------------------------------------------


def rank_main() -> None:
    """A child rank: ``argv`` is (job file, rank). Trains the job's plan in lockstep with the
    others, writes nothing but its failure (``rank-<r>.json`` beside the job file) and exits."""
    job_file, rank = Path(sys.argv[1]), int(sys.argv[2])
    job = json.loads(job_file.read_text())
    _die_with_parent(job["parent"])
    torch.set_num_threads(job["threads"])
    from hybridnas.trainer.train import failure_of, train_rank  # here: train.py imports this module

    group = None
    try:
        device = torch.device("cuda", rank) if job["device"] == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = dist.TCPStore("127.0.0.1", job["port"], job["size"], is_master=False, timeout=COLLECTIVE_TIMEOUT)
        store.set(f"started/{rank}", "1")
        _join(store, rank, job["size"], device)
        group = Group(rank, job["size"], device)
        status, failure = train_rank(job, group)
    except Exception as exc:  # the run's failure, for rank 0 to report
        status, failure = failure_of(exc, None)
    if status in ("error", "oom"):
        (Path(job["workdir"]) / f"rank-{rank}.json").write_text(json.dumps({"status": status, "failure": failure}))
        os._exit(1)  # now: closing the sockets is what tells rank 0
    if group is not None:
        dist.destroy_process_group()


def _die_with_parent(parent: int) -> None:
    """End this process when rank 0's ends: the kernel's parent-death signal on Linux (immediate),
    and everywhere a thread that watches for the parent's pid to go."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="hybridnas-parent-watch").start()
