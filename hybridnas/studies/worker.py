"""The Ray Tune trainable: train one candidate on its FLOP budget, report at each rung.

Runs on a Ray worker (one GPU each where GPUs exist, one CPU process otherwise). It never
writes the database: everything it learns goes back to the driver through ``tune.report``.
With ``reuse_actors`` the worker process survives between trials, so kernels compiled or
autotuned for one trial stay warm for the next.

config keys (made by the driver): spec (ArchSpec dict), budget_flops, trainer (TrainConfig
dict), rungs (budget fractions), seeds, measure (speed figures to take: {"decode": [ctx],
"prefill": [ctx]}), recall (RecallSettings dict with the tasks to score, or None),
long_context (probe the trained model), trial_dir (absolute: Tune runs each trial in its
own directory).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

__all__ = ["run_trial", "FINAL"]

FINAL = "final"  # the key marking a trial's last report


def run_trial(config: dict) -> None:
    from ray import tune

    from hybridnas.search_space import ArchSpec
    from hybridnas.trainer import TrainConfig, train

    spec = ArchSpec.from_dict(config["spec"])
    trial_dir = Path(config["trial_dir"])
    trial_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def at_rung(report) -> str:
        # the scheduler answers by stopping this function at the report, not by return value
        saved = Path(report.checkpoint)
        tune.report(
            {"rung": report.index, "val_loss": report.val_loss, "tokens": report.tokens, "flops": report.flops,
             "train_loss": report.train_loss, "hardware": _hardware(), FINAL: False},
            checkpoint=tune.Checkpoint.from_directory(str(saved.parent)),
        )
        return "continue"

    resume_from = None
    restored = tune.get_checkpoint()  # set when Tune restarts this trial after a worker died
    if restored is not None:
        local = trial_dir / "restored"
        shutil.rmtree(local, ignore_errors=True)
        shutil.copytree(restored.to_directory(), local)
        latest = sorted(local.glob("rung-*.pt"))
        resume_from = str(latest[-1]) if latest else None

    results = []
    for seed in config["seeds"]:
        first = seed == config["seeds"][0]
        settings = {**config["trainer"], "seed": seed, "progress": False,
                    "rungs": tuple(config["rungs"]) if first else (), "out_dir": str(trial_dir / f"seed-{seed}")}
        result = train(spec, config["budget_flops"], TrainConfig(**settings),
                       rung_callback=at_rung if first else None, resume_from=resume_from if first else None)
        results.append(result)
        if result.status != "complete":
            break

    final = _summary(results)
    final.update(_measure(spec, config.get("measure") or {}, final["status"]))
    if final["status"] == "complete":
        final.update(_recall(spec, config.get("recall")))
        final.update(_long_context(results[0], config["trainer"], config["long_context"]) if config.get("long_context") else {})
    final.update({FINAL: True, "wall_s": time.perf_counter() - started, "hardware": _hardware()})
    tune.report(final)


def _summary(results) -> dict:
    """One candidate's result over its seeds: mean validation loss of the complete runs."""
    first = results[-1] if results[-1].status != "complete" else results[0]
    losses = [r.val_loss for r in results if r.status == "complete" and r.val_loss is not None]
    return {
        "status": first.status,
        "failure": first.failure["message"] if first.failure else None,
        "val_loss": sum(losses) / len(losses) if losses and first.status == "complete" else None,
        "val_loss_seeds_json": json.dumps(losses),  # JSON text: loggers take scalars
        "tokens": results[0].tokens,
        "flops_spent": sum(r.flops + r.extra_flops for r in results),
        "tokens_per_s": results[0].tokens_per_s,
        "mfu": results[0].mfu,
        # JSON text: Tune flattens nested dicts in the results it hands the driver
        "loss_curve_json": json.dumps({"train": results[0].train_curve, "val": results[0].val_curve}),
        "config_json": json.dumps(results[0].config),
        "device": results[0].device,
    }


def _measure(spec, wanted: dict, status: str) -> dict:
    """Measured speed objectives (GPU only); None with a reason elsewhere."""
    if not wanted or status != "complete":
        return {}
    from hybridnas.proxies.speed import measure_decode

    contexts = tuple(sorted({*wanted.get("decode", []), *wanted.get("prefill", [])}))
    report = measure_decode(spec, contexts)
    out = {"speed_reason": report.reason}
    for kind, figures in (("decode", report.decode_tokens_per_s), ("prefill", report.prefill_tokens_per_s)):
        for context in wanted.get(kind, []):
            out[f"{kind}_tokens_per_s@{context}"] = figures.get(context)
    return out


def _recall(spec, settings: dict | None) -> dict:
    """Recall objectives: the candidate's layout shrunk and trained on each synthetic task
    (one after another here: the trial holds one worker's resources)."""
    if not settings:
        return {}
    from hybridnas.proxies.recall import RecallConfig, score_recall

    report = score_recall(spec, RecallConfig(**{**settings, "tasks": tuple(settings["tasks"]),
                                                "lrs": tuple(settings["lrs"])}))
    return {**report.tasks, "recall": report.score, "recall_json": json.dumps(report.to_dict())}


def _long_context(result, trainer: dict, wanted: list[str]) -> dict:
    """The long-context probes ``wanted`` asks for, of the trained model: passkey retrieval
    up to 2x the training length, validation loss at 2x and 4x it."""
    import torch

    from hybridnas.model import HybridLM
    from hybridnas.proxies.longctx import length_extrapolation, passkey_probe
    from hybridnas.search_space import ArchSpec
    from hybridnas.trainer import load_tokens

    saved = torch.load(result.model_path, map_location="cpu", weights_only=True)
    model = HybridLM(ArchSpec.from_dict(saved["spec"]))
    model.load_state_dict(saved["model"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_tokens(trainer["corpus"], trainer["tokenizer"], trainer["vocab_size"], trainer["val_fraction"],
                       trainer.get("cache_dir"))
    model = model.to(device)
    out = {}
    if "passkey" in wanted:
        factors = _passkey_factors(data.tokenizer, result.seq_len)
        if not factors:
            return {"failure": f"the passkey prompt does not fit in 2x the training length ({result.seq_len} tokens)"}
        report = passkey_probe(model, data.tokenizer, train_seq_len=result.seq_len, length_factors=factors,
                               device=device)
        out.update(passkey=report.score, passkey_json=json.dumps(report.to_dict()))
    factors = tuple(int(name[len("val_loss_"):-1]) for name in wanted if name.startswith("val_loss_"))
    if factors:
        losses = length_extrapolation(model, data, train_seq_len=result.seq_len, factors=factors, device=device)
        out.update({f"val_loss_{f}x": losses.get(f) for f in factors})
    return out


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
    """The device, its host and the worker process (a reused actor keeps its pid)."""
    import torch

    device = f"{torch.cuda.get_device_name()} x1" if torch.cuda.is_available() else f"{platform.machine()} CPU"
    return f"{device} on {platform.node()}, worker pid {os.getpid()}"
