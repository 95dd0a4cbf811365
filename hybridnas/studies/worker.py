"""The Ray Tune trainable: train one candidate on its FLOP budget, report at each rung.

Runs on a Ray worker (what ``[resources]`` gives its candidate: a share of a GPU, a GPU, or
several for a data-parallel run; one CPU process where there are no GPUs). It never
writes the database: everything it learns goes back to the driver through ``tune.report``,
as a :class:`~hybridnas.studies.protocol.TrialReport`; what to do arrives as a
:class:`~hybridnas.studies.protocol.TrialRequest`. With ``reuse_actors`` the worker process
survives between trials, so kernels compiled or autotuned for one trial stay warm for the next.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hybridnas.errors import UserError
from hybridnas.studies.protocol import TrialReport, TrialRequest, report_to_tune, request_from_tune

if TYPE_CHECKING:
    from hybridnas.trainer import RungReport, TrainResult

__all__ = ["run_trial", "TRACEBACK_LINES"]


TRACEBACK_LINES = 12  # of a failed trial's traceback, kept in its row (metrics.details.traceback)


def run_trial(config: dict) -> None:
    """Tune's function trainable: ``config`` is :func:`~hybridnas.studies.protocol.request_to_tune`'s.

    An exception (a bug, a file that broke) is the trial's result, ``status = "error"`` with
    the exception's own text as its failure and the traceback's last lines in its details:
    raised on, Tune would run the trial again for the same error and the database would hold
    only that the worker failed. A worker that dies (killed, out of host memory) is retried
    by Tune from its last rung checkpoint. Tune stops a trial at a rung with SystemExit,
    which is not an Exception and passes."""
    from ray import tune

    started = time.perf_counter()
    try:
        _run_trial(request_from_tune(config), started)
    except Exception as exc:
        lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
        tune.report(report_to_tune(TrialReport(
            rung=None, status="error", failure=_exception_line(exc), details={"traceback": lines[-TRACEBACK_LINES:]},
            wall_s=time.perf_counter() - started, hardware=_hardware())))


def _exception_line(exc: BaseException) -> str:
    """``Type: message (file.py:line in function)``, one line, the innermost frame named."""
    message = " ".join(str(exc).split()) or "(no message)"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {message}{where}"


def _run_trial(request: TrialRequest, started: float) -> None:
    """Train ``request``'s candidate (each seed), report each rung, then the measured result."""
    from ray import tune

    from hybridnas.trainer import TrainConfig, train

    # runs that go to a URI train in the local folder Tune gives the trial (it uploads checkpoints)
    trial_dir = Path(request.trial_dir or tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    _cap_gpu_memory()

    def at_rung(rung: RungReport) -> Literal["continue", "stop"]:
        # the scheduler answers by stopping this function at the report, not by return value
        report = TrialReport(rung=rung.index, val_loss=rung.val_loss, tokens=rung.tokens, flops=rung.flops,
                             train_loss=rung.train_loss, lr=rung.lr, hardware=_hardware())
        tune.report(report_to_tune(report), checkpoint=tune.Checkpoint.from_directory(_rung_folder(rung)))
        return "continue"

    resume_from = None
    restored = tune.get_checkpoint()  # set when Tune restarts this trial after a worker died
    if restored is not None:
        local = trial_dir / "restored"
        shutil.rmtree(local, ignore_errors=True)
        shutil.copytree(restored.to_directory(), local)
        latest = sorted(local.glob("rung-*.pt"))
        resume_from = str(latest[-1]) if latest else None

    results: list[TrainResult] = []
    trainer = request.trainer.model_dump()
    for seed in request.seeds:
        first = seed == request.seeds[0]
        settings = {**trainer, "seed": seed, "progress": False, "rungs": request.rungs if first else (),
                    "out_dir": str(trial_dir / f"seed-{seed}")}
        if not first:  # the learning rate is the candidate's, chosen once: later seeds train at it
            settings.update(lr=results[0].lr, lr_grid=())
        try:
            result = train(request.spec, request.budget_flops, TrainConfig(**settings),
                           rung_callback=at_rung if first else None, resume_from=resume_from if first else None,
                           processes=request.processes)
        except UserError as exc:  # the settings' fault (a corpus with one document, say): a result, not a crash
            tune.report(report_to_tune(TrialReport(rung=None, status="error", failure=f"{type(exc).__name__}: {exc}",
                                                   wall_s=time.perf_counter() - started, hardware=_hardware())))
            return
        results.append(result)
        if result.status != "complete":
            break

    final = _summary(results)
    metrics: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    if final["status"] == "complete":
        final["speed_reason"] = _measure(request, metrics)
        _recall(request, metrics, details)
        if request.long_context:
            failure = _long_context(results[0], request, metrics, details)
            final["failure"] = failure or final["failure"]
    if results[0].lr_sweep:
        details["lr_sweep"] = results[0].lr_sweep
    if resume_from is not None:  # a retry after the worker died: it went on from this rung's checkpoint
        details["resumed_from"] = Path(resume_from).name
    report = TrialReport(rung=None, **final, metrics=metrics, details=details,
                         wall_s=time.perf_counter() - started, hardware=_hardware())
    tune.report(report_to_tune(report))


def _rung_folder(rung: RungReport) -> str:
    """A folder holding only this rung's checkpoint (a hard link, no copy), for Tune to persist:
    the run's folder holds every earlier rung's too, which Tune would upload again each time."""
    saved = Path(rung.checkpoint)
    folder = saved.parent / f"tune-rung-{rung.index}"
    folder.mkdir(exist_ok=True)
    link = folder / saved.name
    if not link.exists():
        os.link(saved, link)
    return str(folder)


def _cap_gpu_memory() -> None:
    """On a share of a GPU (``gpus_per_trial`` < 1), cap this process's CUDA allocator at the
    share, so that one trial's memory cannot starve the trials beside it: it runs out itself
    (an ``oom`` result), and the trainer's memory check refuses what cannot fit the share."""
    import ray
    import torch

    share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    if torch.cuda.is_available() and 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share, 0)


