"""Long-context probes of a trained language model: passkey retrieval and length extrapolation.

Bae et al. (2025) compare how far past their training length hybrids, sliding-window
attention, Mamba-2 and pure attention keep working: on needle-in-a-haystack, hybrids
retrieve up to about 1.5x the training length; sliding-window attention and Mamba miss
needles outside their (effective) window; pure attention drops beyond its training length.
Two probes measure this for any candidate:

- :func:`passkey_probe`: the passkey task of Mohtashami & Jaggi (2023). A prompt of
  repeated filler ("The grass is green. The sky is blue. ...") hides the needle
  "The pass key is 48213. Remember it. 48213 is the pass key." at a relative depth of the
  filler and ends with "What is the pass key? The pass key is". The model greedily
  continues; a trial is a hit when the first ``digits`` digits of the continuation are the
  key. Cells are (length factor x depth); the score is the mean accuracy over cells.
- :func:`length_extrapolation`: mean next-token cross-entropy (nats) on validation windows
  of 1x, 2x, 4x the training length.

:func:`probe_long_context` runs both and returns one JSON-ready dict.

How a prompt is built (:func:`build_passkey_prompt`): every piece (each filler sentence, the
needle, the question) is encoded on its own and the token ids are concatenated, pieces
joined by one space (a leading space on every piece but the first). Encoding pieces
separately makes lengths additive, so the prompt length and the needle's token position
are exact for any tokenizer (for byte-level BPE, whose pre-tokenizer splits before a
space, it is also what encoding the whole text would give). Filler sentences are added, in
their fixed cycle, while the prompt stays within the requested length, so a prompt is at
most the requested length and short of it by less than one sentence. The needle goes
between the two filler sentences whose boundary is nearest to ``depth`` x the filler's
tokens: depth 0.0 puts it first in the prompt, 1.0 right before the question.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PasskeyPrompt",
    "PasskeyReport",
    "build_passkey_prompt",
    "passkey_probe",
    "length_extrapolation",
    "probe_long_context",
    "FILLER",
    "NEEDLE",
    "QUESTION",
]

# The classic passkey prompt (Mohtashami & Jaggi 2023), one sentence per entry so the
# filler can stop at a sentence boundary.
FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"

# Greedy decoding stops once every row has ``digits`` digits, or after digits + this many
# tokens: one for the space before the number, one of slack for a stray token.
EXTRA_DECODE_TOKENS = 2
DEFAULT_CHUNK_TOKENS = 16_384  # tokens per forward pass in length_extrapolation


# ---- prompts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PasskeyPrompt:
    """One passkey prompt: ``tokens`` [length] with the needle at ``tokens[needle_start:needle_end]``."""

    tokens: list[int]
    key: str
    # token index where the needle begins (== filler tokens before it); past the start of
    # the prompt this is its leading space, which BPE merges into the needle's first word
    needle_start: int
    needle_end: int
    filler_tokens: int  # filler tokens in the whole prompt, before and after the needle

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def depth(self) -> float:
        """Where the needle actually sits: filler tokens before it / all filler tokens."""
        return self.needle_start / self.filler_tokens if self.filler_tokens else 0.0


class _PieceEncoder:
    """Encodes prompt pieces once each; a piece after the first carries a leading space."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str, *, first: bool) -> list[int]:
        text = text if first else " " + text
        if text not in self._cache:
            self._cache[text] = list(self.tokenizer.encode_documents([text])[0])
        return self._cache[text]


def _filler_sentences(encode: _PieceEncoder, budget: int) -> list[str]:
    """Filler sentences, in FILLER's cycle, whose tokens (each with a leading space) sum to
    at most ``budget``."""
    sentences: list[str] = []
    used = 0
    while True:
        text = FILLER[len(sentences) % len(FILLER)]
        n = len(encode(text, first=False))
        if n < 1:  # would loop forever
            raise ValueError(f"tokenizer: encodes the filler sentence {text!r} to no tokens")
        if used + n > budget:
            return sentences
        sentences.append(text)
        used += n


def _needle_slot(sentence_lengths: Sequence[int], depth: float) -> int:
    """How many filler sentences go before the needle: the sentence boundary nearest to
    ``depth`` x the filler's tokens (ties go to the earlier boundary)."""
    bounds = np.concatenate([[0], np.cumsum(sentence_lengths)])
    return int(np.argmin(np.abs(bounds - depth * bounds[-1])))


