"""Export a candidate to other frameworks: ``hybridnas export TARGET --to FORMAT``.

Formats, and the layers each refuses (one ``UnsupportedLayerError`` line naming the layer's
index and symbol; nothing is ever approximated):

========== ==============================================================================
json       our ArchSpec JSON: everything.
mamba-ssm  MambaConfig: blocks of ``M``/``*`` each followed by one ``-``, or mixers only.
           Refuses ``W``, ``H``, ``E``, an FFN without a mixer, mixers of which only some
           have an FFN.
megatron   Megatron-LM hybrid arguments: ``M * - E`` as they are. Refuses ``W``, ``H``, and
           ``M`` with ssm.expand != 2 or ssm.conv_kernel != 4.
hf         GraniteMoeHybrid (layouts with FFNs: ``M``/``*`` each followed by one ``-``;
           refuses ``W``, ``H``, ``E``, unpaired layers) or NemotronH (layouts without FFNs:
           ``M`` and ``*`` with attn.rope = false; refuses ``W``, ``H``, ``*`` with RoPE).
           ``--weights`` writes model.safetensors and checks the logits.
========== ==============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from hybridnas.errors import check_writable_dir
from hybridnas.export.errors import ExportError, UnsupportedLayerError
from hybridnas.export.hf import LogitsCheck
from hybridnas.search_space import ArchSpec

__all__ = ["FORMATS", "UNSUPPORTED", "FILE_NAMES", "ExportError", "UnsupportedLayerError", "ExportResult", "export",
           "render"]

FORMATS = ("json", "mamba-ssm", "megatron", "hf")
# What each format cannot express, for `--help` and the docs; the checks are in each module.
UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "json": (),
    "mamba-ssm": ("W", "H", "E", "an FFN without its mixer", "mixers of which only some have an FFN"),
    "megatron": ("W", "H", "M with ssm.expand != 2", "M with ssm.conv_kernel != 4"),
    "hf": ("W", "H", "E", "with FFNs: a mixer without exactly one '-' after it",
           "without FFNs: '*' with attn.rope = true"),
}
FILE_NAMES = {"json": "spec.json", "mamba-ssm": "config.json", "megatron": "megatron_args.sh"}
DEFAULT_SEQ_LEN = 2048


@dataclass(frozen=True)
class ExportResult:
    """What was exported: ``text`` (json, mamba-ssm, megatron), the files written, and for
    ``hf`` with weights the logits check."""

    fmt: str
    text: str | None
    files: tuple[Path, ...] = ()
    logits: LogitsCheck | None = None


def render(spec: ArchSpec, fmt: str, *, seq_len: int = DEFAULT_SEQ_LEN) -> str:
    """The text of a text format (json, mamba-ssm, megatron); raises before anything is written."""
    import json

    if fmt == "json":
        return spec.to_json(indent=2) + "\n"
    if fmt == "mamba-ssm":
        from hybridnas.export.mamba_ssm import mamba_ssm_config

        return json.dumps(mamba_ssm_config(spec).to_dict(), indent=2) + "\n"
    if fmt == "megatron":
        from hybridnas.export.megatron import megatron_args

        return megatron_args(spec, seq_len).to_text(f"hybridnas export --to megatron: {spec.pattern} "
                                                    f"(id {spec.short_id})")
    raise ExportError(f"--to {fmt}: not a text format (expected one of {', '.join(FORMATS)})")


def export(spec: ArchSpec, fmt: str, out_dir: Path | None, *, weights: dict[str, Tensor] | None = None,
           seq_len: int = DEFAULT_SEQ_LEN) -> ExportResult:
    """Export ``spec`` as ``fmt`` into ``out_dir`` (created), or as text when ``out_dir`` is None
    (not for ``hf``). ``weights``: our state dict, for ``hf`` only. Every check runs before
    anything is written; a failed logits check raises :class:`ExportError` (files are kept)."""
    if fmt not in FORMATS:
        raise ExportError(f"--to {fmt}: unknown format, expected one of {', '.join(FORMATS)}")
    if weights is not None and fmt != "hf":
        raise ExportError(f"--weights: only --to hf writes weights, not --to {fmt}")
    if fmt != "hf":
        text = render(spec, fmt, seq_len=seq_len)
        if out_dir is None:
            return ExportResult(fmt, text)
        folder = check_writable_dir(out_dir, "-o", create=True)
        path = folder / FILE_NAMES[fmt]
        path.write_text(text, encoding="utf-8")
        return ExportResult(fmt, text, (path,))

    from hybridnas.export import hf

    if out_dir is None:
        raise ExportError("--to hf writes a folder (config.json, model.safetensors): give it with -o DIR")
    hf.choose(spec)  # refuses a layer before the folder is made
    folder = check_writable_dir(out_dir, "-o", create=True)
    hf.write_hf(spec, folder, seq_len, weights)
    files = tuple(sorted(p for p in folder.iterdir() if p.is_file()))
    if weights is None:
        return ExportResult(fmt, None, files)
    check = hf.check_logits(spec, weights, folder)
    if not check.ok:
        raise ExportError(f"--weights: the exported model's logits differ from HybridLM's by {check.max_abs_diff:.3g} "
                          f"(tolerance {check.atol:g}, fp32 CPU, tokens {list(check.tokens)}); files in {folder}")
    return ExportResult(fmt, None, files, check)
