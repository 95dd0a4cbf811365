"""Deterministic synthetic recall tasks that score candidate architectures.

Seven token-level tasks probe what a hybrid attention / Mamba-2 stack can recall in context:
MQAR from Zoology (Arora et al. 2023, arXiv 2312.04927; ``zoology/data/multiquery_ar.py``) and
the six MAD tasks (Poli et al. 2024, arXiv 2403.17844; ``mad-lab/mad/data/instances.py``,
whose published baselines train 2-block models of width 128). Every task is cast as
next-token prediction with sparse labels, so one causal LM scores them all:

* ``inputs[b]`` is a ``[seq_len]`` int64 token sequence;
* ``targets[b, t]`` is what the model must output after reading ``inputs[b, :t+1]``, and
  ``IGNORE`` (-100, torch ``cross_entropy``'s ``ignore_index``) everywhere except the task's
  *answer positions*; :func:`answer_metrics` gives loss and accuracy over those only.

MAD trains on every next token and scores only the answers; here both splits carry
answer-only targets, so the training signal is the recall itself rather than predicting
random keys (which a small model cannot learn and which only adds noise to the score).

Below V = ``vocab_size``, L = ``seq_len``; special tokens sit at the top of the vocabulary,
as in MAD, and V always counts them.

**mqar** (knobs ``num_kv_pairs`` k, ``power_a``, ``random_non_queries``). Layout: k pairs
``k1 v1 ... kk vk`` (keys distinct, from [1, V/2); values distinct, from [V/2, V)), then a
query region of L-2k tokens where every key appears once more, at offset 2g with the gaps g
drawn without replacement, P(g) ∝ (g+1)^(power_a-1) over [0, (L-2k)/2): Zoology's power law,
queries crowd near the pairs for power_a → 0 (Zoology: 0.01), uniform at 1. Every other
position is filler: 0, or with ``random_non_queries`` a random token. Answers: at each query
(the key token itself), target = its value; exactly k per row. Deviation: Zoology's random
filler may equal one of the row's keys (an unlabelled repeat, in ~2.5% of rows at (64, 4));
here it never does, so every repeated key is a query.

**in_context_recall** (knob ``multi_query``, MAD's baseline True). Of the n ordinary tokens
(n = V, or V-1 when a copy prefix V-1 is needed), keys are [0, ⌊n/2⌋) and values [⌊n/2⌋, n);
each key gets a uniformly drawn value on its first appearance and keeps it within the row.
Layout: L/2 two-token slots ``key value``; the last slot repeats a key already shown.
Answers: at every key that appeared earlier in the row, target = its value (the next token).
With ``multi_query=False``: L/2-1 pairs, the copy prefix, then one earlier key; the only
answer is that last position, target = its value (never shown, as in MAD).

**noisy_recall** (knobs ``frac_noise``, ``noise_vocab_size`` N, ``multi_query``).
in_context_recall with the N noise tokens taken out of the ordinary range (keys and values
share V-N); each pair slot but the probe (and one slot forced to hold a pair, so a probe
exists) is replaced with probability ``frac_noise`` by two random noise tokens. Answers: as in
in_context_recall; noise slots never hold one. MAD's sweep: frac_noise 0.2 to 0.8.

**fuzzy_recall** (knobs ``k_motif_size``, ``v_motif_size``, ``multi_query``). As
in_context_recall with a pad token (V-1; V-2 single-query, the copy prefix taking V-1), but a
key is a motif of 1..k_motif_size distinct key tokens and a value a motif of
1..v_motif_size value tokens, the sizes uniform per pair; a repeated key reuses its value
motif. Pairs are packed while another largest pair still fits before the probe pair (which
repeats an earlier key); the row is left-padded to L. Keys and values come from disjoint
ranges, so the motif boundaries are unambiguous. Answers: every token of a value motif that
follows a repeated key motif, i.e. targets at the key's last token and at each value token
but the last, each = the next value token (single-query: the probe's only, whose last value
token falls just past the row). Deviation: MAD prompts its test split with largest-size keys
only; here train and test are drawn alike.

**selective_copying** (knob ``num_tokens_to_copy`` n). Tokens [0, V-2), blank V-2, copy
V-1. Layout: n random tokens at uniformly random (ordered) positions among the first L-n-1,
blanks elsewhere; then the copy token; then n blanks. Answers: the n blanks after the copy
token, the i-th target = the i-th scattered token (the model is never fed its outputs, as in
MAD). Deviation: MAD inserts blanks only before tokens, so its last token always sits right
before the copy token, and draws those places from numpy's global RNG.

**compression** (no knobs). Tokens [0, V-2), blank V-2, compress V-1. Layout: m = L/2
random tokens, the compress token, then m-1 blanks. Answers: the compress token and the
blanks, target at position m+i = token i: the model replays the sequence from what it holds
after the marker, one token per placeholder. MAD enforces a true bottleneck with an
autoencoder backbone (encode L-1 tokens + marker, decode all of them from the last position's
vector with an MLP); a causal LM cannot, so attention may look back and this becomes a
non-selective copy, while a recurrent layer must carry the sequence in its state.

**memorization** (knobs ``frac_noise``, ``noise_vocab_size`` N). A fixed table, drawn once
from the seed and shared by train and test, maps each of the K = ⌊(V-1-N)/2⌋ key tokens
[0, K) to a distinct value token in [K, V-1-N). Layout: L/2 slots ``key INSERT`` (INSERT =
V-1); with ``frac_noise`` a slot becomes two noise tokens (one slot always holds a key).
Answers: at every INSERT, target = table[key]. Only the sequences differ between splits.

**Default settings** (:func:`default_settings`), the published baselines but for the sizes:

=================  =====  ===  ======================================================
task               V      L    knobs
=================  =====  ===  ======================================================
mqar               8192   64   num_kv_pairs 4, power_a 0.01, random_non_queries True
in_context_recall  16     128  multi_query True
fuzzy_recall       16     128  k_motif_size 3, v_motif_size 3, multi_query True
noisy_recall       32     128  frac_noise 0.2, noise_vocab_size 16, multi_query True
selective_copying  16     256  num_tokens_to_copy 16
compression        16     32   (none)
memorization       256    32   frac_noise 0.0, noise_vocab_size 0
=================  =====  ===  ======================================================

Every task defaults to n_train 2000 and n_test 200, enough to rank small models trained on a
CPU in minutes. MAD uses 12,800 / 1,280 (memorization 256 train) and Zoology 100,000 / 3,000
with (L, k) in {(64, 4), (128, 8), (256, 16)} and more; override ``n_train``/``n_test`` (and
L, k) for faithful runs.

**Determinism.** :func:`make_task` draws from numpy Generators seeded by a SeedSequence hash
of (seed, task name, stream): train, test, and (memorization) the table each get their own
stream, and the global RNGs are never touched. Test rows that equal a training row are
redrawn from the test stream, so the test set is held out; where the space of sequences is
too small for that, :func:`make_task` raises.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hybridnas.errors import UserError

__all__ = [
    "IGNORE",
    "TASK_NAMES",
    "TaskSettings",
    "TaskSettingsError",
    "TaskData",
    "default_settings",
    "with_overrides",
    "make_task",
    "answer_metrics",
    "answer_loss",
]

IGNORE = -100  # target at non-answer positions (torch cross_entropy's ignore_index)
TASK_NAMES = (
    "mqar",
    "in_context_recall",
    "fuzzy_recall",
    "noisy_recall",
    "selective_copying",
    "compression",
    "memorization",
)

_BASE_FIELDS = ("vocab_size", "seq_len", "n_train", "n_test")
_N_TRAIN, _N_TEST = 2000, 200
# name -> (vocab_size, seq_len, knob defaults); a knob's default also fixes its type.
_DEFAULTS: dict[str, tuple[int, int, dict[str, Any]]] = {
    "mqar": (8192, 64, {"num_kv_pairs": 4, "power_a": 0.01, "random_non_queries": True}),
    "in_context_recall": (16, 128, {"multi_query": True}),
    "fuzzy_recall": (16, 128, {"k_motif_size": 3, "v_motif_size": 3, "multi_query": True}),
    "noisy_recall": (32, 128, {"frac_noise": 0.2, "noise_vocab_size": 16, "multi_query": True}),
    "selective_copying": (16, 256, {"num_tokens_to_copy": 16}),
    "compression": (16, 32, {}),
    "memorization": (256, 32, {"frac_noise": 0.0, "noise_vocab_size": 0}),
}
_TABLE, _TRAIN, _TEST = 0, 1, 2  # RNG stream ids
_MAX_REDRAWS = 100  # rounds of redrawing test rows that collide with training rows


# --------------------------------------------------------------------------- settings


class TaskSettingsError(UserError):
    """Task settings that cannot make a task (an unknown task, setting or infeasible value)."""


@dataclass(frozen=True)
class TaskSettings:
    """One task at one difficulty; validated on construction (see :func:`with_overrides`)."""

    name: str
    vocab_size: int  # the model's vocabulary for this task (all special tokens included)
    seq_len: int
    n_train: int  # examples in the training set
    n_test: int  # examples in the held-out test set
    knobs: tuple[tuple[str, Any], ...]  # task-specific difficulty knobs, sorted (hashable)

    def __post_init__(self) -> None:
        if self.name not in _DEFAULTS:
            raise TaskSettingsError(f"unknown task {self.name!r} (tasks: {', '.join(TASK_NAMES)})")
        # Sorted so that equal settings compare and hash equal whatever order they came in.
        knobs = tuple(sorted((tuple(kv) for kv in self.knobs), key=lambda kv: kv[0]))
        object.__setattr__(self, "knobs", knobs)
        _validate(self)

    def knob(self, key: str, default: Any = None) -> Any:
        """The value of knob ``key``, or ``default`` if this task has no such knob."""
        return dict(self.knobs).get(key, default)


def default_settings(name: str) -> TaskSettings:
    """The published baseline settings of task ``name`` (sizes: see the module docstring)."""
    if name not in _DEFAULTS:
        raise TaskSettingsError(f"unknown task {name!r} (tasks: {', '.join(TASK_NAMES)})")
    vocab_size, seq_len, knobs = _DEFAULTS[name]
    return TaskSettings(name, vocab_size, seq_len, _N_TRAIN, _N_TEST, tuple(knobs.items()))


def with_overrides(settings: TaskSettings, **changes: Any) -> TaskSettings:
    """``settings`` with some of vocab_size/seq_len/n_train/n_test or the task's knobs changed.

    Raises a one-line ValueError naming the setting for an unknown name, a wrong type, or an
    infeasible combination (e.g. MQAR with seq_len < 4*num_kv_pairs).
    """
    knobs = dict(settings.knobs)
    allowed = (*_BASE_FIELDS, *knobs)
    for key in changes:
        if key not in allowed:
            raise TaskSettingsError(
                f"task {settings.name}: unknown setting {key!r} (settings: {', '.join(allowed)})"
            )
    base = {key: changes.get(key, getattr(settings, key)) for key in _BASE_FIELDS}
    for key in knobs.keys() & changes.keys():
        knobs[key] = _coerce(knobs[key], changes[key])
    return TaskSettings(settings.name, **base, knobs=tuple(knobs.items()))


def _coerce(default: Any, value: Any) -> Any:
    # An int given for a float knob (frac_noise=0) is stored as a float so that the settings
    # compare, hash and print the same however they were written.
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# ------------------------------------------------------------------------- validation


def _require(ok: bool, s: TaskSettings, key: str, why: str) -> None:
    if not ok:
        value = getattr(s, key) if key in _BASE_FIELDS else s.knob(key)
        raise TaskSettingsError(f"task {s.name}: {key}={value!r} {why}")


def _validate(s: TaskSettings) -> None:
    defaults = _DEFAULTS[s.name][2]
    for key, _ in s.knobs:
        if key not in defaults:
            raise TaskSettingsError(
                f"task {s.name}: unknown setting {key!r} (settings: "
                f"{', '.join((*_BASE_FIELDS, *defaults))})"
            )
    for key in defaults.keys() - dict(s.knobs).keys():
        raise TaskSettingsError(f"task {s.name}: knobs lack {key!r} (knobs: {', '.join(defaults)})")
    if len(dict(s.knobs)) != len(s.knobs):
        raise TaskSettingsError(f"task {s.name}: a knob is given twice ({s.knobs})")
    for key in _BASE_FIELDS:
        least = 2 if key in ("vocab_size", "seq_len") else 1
        _require(_is_int(getattr(s, key)), s, key, "must be an int")
        _require(getattr(s, key) >= least, s, key, f"must be >= {least}")
    for key, default in defaults.items():
        _check_type(s, key, default)
    _CHECKS[s.name](s)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_type(s: TaskSettings, key: str, default: Any) -> None:
    value = s.knob(key)
    if isinstance(default, bool):
        _require(isinstance(value, (bool, np.bool_)), s, key, "must be a bool")
    elif isinstance(default, int):
        _require(_is_int(value), s, key, "must be an int")
    else:
        real = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        _require(real and math.isfinite(value), s, key, "must be a finite number")


def _check_mqar(s: TaskSettings) -> None:
    k = s.knob("num_kv_pairs")
    _require(k >= 1, s, "num_kv_pairs", "must be >= 1")
    _require(s.knob("power_a") > 0, s, "power_a", "must be > 0 (1.0 gives uniform gaps)")
    _require(s.seq_len % 2 == 0, s, "seq_len", "must be even (queries sit at even offsets)")
    _require(s.seq_len >= 4 * k, s, "seq_len", f"must be >= 4*num_kv_pairs = {4 * k}")
    need = 2 * k + 2  # k distinct keys in [1, V/2) (0 is the filler) and k values in [V/2, V)
    _require(s.vocab_size >= need, s, "vocab_size", f"must be >= 2*num_kv_pairs+2 = {need}")


def _check_noise(s: TaskSettings) -> None:
    frac = s.knob("frac_noise")
    _require(0 <= frac < 1, s, "frac_noise", "must be in [0, 1)")
    n_noise = s.knob("noise_vocab_size")
    _require(n_noise >= 0, s, "noise_vocab_size", "must be >= 0")
    _require(frac == 0 or n_noise >= 1, s, "noise_vocab_size", "must be >= 1 when frac_noise > 0")


def _check_recall(s: TaskSettings) -> None:
    if s.name == "noisy_recall":
        _check_noise(s)
    lay = _recall_layout(s)
    if s.name == "fuzzy_recall":
        _require(lay.kmax >= 1, s, "k_motif_size", "must be >= 1")
        _require(lay.vmax >= 1, s, "v_motif_size", "must be >= 1")
        need = 2 * (lay.kmax + lay.vmax)  # one largest pair, then the largest probe pair
        why = f"must be >= 2*(k_motif_size+v_motif_size) = {need}"
        _require(s.seq_len >= need, s, "seq_len", why)
    else:
        _require(s.seq_len % 2 == 0, s, "seq_len", "must be even (two-token slots)")
        _require(s.seq_len >= 4, s, "seq_len", "must be >= 4 (a pair, then the probe)")
    # A motif holds distinct tokens, so each range must be at least as wide as its motifs.
    keys_why = f"leaves {lay.n_keys} key tokens, needs >= {lay.kmax}"
    _require(lay.n_keys >= lay.kmax, s, "vocab_size", keys_why)
    values_why = f"leaves {lay.n_values} value tokens, needs >= {lay.vmax}"
    _require(lay.n_values >= lay.vmax, s, "vocab_size", values_why)


def _check_selective_copying(s: TaskSettings) -> None:
    n = s.knob("num_tokens_to_copy")
    _require(n >= 1, s, "num_tokens_to_copy", "must be >= 1")
    _require(s.seq_len > 2 * n + 1, s, "seq_len", f"must be > 2*num_tokens_to_copy+1 = {2 * n + 1}")
    _require(s.vocab_size >= 3, s, "vocab_size", "must be >= 3 (blank and copy tokens + 1)")


def _check_compression(s: TaskSettings) -> None:
    _require(s.seq_len % 2 == 0, s, "seq_len", "must be even (the sequence, then its replay)")
    _require(s.vocab_size >= 3, s, "vocab_size", "must be >= 3 (blank and compress tokens + 1)")


def _check_memorization(s: TaskSettings) -> None:
    _check_noise(s)
    _require(s.seq_len % 2 == 0, s, "seq_len", "must be even (two-token slots)")
    need = 3 + s.knob("noise_vocab_size")  # insert token, noise tokens, one key, one value
    _require(s.vocab_size >= need, s, "vocab_size", f"must be >= 3+noise_vocab_size = {need}")


# ---------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Recall:
    """Token layout of the three in-context recall tasks (MAD's, see the module docstring)."""

    n_keys: int  # keys are [0, n_keys)
    n_values: int  # values are [n_keys, n_keys + n_values)
    n_noise: int  # noise tokens follow the values
    pad: int | None  # fuzzy_recall only
    copy: int | None  # single-query only: the copy prefix before the probe key
    kmax: int
    vmax: int

    @property
    def noise_lo(self) -> int:
        return self.n_keys + self.n_values


def _recall_layout(s: TaskSettings) -> _Recall:
    multi, fuzzy = s.knob("multi_query"), s.name == "fuzzy_recall"
    n_noise = s.knob("noise_vocab_size", 0)
    ordinary = s.vocab_size - int(fuzzy) - int(not multi) - n_noise
    return _Recall(
        n_keys=ordinary // 2,
        n_values=ordinary - ordinary // 2,
        n_noise=n_noise,
        pad=s.vocab_size - 1 - int(not multi) if fuzzy else None,
        copy=None if multi else s.vocab_size - 1,
        kmax=s.knob("k_motif_size", 1),
        vmax=s.knob("v_motif_size", 1),
    )


def _memorization_layout(s: TaskSettings) -> tuple[int, int]:
    """(n_keys, insert token); values follow the keys, then the noise tokens."""
    ordinary = s.vocab_size - 1 - s.knob("noise_vocab_size")
    return ordinary // 2, s.vocab_size - 1


# ------------------------------------------------------------------------- generators
# Each generator returns (inputs, targets), both [n, seq_len] int64 numpy arrays.

_Rng = np.random.Generator
_Arrays = tuple[np.ndarray, np.ndarray]


def _distinct(rng: _Rng, n: int, k: int, low: int, high: int) -> np.ndarray:
    """[n, k] ints from [low, high), distinct within each row, in random order."""
    return low + np.stack([rng.choice(high - low, size=k, replace=False) for _ in range(n)])


def _powerlaw_gaps(rng: _Rng, n: int, k: int, space: int, power_a: float) -> np.ndarray:
    """[n, k] distinct gaps in [0, space), drawn without replacement with P(g) ∝ (g+1)^(a-1).

    Gumbel top-k: the k largest of log p + Gumbel noise are distributed exactly as k draws
    without replacement (Zoology's ``np.random.choice(replace=False, p=p)``), in one batch.
    """
    logp = (power_a - 1.0) * np.log(np.arange(1, space + 1))
    keys = logp + rng.gumbel(size=(n, space))
    return np.argsort(-keys, axis=1, kind="stable")[:, :k]


def _skip_keys(draws: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Map draws [n, m] from [0, V-k) onto [0, V) minus each row's k keys [n, k], bijectively."""
    # The j-th non-key integer is j + #{keys at or below it}; with the keys sorted,
    # key_i - i counts the non-keys below key_i, which gives that count by comparison.
    below = np.sort(keys, axis=1) - np.arange(keys.shape[1])
    return draws + (below[:, None, :] <= draws[:, :, None]).sum(-1)


def _gen_mqar(s: TaskSettings, rng: _Rng, n: int, _: Any) -> _Arrays:
    L, V, k = s.seq_len, s.vocab_size, s.knob("num_kv_pairs")
    keys = _distinct(rng, n, k, 1, V // 2)  # [n, k]; 0 stays free for the filler
    values = _distinct(rng, n, k, V // 2, V)  # [n, k]
    gaps = _powerlaw_gaps(rng, n, k, (L - 2 * k) // 2, s.knob("power_a"))  # [n, k]
    if s.knob("random_non_queries"):
        inputs = _skip_keys(rng.integers(0, V - k, size=(n, L)), keys)
    else:
        inputs = np.zeros((n, L), dtype=np.int64)
    inputs[:, 0 : 2 * k : 2], inputs[:, 1 : 2 * k : 2] = keys, values
    rows, query_pos = np.arange(n)[:, None], 2 * k + 2 * gaps  # [n, k]
    inputs[rows, query_pos] = keys
    targets = np.full((n, L), IGNORE, dtype=np.int64)
    targets[rows, query_pos] = values
    return inputs, targets


def _recall_slots(s: TaskSettings, rng: _Rng, n: int, lay: _Recall):
    """Body slots of in_context/noisy recall: keys [n, m], value table [n, K], noise mask [n, m]."""
    m = s.seq_len // 2 - 1  # the last two positions hold the probe (or copy prefix + probe)
    keys = rng.integers(0, lay.n_keys, size=(n, m))
    table = rng.integers(lay.n_keys, lay.noise_lo, size=(n, lay.n_keys))  # value on 1st sight
    noise = rng.random((n, m)) < s.knob("frac_noise", 0.0)
    noise[np.arange(n), rng.integers(0, m, size=n)] = False  # a pair for the probe to repeat
    return keys, table, noise


def _first_seen(keys: np.ndarray, noise: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """repeat [n, m]: slot holds a key shown in an earlier slot; seen [n, K]: keys shown."""
    n, m = keys.shape
    rows, seen = np.arange(n), np.zeros((n, n_keys), dtype=bool)
    repeat = np.zeros((n, m), dtype=bool)
    for j in range(m):  # m <= L/2 steps, each vectorised over the rows
        shown = ~noise[:, j]
        repeat[:, j] = seen[rows, keys[:, j]] & shown
        seen[rows, keys[:, j]] |= shown
    return repeat, seen


def _gen_recall(s: TaskSettings, rng: _Rng, n: int, _: Any) -> _Arrays:
    lay, L, rows = _recall_layout(s), s.seq_len, np.arange(n)
    keys, table, noise = _recall_slots(s, rng, n, lay)
    repeat, seen = _first_seen(keys, noise, lay.n_keys)
    body = np.stack([keys, table[rows[:, None], keys]], axis=-1)  # [n, m, 2]
    if lay.n_noise:
        noise_tok = rng.integers(lay.noise_lo, lay.noise_lo + lay.n_noise, size=body.shape)
        body[noise] = noise_tok[noise]
    probe = np.argmax(np.where(seen, rng.random(seen.shape), -1.0), axis=1)  # uniform seen key
    answer = table[rows, probe]
    inputs = np.empty((n, L), dtype=np.int64)
    inputs[:, : L - 2] = body.reshape(n, L - 2)
    targets = np.full((n, L), IGNORE, dtype=np.int64)
    if lay.copy is None:  # multi-query: every repeated key is asked, the probe included
        body_targets = np.where(repeat, body[:, :, 1], IGNORE)
        targets[:, : L - 2 : 2] = body_targets
        inputs[:, L - 2], inputs[:, L - 1], targets[:, L - 2] = probe, answer, answer
    else:  # single query: copy prefix, the probe key, its value the only answer
        inputs[:, L - 2], inputs[:, L - 1], targets[:, L - 1] = lay.copy, probe, answer
    return inputs, targets


def _motifs(rng: _Rng, count: int, vocab: int, size_max: int, low: int) -> list:
    """``count`` motifs (tuples) of 1..size_max distinct tokens from [low, low+vocab)."""
    sizes = rng.integers(1, size_max + 1, size=count)
    order = np.argsort(rng.random((count, vocab)), axis=1)[:, :size_max] + low
    return [tuple(row[:size]) for row, size in zip(order.tolist(), sizes.tolist(), strict=True)]


def _fuzzy_row(lay: _Recall, rng: _Rng, stream_len: int) -> tuple[list, list]:
    """One row before padding: its tokens and, per token, whether it is an answer."""
    most = stream_len // 2  # pairs have >= 2 tokens, so no row needs more motifs than this
    key_motifs = _motifs(rng, most, lay.n_keys, lay.kmax, 0)
    value_motifs = _motifs(rng, most, lay.n_values, lay.vmax, lay.n_keys)
    multi = lay.copy is None
    reserve = lay.kmax + lay.vmax + (not multi)  # room kept for the probe (and copy prefix)
    tokens: list[int] = []
    answer: list[bool] = []
    table: dict[tuple[int, ...], tuple[int, ...]] = {}
    for key, fresh in zip(key_motifs, value_motifs, strict=True):  # both `most` long
        if len(tokens) + lay.kmax + lay.vmax + reserve > stream_len:
            break
        asked = multi and key in table  # single query asks the probe only
        value = table.setdefault(key, fresh)
        tokens += [*key, *value]
        answer += [False] * len(key) + [asked] * len(value)
    probe = list(table)[rng.integers(len(table))]  # uniform over the distinct keys shown
    prefix = [] if lay.copy is None else [lay.copy]  # lay.copy is None exactly when multi
    tokens += [*prefix, *probe, *table[probe]]
    answer += [False] * (len(prefix) + len(probe)) + [True] * len(table[probe])
    return tokens, answer


def _gen_fuzzy(s: TaskSettings, rng: _Rng, n: int, _: Any) -> _Arrays:
    lay, L = _recall_layout(s), s.seq_len
    # Single query leaves the probe's last value token just past the row, as MAD does.
    stream_len = L if lay.copy is None else L + 1
    inputs = np.empty((n, L), dtype=np.int64)
    targets = np.full((n, L), IGNORE, dtype=np.int64)
    for b in range(n):
        tokens, answer = _fuzzy_row(lay, rng, stream_len)
        pad = stream_len - len(tokens)  # left padding keeps the probe at the end of the row
        stream = np.array([lay.pad] * pad + tokens, dtype=np.int64)
        asked = np.array([False] * pad + answer)
        inputs[b] = stream[:L]
        # targets[t] is the token after t: an answer if that token is one.
        targets[b, : stream_len - 1] = np.where(asked[1:], stream[1:], IGNORE)
    return inputs, targets


def _gen_selective_copying(s: TaskSettings, rng: _Rng, n: int, _: Any) -> _Arrays:
    L, V, k = s.seq_len, s.vocab_size, s.knob("num_tokens_to_copy")
    blank, copy, span = V - 2, V - 1, L - k - 1  # the tokens are scattered over [0, span)
    tokens = rng.integers(0, V - 2, size=(n, k))
    places = np.sort(np.argsort(rng.random((n, span)), axis=1)[:, :k], axis=1)  # uniform k-subset
    inputs = np.full((n, L), blank, dtype=np.int64)
    inputs[np.arange(n)[:, None], places] = tokens
    inputs[:, span] = copy
    targets = np.full((n, L), IGNORE, dtype=np.int64)
    targets[:, span + 1 :] = tokens  # one token per blank placeholder after the copy token
    return inputs, targets


def _gen_compression(s: TaskSettings, rng: _Rng, n: int, _: Any) -> _Arrays:
    L, V = s.seq_len, s.vocab_size
    m, blank, compress = L // 2, V - 2, V - 1
    tokens = rng.integers(0, V - 2, size=(n, m))
    inputs = np.full((n, L), blank, dtype=np.int64)
    inputs[:, :m], inputs[:, m] = tokens, compress
    targets = np.full((n, L), IGNORE, dtype=np.int64)
    targets[:, m:] = tokens  # the marker asks for token 0, the i-th blank for token i
    return inputs, targets


def _memorization_table(s: TaskSettings, rng: _Rng) -> np.ndarray:
    """[n_keys] the fixed key -> value map: distinct values, as MAD's zip of permutations."""
    n_keys, _ = _memorization_layout(s)
    n_values = s.vocab_size - 1 - s.knob("noise_vocab_size") - n_keys
    return n_keys + rng.permutation(n_values)[:n_keys]


def _gen_memorization(s: TaskSettings, rng: _Rng, n: int, table: np.ndarray) -> _Arrays:
    L, n_noise = s.seq_len, s.knob("noise_vocab_size")
    (n_keys, insert), m = _memorization_layout(s), s.seq_len // 2
    keys = rng.integers(0, n_keys, size=(n, m))
    noise = rng.random((n, m)) < s.knob("frac_noise")
    noise[np.arange(n), rng.integers(0, m, size=n)] = False  # at least one key per row
    inputs = np.stack([keys, np.full_like(keys, insert)], axis=-1)  # [n, m, 2]
    targets = np.stack([np.full_like(keys, IGNORE), np.where(noise, IGNORE, table[keys])], axis=-1)
    if n_noise:
        low = insert - n_noise
        inputs[noise] = rng.integers(low, insert, size=inputs.shape)[noise]
    return inputs.reshape(n, L), targets.reshape(n, L)


_Generator = Callable[[TaskSettings, _Rng, int, Any], _Arrays]
_CHECKS: dict[str, Callable[[TaskSettings], None]] = {
    "mqar": _check_mqar,
    "in_context_recall": _check_recall,
    "fuzzy_recall": _check_recall,
    "noisy_recall": _check_recall,
    "selective_copying": _check_selective_copying,
    "compression": _check_compression,
    "memorization": _check_memorization,
}
_GENERATORS: dict[str, _Generator] = {
    "mqar": _gen_mqar,
    "in_context_recall": _gen_recall,
    "fuzzy_recall": _gen_fuzzy,
    "noisy_recall": _gen_recall,
    "selective_copying": _gen_selective_copying,
    "compression": _gen_compression,
    "memorization": _gen_memorization,
}


# ------------------------------------------------------------------------------- data


# eq=False: dataclass equality would compare tensors with ``==`` and fail on their truth value.
@dataclass(frozen=True, eq=False)
class TaskData:
    """A task's train and held-out test sets (next-token convention; see the module docstring)."""

    settings: TaskSettings
    train_inputs: torch.Tensor  # [n_train, seq_len] int64
    train_targets: torch.Tensor  # [n_train, seq_len] int64, IGNORE except at answer positions
    test_inputs: torch.Tensor  # [n_test, seq_len]
    test_targets: torch.Tensor  # [n_test, seq_len]


def _rng(seed: int, name: str, stream: int) -> np.random.Generator:
    # crc32, not hash(): str hashes change between interpreter runs (PYTHONHASHSEED).
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), stream]))


def _held_out(gen: Callable[[int], _Arrays], n: int, train: np.ndarray, name: str) -> _Arrays:
    """n test rows from ``gen`` (which draws from the test stream), none equal to a train row."""
    seen = {row.tobytes() for row in train}
    inputs, targets = gen(n)
    for _ in range(_MAX_REDRAWS):
        clash = np.flatnonzero([row.tobytes() in seen for row in inputs])
        if clash.size == 0:
            return inputs, targets
        inputs[clash], targets[clash] = gen(clash.size)
    raise ValueError(
        f"task {name}: cannot draw a test set disjoint from the training set; "
        "the sequence space is too small (raise vocab_size or seq_len)"
    )


def make_task(settings: TaskSettings, seed: int = 0) -> TaskData:
    """The task's train set [n_train, seq_len] and held-out test set [n_test, seq_len].

    Deterministic in (settings, seed): train and test come from separate numpy streams
    seeded by a hash of (seed, task name, split); no test input row equals a training row.
    """
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    s, generate = settings, _GENERATORS[settings.name]
    shared = None
    if s.name == "memorization":  # one table for both splits; only the sequences differ
        shared = _memorization_table(s, _rng(seed, s.name, _TABLE))
    train_inputs, train_targets = generate(s, _rng(seed, s.name, _TRAIN), s.n_train, shared)
    test_rng = _rng(seed, s.name, _TEST)
    test_inputs, test_targets = _held_out(
        lambda n: generate(s, test_rng, n, shared), s.n_test, train_inputs, s.name
    )
    tensors = (train_inputs, train_targets, test_inputs, test_targets)
    return TaskData(s, *(torch.from_numpy(np.ascontiguousarray(a, np.int64)) for a in tensors))


# ---------------------------------------------------------------------------- metrics


def answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer positions of logits [B, T, V] and targets [B, T]
    (IGNORE elsewhere), in float32: :func:`answer_metrics`' loss without its checks and its
    accuracy, whose host syncs and data-dependent selection a CUDA graph or ``vmap`` cannot take.
    Unlike there, a nan or inf logit at a non-answer position reaches the gradient."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def answer_metrics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Loss and accuracy over the answer positions only.

    Args:
        logits: [B, T, V] model outputs (any float dtype; the loss is computed in float32).
        targets: [B, T] int64, IGNORE except at answer positions.

    Returns:
        (mean cross-entropy over the answer positions, a differentiable 0-d tensor;
        accuracy of the argmax there, a float in [0, 1]; ties go to the lowest token id).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        shapes = f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        raise ValueError(f"logits must be [B, T, V] and targets [B, T], got {shapes}")
    asked = targets != IGNORE
    if not bool(asked.any()):
        raise ValueError("targets have no answer positions (all IGNORE)")
    # Selecting the answer rows first keeps other positions out of both numbers, even
    # where their logits are inf or nan, and gives them zero gradient.
    picked, gold = logits[asked].float(), targets[asked]
    loss = F.cross_entropy(picked, gold)
    accuracy = (picked.argmax(dim=-1) == gold).float().mean().item()
    return loss, accuracy
