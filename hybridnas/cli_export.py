"""``hybridnas export``, the typer command that hybridnas.cli registers. It lives beside
cli.py, not in hybridnas.export, whose formats import torch: the CLI starts without it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hybridnas.cli_storage import DEFAULT_STORAGE, STORAGE_ENV

__all__ = ["export_command"]


def export_command(
    target: Annotated[str, typer.Argument(metavar="PATTERN|SPEC.json|EXAMPLE|STUDY",
                                          help="What to export; a study's name with --trial.")],
    to: Annotated[str, typer.Option("--to", help="json, mamba-ssm, megatron or hf")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output folder (created); default stdout. "
                                             "Required for --to hf.")] = None,
    weights: Annotated[bool, typer.Option("--weights", help="--to hf: also the weights (a trial's trained "
                                          "model.pt, else a fresh model of --seed), checked against HybridLM's "
                                          "logits.")] = False,
    trial: Annotated[int | None, typer.Option("--trial", help="TARGET is a study: export its trial N.")] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help=f"with --trial: database URL (default: ${STORAGE_ENV}, else {DEFAULT_STORAGE})")] = None,
    d_model: Annotated[int | None, typer.Option("--d-model", help="Override d_model (sizes re-derived).")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", min=1, help="Sequence length of megatron / hf "
                                                "(default: the trial's training length, else 2048).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="--weights without --trial: the fresh model's seed.")] = 0,
) -> None:
    """Export a candidate as our JSON, a mamba-ssm MambaConfig, Megatron-LM arguments or a Hugging Face model."""
    from hybridnas.cli_storage import storage_url
    from hybridnas.errors import UserError
    from hybridnas.export import DEFAULT_SEQ_LEN, FORMATS, export
    from hybridnas.export.source import from_target, from_trial, load_weights

    if to not in FORMATS:  # before the database is opened or a model built
        raise UserError(f"--to {to}: unknown format, expected one of {', '.join(FORMATS)}")
    if weights and to != "hf":
        raise UserError(f"--weights: only --to hf writes weights, not --to {to}")
    if to == "hf" and out is None:
        raise UserError("--to hf writes a folder (config.json, model.safetensors): give it with -o DIR")
    if trial is not None and d_model is not None:
        raise UserError("--d-model: a trial's spec is fixed; it cannot be given with --trial")
    if storage is not None and trial is None:
        raise UserError("--storage: only with --trial (TARGET is then a study's name)")
    source = from_target(target, d_model) if trial is None else from_trial(storage_url(storage), target, trial)
    state = load_weights(source, trial=trial is not None, seed=seed) if weights else None
    result = export(source.spec, to, out, weights=state, seq_len=seq_len or source.seq_len or DEFAULT_SEQ_LEN)
    if out is None and result.text is not None:
        sys.stdout.write(result.text)
        return
    for path in result.files:
        print(f"wrote {path}", file=sys.stderr)
    if result.logits is not None:
        check = result.logits
        print(f"logits match HybridLM's: max |diff| {check.max_abs_diff:.2e} <= {check.atol:g} "
              f"(fp32 CPU, tokens {list(check.tokens)})", file=sys.stderr)