def _assemble(encode: _PieceEncoder, sentences: list[str], depth: float, key: str) -> PasskeyPrompt:
    """Concatenate filler before the needle, needle, filler after it, question."""
    slot = _needle_slot([len(encode(s, first=False)) for s in sentences], depth)
    pieces = [*sentences[:slot], NEEDLE.format(key=key), *sentences[slot:], QUESTION]
    encoded = [encode(piece, first=i == 0) for i, piece in enumerate(pieces)]
    needle_start = sum(len(ids) for ids in encoded[:slot])
    needle_end = needle_start + len(encoded[slot])
    tokens = [t for ids in encoded for t in ids]
    filler = len(tokens) - (needle_end - needle_start) - len(encoded[-1])
    return PasskeyPrompt(tokens, key, needle_start, needle_end, filler)


def build_passkey_prompt(tokenizer, length: int, depth: float, key: str) -> PasskeyPrompt:
    """A passkey prompt of at most ``length`` tokens (short by less than one filler
    sentence), with the needle for ``key`` at relative ``depth`` of the filler.

    ``tokenizer`` needs ``encode_documents(list[str]) -> list[list[int]]``.
    Raises ValueError when ``length`` cannot hold the needle and the question.
    """
    if length < 1:
        raise ValueError(f"length: {length} tokens, expected a positive number")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth: {depth} is outside [0, 1]")
    if not key.isdigit():
        raise ValueError(f"key: {key!r} is not a string of digits")
    encode = _PieceEncoder(tokenizer)
    # budget with a leading space on every piece: the first piece drops its space, which
    # never makes it longer than the budget assumed (re-checked below for odd tokenizers)
    fixed = len(encode(NEEDLE.format(key=key), first=False)) + len(encode(QUESTION, first=False))
    if fixed > length:
        raise ValueError(
            f"length: {length} tokens cannot hold the needle and the question ({fixed} tokens)"
        )
    sentences = _filler_sentences(encode, length - fixed)
    while True:
        prompt = _assemble(encode, sentences, depth, key)
        if prompt.length <= length or not sentences:
            break
        sentences = sentences[:-1]  # a tokenizer whose unspaced first piece is longer
    if prompt.length > length:
        raise ValueError(
            f"length: {length} tokens cannot hold the needle and the question ({prompt.length} tokens)"
        )
    return prompt


# ---- decoding -----------------------------------------------------------------------------


@contextlib.contextmanager
def _inference(model) -> Iterator[None]:
    """no_grad and eval mode for the duration; the model's training flag is restored after."""
    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train(was_training)


def _model_device(model, device) -> torch.device:
    """``device`` if given, else where the model's first parameter lives (CPU if none)."""
    if device is not None:
        return torch.device(device)
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    first = next(params, None)
    return first.device if first is not None else torch.device("cpu")


def _digits_in(text: str) -> str:
    return "".join(re.findall(r"\d", text))


def _greedy_decode(model, prompts: Tensor, max_new: int, done: Callable[[Tensor], bool]) -> Tensor:
    """Greedy continuation of ``prompts`` [B, T] -> new tokens [B, n <= max_new]; stops early
    once ``done(new_tokens)`` is true.

    A ``HybridLM`` prefills a decode cache and then steps one token at a time; any other
    model is re-run on the full sequence for each new token (O(max_new) full forwards, which
    is simple and only costs a few passes because ``max_new`` is digits + 2).
    """
    from hybridnas.model import HybridLM  # lazily: the prompt builder needs no model code

    new = prompts.new_empty((prompts.shape[0], 0))
    if isinstance(model, HybridLM):
        cache = model.allocate_cache(prompts.shape[0], prompts.shape[1] + max_new)
        logits = model(prompts, cache)[:, -1]
    else:
        logits = model(prompts)[:, -1]
    for i in range(max_new):
        nxt = logits.argmax(dim=-1)
        new = torch.cat([new, nxt[:, None]], dim=1)
        if done(new) or i == max_new - 1:
            break
        if isinstance(model, HybridLM):
            logits = model.step(nxt, cache)
        else:
            logits = model(torch.cat([prompts, new], dim=1))[:, -1]
    return new


# ---- passkey ------------------------------------------------------------------------------


