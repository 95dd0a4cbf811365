"""The study file is part of the study: what a relaunch may change.

A study's resolved config is saved with it when it is created (Optuna's study attribute
``config``). Relaunching the same name compares the new config with the saved one, key by
dotted key, and sorts each difference into one of three kinds:

- **free**: how the study is run, never what it measures (``trials``, ``concurrent``, where
  it is stored, where its runs go, the resources a trial holds, the trainer's progress output
  and folders). Accepted and saved.
- **allowed with** ``--allow-change KEY``: what the study proposes next or how a run executes,
  which leaves every stored result valid (the sampler, baselines and enqueued candidates, the
  trainer's device, compile and corpus path — a corpus moved to another folder, say). Refused
  unless named; named, accepted and saved, with the change kept in ``config_history``.
- **refused**: everything that alters a result (space, size, budget, objectives and their
  directions, seeds per candidate, every other trainer field, recall). Trials measured under
  the old value would be ranked beside trials measured under the new one; a new study name
  is the way out.

What a study measures also rests on defaults its config does not hold: a recall task's
vocabulary, sequence length and pairs come from the proxy (``PROXY_TASK_SETTINGS``, the
published task defaults). Those are saved beside the config (``measured_with``), and a
relaunch by a hybridnas whose defaults resolve differently is refused the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hybridnas.errors import UserError

__all__ = ["ALLOWABLE", "FREE", "Change", "StudyChanged", "check_measured_with", "check_relaunch", "config_changes",
           "measured_with"]

FREE = ("trials", "concurrent", "storage", "runs_dir", "resources", "trainer.progress", "trainer.out_dir",
        "trainer.cache_dir")
ALLOWABLE = ("sampler", "baselines", "enqueue", "trainer.device", "trainer.compile", "trainer.corpus")


class StudyChanged(UserError):
    """A relaunch whose study file changes what the study measures; the message is one line."""


@dataclass(frozen=True)
class Change:
    key: str  # dotted, e.g. "budget.flops"
    old: Any  # the saved value (None: absent)
    new: Any

    @property
    def kind(self) -> str:
        """``free``, ``allowable`` or ``refused`` (see the module docstring)."""
        if _under(self.key, FREE):
            return "free"
        return "allowable" if _under(self.key, ALLOWABLE) else "refused"

    def __str__(self) -> str:
        return f"{self.key} {_short(self.old)} -> {_short(self.new)}"


def config_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Every dotted key whose value differs between two ``StudyConfig.model_dump(mode="json")``
    dicts; lists (objectives, baselines, enqueue) compare as wholes."""
    flat_saved, flat_new = _flatten(saved), _flatten(new)
    keys = sorted(set(flat_saved) | set(flat_new))
    return [Change(k, flat_saved.get(k), flat_new.get(k)) for k in keys if flat_saved.get(k) != flat_new.get(k)]


def check_relaunch(study: str, saved: Mapping[str, Any], new: Mapping[str, Any],
                   allowed: Iterable[str] = ()) -> list[Change]:
    """The changes a relaunch of ``study`` may save; raises :class:`StudyChanged` naming the
    first change it may not (a refused one, or an allowable one not in ``allowed``)."""
    allowed = tuple(allowed)
    for key in allowed:
        if not _under(key, ALLOWABLE):
            raise StudyChanged(f"--allow-change {key}: only {', '.join(ALLOWABLE)} (and the keys under them) "
                               "can be allowed; a change to what a study measures needs a new study name")
    changes = config_changes(saved, new)
    blocking = [c for c in changes if c.kind == "refused" or (c.kind == "allowable" and not _under(c.key, allowed))]
    blocking.sort(key=lambda c: c.kind != "refused")  # a refused change first: no flag lets it through
    if blocking:
        first, more = blocking[0], len(blocking) - 1
        named = ", ".join(c.key for c in blocking[1:4]) + (", ..." if more > 3 else "")
        also = f" (and {more} more: {named})" if more else ""
        way_out = (f"--allow-change {first.key}" if first.kind == "allowable"
                   else "a new study name (--set name=...)")
        raise StudyChanged(f"study {study} was created with another config: {first}{also}; "
                           f"to run it anyway use {way_out}")
    return changes


def measured_with(config: Any) -> dict[str, Any]:
    """The defaults the measurements of ``config`` (a StudyConfig) resolve to, JSON-ready:
    ``{"recall": {task: its TaskSettings}}`` for the recall tasks it scores ({} for none)."""
    from hybridnas.studies.protocol import recall_config

    recall = recall_config(config)
    if recall is None:
        return {}
    tasks = {}
    for task in recall.tasks:
        settings = dataclasses.asdict(recall.settings(task))
        tasks[task] = {**settings, "knobs": dict(settings["knobs"])}  # (name, value) pairs: one key each
    return json.loads(json.dumps({"recall": tasks}, default=str))  # as the study attribute stores it


def check_measured_with(study: str, saved: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise :class:`StudyChanged` naming the first default that resolves differently now."""
    changes = config_changes(saved, new)
    if changes:
        raise StudyChanged(f"study {study} was measured with other defaults than this hybridnas's: {changes[0]}"
                           f"{f' (and {len(changes) - 1} more)' if len(changes) > 1 else ''}; "
                           "run it under a new study name (--set name=...), or with the hybridnas that created it")


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, Mapping):
            out.update(_flatten(item, dotted + "."))
        else:
            out[dotted] = item
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."
