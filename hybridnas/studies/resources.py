"""What one trial holds on a Ray worker: ``[resources]`` of a study file, and the rule that
sizes ``"auto"`` from the candidate.

- ``gpus_per_trial``: a share of one GPU (0 < g <= 1, e.g. 0.25: four trials on a GPU), or a
  whole number of GPUs of one node (> 1: the candidate trains data-parallel across them,
  one process per GPU), or 0 (the trial trains on CPUs even where GPUs exist).
- ``cpus_per_trial``: CPUs per trial (data loading, compilation, the Python loop).

``"auto"`` (both defaults) sizes each trial from its candidate (:func:`auto_gpus`): a small
model cannot keep an H200 busy alone (at 35M parameters the step is launch- and Python-bound:
the GPU idles between kernels, and during compilation and evaluation), so the smallest
candidates take an eighth of a GPU and others more as their parameters and their training
memory grow; a candidate past one GPU's worth still takes one GPU (data parallel is asked
for explicitly). A trial on a shared GPU caps its CUDA allocator at its share
(``torch.cuda.set_per_process_memory_fraction``, in the worker), so one trial's memory never
starves its neighbours: it runs out of memory itself, and that is its result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hybridnas.errors import UserError
from hybridnas.search_space import ArchSpec
from hybridnas.trainer.config import TrainConfig

__all__ = ["Cluster", "ResourcesConfig", "ResourcesError", "TrialResources", "auto_gpus", "check_placeable",
           "trial_resources", "MAX_GPUS_PER_TRIAL"]

MAX_GPUS_PER_TRIAL = 64  # one node's GPUs: a data-parallel trial does not span nodes
MAX_CPUS_PER_TRIAL = 1024
GPU_SHARES = (0.125, 0.25, 0.5, 1.0)  # powers of two, so shares of different trials tile a GPU
# "auto": a share holds at most this many parameters per whole GPU (a 100M candidate gets a
# quarter: on an H200 it trains at about a third of the GPU's peak alone, docs/benchmarks.md) ...
PARAMS_PER_GPU = 400e6
# ... and at least this many times the trainer's least training memory (trainer/memory.py: a
# lower bound that leaves out the logits, attention and SSM intermediates, which at seq 2048
# and a 50k vocabulary are several times the bound)
MEMORY_HEADROOM = 8.0
ASSUMED_GPU_BYTES = 80 * (1 << 30)  # a cluster's GPUs are not known before a trial runs: an 80 GB one
CPUS_PER_GPU_TRIAL = 2  # a GPU trial's Python loop and data loading, plus one spare for compilation


class ResourcesConfig(BaseModel):
    """``[resources]`` of a study file (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus_per_trial: Literal["auto"] | Annotated[float, Field(ge=0, le=MAX_GPUS_PER_TRIAL, allow_inf_nan=False)] = (
        "auto")
    cpus_per_trial: Literal["auto"] | Annotated[float, Field(gt=0, le=MAX_CPUS_PER_TRIAL, allow_inf_nan=False)] = (
        "auto")

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, gpus: str | float) -> str | float:
        if isinstance(gpus, float | int) and gpus > 1 and gpus != int(gpus):
            raise ValueError(f"{gpus:g}: above 1 it must be a whole number of GPUs (the trial trains "
                             "data-parallel, one process per GPU); a share of one GPU is at most 1")
        if isinstance(gpus, float | int) and 0 < gpus < 1 and round(gpus, 4) != gpus:
            raise ValueError(f"{gpus!r}: a share of a GPU has at most 4 decimals (Ray's granularity)")
        return gpus

    @property
    def data_parallel(self) -> int:
        """Processes per trial: the GPUs of an explicit ``gpus_per_trial`` above 1, else 1."""
        gpus = self.gpus_per_trial
        return int(gpus) if not isinstance(gpus, str) and gpus > 1 else 1


@dataclass(frozen=True)
class TrialResources:
    """What Ray reserves for one trial."""

    gpus: float
    cpus: float

    def bundle(self) -> dict[str, float]:
        """Ray's resource bundle (one: a trial's GPUs and CPUs are on one node)."""
        return {"CPU": self.cpus, "GPU": self.gpus} if self.gpus else {"CPU": self.cpus}


