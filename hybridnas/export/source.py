"""What ``hybridnas export`` exports: a spec (anything ``inspect`` takes, or a study trial's)
and, for ``--weights``, the state dict: a trial's trained ``model.pt`` or a seeded fresh model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hybridnas.export.errors import ExportError
from hybridnas.search_space import ArchSpec, load_spec

__all__ = ["Source", "from_target", "from_trial", "load_weights"]

MAX_REUSE_HOPS = 16  # a copy row names the trial it copies; a copy of a copy is not written, but bound it
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrap the trainer's model


@dataclass(frozen=True)
class Source:
    """A spec to export; ``checkpoint`` is the trained ``model.pt`` of a study trial (None for
    a pattern, example or SPEC.json); ``seq_len`` the trial's training length, if known."""

    spec: ArchSpec
    label: str
    checkpoint: Path | None = None
    seq_len: int | None = None


def from_target(target: str, d_model: int | None = None) -> Source:
    return Source(load_spec(target, d_model), target)


def from_trial(storage: str, study: str, trial: int) -> Source:
    """Trial ``trial`` of ``study`` in the results database at ``storage``: its spec from its
    row, its weights at ``<the run's out_dir>/model.pt`` (a copy's: the trial it copies)."""
    from hybridnas.studies.storage import ResultsStore, StorageError

    store = ResultsStore(storage, readonly=True)
    try:
        if not store.has_table():
            raise StorageError(f"storage {storage}: no hybridnas studies here (run hybridnas launch first)")
        row = store.row(study, trial)
        if row is None:
            studies = store.studies()
            if study not in studies:
                raise ExportError(f"no study {study!r} in {storage} (studies: {', '.join(studies) or 'none'})")
            raise ExportError(f"--trial {trial}: study {study!r} has no such trial")
        spec = ArchSpec.from_dict(row["spec"])
        trained = row
        for _ in range(MAX_REUSE_HOPS):  # a copy carries the result of the trial it copies
            if trained["reused_from"] is None:
                break
            twin = store.row(study, trained["reused_from"])
            if twin is None:
                break
            trained = twin
    finally:
        store.dispose()
    config = trained.get("config") or {}
    out_dir = config.get("out_dir") if trained["status"] == "complete" else None
    checkpoint = Path(out_dir) / "model.pt" if out_dir else None
    seq_len = config.get("seq_len")
    return Source(spec, f"{study} trial {trial}", checkpoint, seq_len if isinstance(seq_len, int) else None)


def load_weights(source: Source, *, trial: bool, seed: int = 0) -> dict[str, Tensor]:
    """Our state dict for ``source``: a trial's ``model.pt`` (which must exist and hold this
    spec), else a fresh ``HybridLM(spec, seed=seed)``'s."""
    from hybridnas.model import HybridLM

    if not trial:
        return HybridLM(source.spec, seed=seed).state_dict()
    if source.checkpoint is None:
        raise ExportError(f"--weights: {source.label} has no trained model (only a complete trial saves model.pt)")
    try:
        saved = torch.load(source.checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"--weights: {source.label}: {source.checkpoint} does not exist "
                          "(the trial's runs folder moved, or it trained on another machine)") from None
    except (OSError, RuntimeError) as exc:  # torch.load's error for a truncated or foreign file
        raise ExportError(f"--weights: {source.checkpoint}: unreadable ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or "model" not in saved or "spec" not in saved:
        raise ExportError(f"--weights: {source.checkpoint}: not a hybridnas model.pt (no 'spec' and 'model')")
    if ArchSpec.from_dict(saved["spec"]).key != source.spec.key:
        raise ExportError(f"--weights: {source.checkpoint} holds another candidate than {source.label}'s spec")
    state = {_unwrap(k): v for k, v in saved["model"].items()}
    model = HybridLM(source.spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ExportError(f"--weights: {source.checkpoint} does not load into HybridLM: {first}") from None
    return model.state_dict()


def _unwrap(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key