@dataclass
class PasskeyReport:
    """Passkey accuracy per (length factor, depth) cell, by factor, and overall."""

    cells: list[dict] = field(default_factory=list)  # {"length", "factor", "depth", "accuracy"}
    accuracy_by_factor: dict[float, float] = field(default_factory=dict)
    score: float = 0.0  # mean accuracy over all cells

    def to_dict(self) -> dict:
        """A JSON-ready dict; factor keys become strings ("1.5"), as JSON object keys are."""
        return {
            "cells": [dict(cell) for cell in self.cells],
            "accuracy_by_factor": {f"{k:g}": v for k, v in self.accuracy_by_factor.items()},
            "score": self.score,
        }


def _passkey(seed: int, factor: float, depth: float, trial: int, digits: int) -> str:
    """A ``digits``-digit key with no leading zero, a function of (seed, cell, trial) alone,
    so adding a factor or a depth does not change the keys of the other cells."""
    rng = np.random.default_rng([seed, round(factor * 1000), round(depth * 1000), trial])
    low = 10 ** (digits - 1) if digits > 1 else 0
    return str(int(rng.integers(low, 10**digits)))


def _check_passkey_args(train_seq_len, length_factors, depths, trials, digits) -> None:
    if train_seq_len < 1:
        raise ValueError(f"train_seq_len: {train_seq_len}, expected a positive number of tokens")
    if not length_factors:
        raise ValueError("length_factors: empty, expected at least one factor")
    if not depths:
        raise ValueError("depths: empty, expected at least one depth")
    for factor in length_factors:
        if not factor > 0 or int(factor * train_seq_len) < 1:
            raise ValueError(f"length_factors: {factor} x train_seq_len={train_seq_len} is not a positive length")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depths: {depth} is outside [0, 1]")
    if trials < 1:
        raise ValueError(f"trials: {trials}, expected at least 1")
    if digits < 1:
        raise ValueError(f"digits: {digits}, expected at least 1")


def _run_cell(model, tokenizer, prompts: list[PasskeyPrompt], digits: int, device) -> float:
    """Fraction of ``prompts`` whose greedy continuation starts with their key's digits.
    Prompts of equal length run as one batch (no padding: the model may have no mask)."""
    hits = 0
    by_length: dict[int, list[PasskeyPrompt]] = {}
    for prompt in prompts:
        by_length.setdefault(prompt.length, []).append(prompt)
    for group in by_length.values():
        tokens = torch.tensor([p.tokens for p in group], dtype=torch.long, device=device)

        def texts(new: Tensor) -> list[str]:
            return [tokenizer.decode(row) for row in new.tolist()]

        def done(new: Tensor) -> bool:
            return all(len(_digits_in(t)) >= digits for t in texts(new))

        new = _greedy_decode(model, tokens, digits + EXTRA_DECODE_TOKENS, done)
        hits += sum(_digits_in(t)[:digits] == p.key for t, p in zip(texts(new), group, strict=True))
    return hits / len(prompts)


def passkey_probe(
    model,
    tokenizer,
    *,
    train_seq_len: int,
    length_factors: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 4,
    digits: int = 5,
    seed: int = 0,
    device=None,
) -> PasskeyReport:
    """Passkey retrieval accuracy for prompts of int(factor x train_seq_len) tokens (at most)
    with the needle at each depth, ``trials`` random keys per cell.

    ``model(tokens [B, T]) -> logits [B, T, V]`` (any callable; run in eval mode and
    without gradients); ``tokenizer`` has ``encode_documents`` and ``decode``. A trial is a
    hit when the first ``digits`` digits of the greedy continuation equal the key.
    Raises ValueError for a bad argument or a length too short for needle and question.
    """
    _check_passkey_args(train_seq_len, length_factors, depths, trials, digits)
    # build every prompt first, so a length that cannot hold the needle fails before any compute
    grid = [
        (factor, depth, [
            build_passkey_prompt(
                tokenizer, int(factor * train_seq_len), depth, _passkey(seed, factor, depth, t, digits)
            )
            for t in range(trials)
        ])
        for factor in length_factors
        for depth in depths
    ]
    device = _model_device(model, device)
    cells = []
    with _inference(model):
        for factor, depth, prompts in grid:
            accuracy = _run_cell(model, tokenizer, prompts, digits, device)
            length = max(p.length for p in prompts)  # keys of other widths can shift it by a token
            cells.append({"length": length, "factor": float(factor), "depth": float(depth), "accuracy": accuracy})
    by_factor = {
        float(f): float(np.mean([c["accuracy"] for c in cells if c["factor"] == float(f)])) for f in length_factors
    }
    return PasskeyReport(cells, by_factor, float(np.mean([c["accuracy"] for c in cells])))