def _summary(results) -> dict[str, Any]:
    """One candidate's result over its seeds: mean validation loss of the complete runs."""
    first = results[-1] if results[-1].status != "complete" else results[0]
    losses = [r.val_loss for r in results if r.status == "complete" and r.val_loss is not None]
    return {
        "status": first.status,
        "failure": first.failure["message"] if first.failure else None,
        "val_loss": sum(losses) / len(losses) if losses and first.status == "complete" else None,
        "val_loss_seeds": tuple(losses),
        "tokens": results[0].tokens,
        "flops_spent": sum(r.flops + r.extra_flops for r in results),
        "tokens_per_s": results[0].tokens_per_s,
        "mfu": results[0].mfu,
        "loss_curve": {"train": results[0].train_curve, "val": results[0].val_curve},
        "config": results[0].config,
        "device": results[0].device,
        "lr": results[0].lr,
    }


def _measure(request: TrialRequest, metrics: dict[str, float | None]) -> str | None:
    """Measured speed objectives (GPU only) into ``metrics``; the reason they are missing, if so."""
    if not request.decode_contexts and not request.prefill_contexts:
        return None
    from hybridnas.proxies.speed import measure_decode

    report = measure_decode(request.spec, tuple(sorted({*request.decode_contexts, *request.prefill_contexts})))
    for kind, contexts, figures in (("decode", request.decode_contexts, report.decode_tokens_per_s),
                                    ("prefill", request.prefill_contexts, report.prefill_tokens_per_s)):
        for context in contexts:
            metrics[f"{kind}_tokens_per_s@{context}"] = figures.get(context)
    return report.reason


def _recall(request: TrialRequest, metrics: dict[str, float | None], details: dict[str, Any]) -> None:
    """Recall objectives: the candidate's layout shrunk and trained on each synthetic task
    (one after another here: the trial holds one worker's resources)."""
    if request.recall is None:
        return
    from hybridnas.proxies.recall import score_recall

    report = score_recall(request.spec, request.recall)
    metrics.update({**report.tasks, "recall": report.score})
    details["recall"] = report.to_dict()


def _long_context(result, request: TrialRequest, metrics: dict[str, float | None],
                  details: dict[str, Any]) -> str | None:
    """The long-context probes the request names, of the trained model: passkey retrieval
    up to 2x the training length, validation loss at 2x and 4x it. Returns a failure reason
    when a probe cannot run."""
    import torch

    from hybridnas.model import HybridLM
    from hybridnas.proxies.longctx import length_extrapolation, passkey_probe
    from hybridnas.search_space import ArchSpec
    from hybridnas.studies.objectives import REGISTRY
    from hybridnas.trainer import load_tokens

    saved = torch.load(result.model_path, map_location="cpu", weights_only=True)
    model = HybridLM(ArchSpec.from_dict(saved["spec"]))
    model.load_state_dict(saved["model"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = request.trainer
    data = load_tokens(t.corpus, t.tokenizer, t.vocab_size, t.val_fraction, t.cache_dir)
    model = model.to(device)
    if "passkey" in request.long_context:
        factors = _passkey_factors(data.tokenizer, result.seq_len)
        if not factors:
            return f"the passkey prompt does not fit in 2x the training length ({result.seq_len} tokens)"
        report = passkey_probe(model, data.tokenizer, train_seq_len=result.seq_len, length_factors=factors,
                               device=device)
        metrics["passkey"] = report.score
        details["passkey"] = report.to_dict()
    wanted = {factor: name for name in request.long_context if (factor := REGISTRY[name].factor)}
    if wanted:
        losses = length_extrapolation(model, data, train_seq_len=result.seq_len, factors=tuple(wanted),
                                      device=device)
        metrics.update({name: losses.get(factor) for factor, name in wanted.items()})
    return None


def _passkey_factors(tokenizer, seq_len: int) -> tuple[float, ...]:
    """The probe's lengths (0.5x to 2x the training length) that can hold the needle and the
    question: a short-context trial skips the shorter ones."""
    from hybridnas.proxies.longctx import build_passkey_prompt

    fits = []
    for factor in (0.5, 1.0, 1.5, 2.0):
        try:
            build_passkey_prompt(tokenizer, int(factor * seq_len), 0.0, "12345")
        except ValueError:
            continue
        fits.append(factor)
    return tuple(fits)


def _hardware() -> str:
    """The device and the GPUs the trial holds (a share, one, several), its host and the worker
    process (a reused actor keeps its pid)."""
    import ray
    import torch

    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0)
    device = f"{torch.cuda.get_device_name()} x{gpus:g}" if torch.cuda.is_available() else f"{platform.machine()} CPU"
    return f"{device} on {platform.node()}, worker pid {os.getpid()}"