class ResourcesError(UserError):
    """Trials no node of the Ray cluster can hold (Tune would wait for them forever)."""


@dataclass(frozen=True)
class Cluster:
    """The Ray nodes' (CPUs, GPUs) and the memory of one GPU (the local one when Ray runs
    here, else ``ASSUMED_GPU_BYTES``): what "auto" and the placement check read."""

    nodes: tuple[tuple[float, float], ...]
    gpu_bytes: int = ASSUMED_GPU_BYTES

    @property
    def has_gpus(self) -> bool:
        return any(gpus for _, gpus in self.nodes)

    def most_cpus(self, gpus: float) -> float:
        """The CPUs of the largest node with at least ``gpus`` GPUs (0 if none has)."""
        return max((cpus for cpus, have in self.nodes if have >= gpus), default=0.0)


def auto_gpus(spec: ArchSpec, trainer: TrainConfig, gpu_bytes: int = ASSUMED_GPU_BYTES) -> float:
    """The GPU share ``"auto"`` gives a trial of ``spec``: the smallest of ``GPU_SHARES`` that
    holds both its parameters (at ``PARAMS_PER_GPU`` per GPU) and ``MEMORY_HEADROOM`` times its
    least training memory on a GPU of ``gpu_bytes``."""
    from hybridnas.search_space.cost import cost
    from hybridnas.trainer.memory import least_training_bytes

    step_seqs = max(1, trainer.batch_tokens // trainer.seq_len)
    need, _, _ = least_training_bytes(spec, trainer.seq_len, min(trainer.micro_batch or step_seqs, step_seqs))
    params = cost(spec, trainer.seq_len).total.params
    wanted = max(params / PARAMS_PER_GPU, MEMORY_HEADROOM * need / gpu_bytes)
    return next((share for share in GPU_SHARES if share >= wanted), 1.0)


def trial_resources(resources: ResourcesConfig, spec: ArchSpec | None, trainer: TrainConfig,
                    cluster: Cluster) -> TrialResources:
    """What a trial of ``spec`` holds on ``cluster``. "auto" GPUs: none on a cluster without
    GPUs or for a trainer told ``device="cpu"``, else :func:`auto_gpus` of ``spec`` (which may
    be None only where the GPUs are given); "auto" CPUs: CPUS_PER_GPU_TRIAL per GPU (at most
    what a node with those GPUs has), one for a CPU trial."""
    gpus = resources.gpus_per_trial
    if gpus == "auto":
        if not cluster.has_gpus or trainer.device == "cpu":
            gpus = 0.0
        else:
            assert spec is not None, "auto GPUs are sized from a candidate"
            gpus = auto_gpus(spec, trainer, cluster.gpu_bytes)
    cpus = resources.cpus_per_trial
    if cpus == "auto":
        cpus = float(CPUS_PER_GPU_TRIAL * max(1, math.ceil(gpus))) if gpus else 1.0
        cpus = min(cpus, cluster.most_cpus(gpus)) or cpus
    return TrialResources(float(gpus), float(cpus))


def check_placeable(wanted: TrialResources, cluster: Cluster) -> None:
    """ResourcesError unless one node of ``cluster`` holds a trial of ``wanted`` (a trial's
    GPUs and CPUs are on one node)."""
    if wanted.gpus and not cluster.has_gpus:
        raise ResourcesError(f"resources.gpus_per_trial: {wanted.gpus:g} GPUs, but the Ray cluster has no GPU "
                             "(set it to 0 or \"auto\", or join a cluster with GPUs with --ray-address)")
    most_gpus = max(gpus for _, gpus in cluster.nodes)
    if wanted.gpus > most_gpus:
        raise ResourcesError(f"resources.gpus_per_trial: {wanted.gpus:g} GPUs, but no Ray node has that many "
                             f"(the largest has {most_gpus:g}; a trial's GPUs are on one node)")
    if wanted.cpus > cluster.most_cpus(wanted.gpus):
        raise ResourcesError(f"resources.cpus_per_trial: {wanted.cpus:g} CPUs, but no Ray node with "
                             f"{wanted.gpus:g} GPUs has that many (the largest has {cluster.most_cpus(wanted.gpus):g})")