# ---- length extrapolation -----------------------------------------------------------------


def _mean_loss(model, windows: Tensor, chunk: int, device) -> float:
    """Mean next-token cross-entropy (nats) of ``windows`` [n, L + 1], ``chunk`` rows at a time."""
    total, count = 0.0, 0
    for rows in windows.split(chunk):
        rows = rows.to(device)
        logits = model(rows[:, :-1])
        # float32 sums: bf16 logits would lose precision over long windows
        total += F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
        count += rows[:, 1:].numel()
    return total / count


def length_extrapolation(
    model,
    data,
    *,
    train_seq_len: int,
    factors: Sequence[int] = (1, 2, 4),
    n_seqs: int = 8,
    device=None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> dict[int, float]:
    """{factor: mean validation loss in nats} on up to ``n_seqs`` windows of
    factor x train_seq_len tokens from ``data.val`` (``data.val_sequences``: consecutive,
    non-overlapping, from the start of the split).

    A factor whose window does not fit in the validation split is left out of the result
    (a shorter split gives fewer windows, not an error). Forward passes hold about
    ``chunk_tokens`` tokens (at least one window) to bound memory.
    """
    if train_seq_len < 1:
        raise ValueError(f"train_seq_len: {train_seq_len}, expected a positive number of tokens")
    if n_seqs < 1:
        raise ValueError(f"n_seqs: {n_seqs}, expected at least 1")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens: {chunk_tokens}, expected at least 1")
    for factor in factors:
        if not factor > 0 or int(factor * train_seq_len) < 1:
            raise ValueError(f"factors: {factor} x train_seq_len={train_seq_len} is not a positive length")
    device = _model_device(model, device)
    losses = {}
    with _inference(model):
        for factor in factors:
            seq_len = int(factor * train_seq_len)
            if len(data.val) - 1 < seq_len:  # not one window (seq_len + 1 tokens) fits
                continue
            windows = data.val_sequences(n_seqs, seq_len)
            losses[factor] = _mean_loss(model, windows, max(1, chunk_tokens // seq_len), device)
    return losses


# ---- both ---------------------------------------------------------------------------------

_PASSKEY_KW = frozenset({"length_factors", "depths", "trials", "digits", "seed"})
_EXTRAPOLATION_KW = frozenset({"factors", "n_seqs", "chunk_tokens"})


def probe_long_context(model, data, *, train_seq_len: int, **kw) -> dict:
    """Both probes as one JSON-ready dict: {"passkey": score, "passkey_cells": [...],
    "passkey_by_factor": {"1": ...}, "val_loss_1x": ..., "val_loss_2x": ..., ...}, the
    length-extrapolation keys spelled as the study objectives ``val_loss_2x`` / ``val_loss_4x``.

    ``kw`` goes to :func:`passkey_probe` (length_factors, depths, trials, digits, seed) or
    :func:`length_extrapolation` (factors, n_seqs, chunk_tokens); ``device`` to both. The
    tokenizer is ``data.tokenizer``. Factors left out by length_extrapolation have no key.
    """
    unknown = set(kw) - _PASSKEY_KW - _EXTRAPOLATION_KW - {"device"}
    if unknown:
        raise TypeError(f"probe_long_context: unexpected keyword argument(s) {', '.join(sorted(unknown))}")
    device = kw.get("device")
    passkey = passkey_probe(
        model, data.tokenizer, train_seq_len=train_seq_len, device=device,
        **{k: v for k, v in kw.items() if k in _PASSKEY_KW},
    ).to_dict()
    losses = length_extrapolation(
        model, data, train_seq_len=train_seq_len, device=device,
        **{k: v for k, v in kw.items() if k in _EXTRAPOLATION_KW},
    )
    return {
        "passkey": passkey["score"],
        "passkey_cells": passkey["cells"],
        "passkey_by_factor": passkey["accuracy_by_factor"],
        **{f"val_loss_{factor:g}x": loss for factor, loss in losses.items()},
    }
