"""The synthetic recall tasks: every target re-derived from the inputs by a plain scan.

Each ``brute_*`` below reads one input row left to right with a dict and the vocabulary
layout that the module docstring documents, asserts the row has the task's structure, and
returns the targets the row implies; the generators are vectorised numpy, so the two share
no code. The rest checks answer counts, determinism, held-out test sets, overrides and
their errors, and ``answer_metrics``.
"""

import math
from functools import cache

import numpy as np
import pytest
import torch

from hybridnas.proxies.synthetic import (
    IGNORE,
    TASK_NAMES,
    TaskSettings,
    answer_loss,
    answer_metrics,
    default_settings,
    make_task,
    with_overrides,
)


def settings(name, **changes):
    """A task's defaults with small sets (fast) and ``changes`` applied."""
    sizes = {"n_train": changes.pop("n_train", 120), "n_test": changes.pop("n_test", 40)}
    return with_overrides(default_settings(name), **sizes, **changes)


@cache
def _data(name, seed, changes):
    return make_task(settings(name, **dict(changes)), seed=seed)


def data(name, seed=0, **changes):
    return _data(name, seed, tuple(sorted(changes.items())))


# The published baselines, plus knob values and the smallest feasible sizes.
VARIANTS = [
    ("mqar", {}),
    ("mqar", {"random_non_queries": False}),
    ("mqar", {"seq_len": 256, "num_kv_pairs": 16, "n_train": 40}),
    ("mqar", {"seq_len": 16, "vocab_size": 10}),
    ("in_context_recall", {}),
    ("in_context_recall", {"multi_query": False}),
    ("in_context_recall", {"seq_len": 4, "vocab_size": 64}),
    ("fuzzy_recall", {}),
    ("fuzzy_recall", {"multi_query": False}),
    ("fuzzy_recall", {"k_motif_size": 2, "v_motif_size": 4, "vocab_size": 32, "seq_len": 97}),
    ("fuzzy_recall", {"seq_len": 12, "vocab_size": 8}),
    ("noisy_recall", {}),
    ("noisy_recall", {"frac_noise": 0.8}),
    ("noisy_recall", {"frac_noise": 0.5, "multi_query": False}),
    ("selective_copying", {}),
    ("selective_copying", {"num_tokens_to_copy": 96, "vocab_size": 32}),
    ("selective_copying", {"num_tokens_to_copy": 3, "seq_len": 8}),
    ("compression", {}),
    ("compression", {"seq_len": 128, "vocab_size": 64}),
    ("memorization", {}),
    ("memorization", {"frac_noise": 0.3, "noise_vocab_size": 16}),
]
VARIANT_IDS = [
    "-".join([name, *(f"{k}={v}" for k, v in changes.items())])
    for name, changes in VARIANTS
]


# ------------------------------------------------------------------ brute-force scans


def brute_mqar(row, s):
    k, half = s.knob("num_kv_pairs"), s.vocab_size // 2
    value_of = {}
    for t in range(0, 2 * k, 2):
        key, value = row[t], row[t + 1]
        assert 1 <= key < half <= value < s.vocab_size and key not in value_of
        value_of[key] = value
    assert len(set(value_of.values())) == k  # values distinct too
    # After the pairs, a token that is one of the keys is a query for its value.
    return [IGNORE] * (2 * k) + [value_of.get(x, IGNORE) for x in row[2 * k :]]


def recall_ranges(s):
    """(keys end, values end) of the recall tasks' documented vocabulary layout."""
    specials = (not s.knob("multi_query")) + (s.name == "fuzzy_recall")
    ordinary = s.vocab_size - specials - s.knob("noise_vocab_size", 0)
    return ordinary // 2, ordinary


def brute_recall(row, s):
    keys_end, values_end = recall_ranges(s)
    multi, copy, L = s.knob("multi_query"), s.vocab_size - 1, s.seq_len
    out, value_of = [IGNORE] * L, {}
    for t, x in enumerate(row):
        if x >= keys_end:  # a value, a noise token or the copy prefix
            continue
        earlier = value_of.get(x)
        if t + 1 < L:  # the key's value follows it, and is the one it had before
            assert keys_end <= row[t + 1] < values_end
            assert earlier in (None, row[t + 1])
            value_of[x] = row[t + 1]
        if earlier is not None and (multi or row[t - 1] == copy):
            out[t] = earlier
    if not multi:  # the copy prefix and the probe close the row
        assert row[L - 2] == copy and row.count(copy) == 1 and out[L - 1] != IGNORE
    return out


def brute_fuzzy(row, s):
    keys_end, values_end = recall_ranges(s)
    multi, L, V = s.knob("multi_query"), s.seq_len, s.vocab_size
    pad, copy = (V - 1, None) if multi else (V - 2, V - 1)
    out, value_of, t, probing = [IGNORE] * L, {}, 0, False
    while row[t] == pad:
        t += 1
    while t < L:
        if row[t] == copy:
            probing, t = True, t + 1
            continue
        start = t
        while t < L and row[t] < keys_end:
            t += 1
        key, v0 = tuple(row[start:t]), t
        while t < L and keys_end <= row[t] < values_end:
            t += 1
        value = tuple(row[v0:t])
        assert 1 <= len(key) <= s.knob("k_motif_size") and len(set(key)) == len(key)
        earlier = value_of.get(key)
        if earlier is None:
            assert not probing and 1 <= len(value) <= s.knob("v_motif_size")
            assert len(set(value)) == len(value)
            value_of[key] = value
            continue
        assert value == earlier[: len(value)] and len(value) >= len(earlier) - 1
        if multi or probing:  # the token before each value token asks for it
            for j, token in enumerate(earlier):
                assert v0 - 1 + j < L
                out[v0 - 1 + j] = token
    return out


def brute_selective_copying(row, s):
    n, blank, copy = s.knob("num_tokens_to_copy"), s.vocab_size - 2, s.vocab_size - 1
    c = row.index(copy)
    tokens = [x for x in row[:c] if x != blank]
    assert row.count(copy) == 1 and len(tokens) == n and row[c + 1 :] == [blank] * n
    return [IGNORE] * (c + 1) + tokens


def brute_compression(row, s):
    blank, compress = s.vocab_size - 2, s.vocab_size - 1
    c = row.index(compress)
    assert c == s.seq_len // 2 and row[c + 1 :] == [blank] * (c - 1) and max(row[:c]) < blank
    return [IGNORE] * c + row[:c]


def brute_memorization(row, s, table):
    insert = s.vocab_size - 1
    asked = [table[row[t - 1]] if row[t] == insert else IGNORE for t in range(1, s.seq_len)]
    return [IGNORE, *asked]


def memorization_table(d):
    """key -> value read off both splits; asserts one value per key across all rows."""
    table = {}
    insert = d.settings.vocab_size - 1
    for inputs, targets in ((d.train_inputs, d.train_targets), (d.test_inputs, d.test_targets)):
        for row, target in zip(inputs.tolist(), targets.tolist(), strict=True):
            for t in range(1, len(row)):
                if row[t] == insert:
                    assert table.setdefault(row[t - 1], target[t]) == target[t]
    return table


BRUTE = {
    "mqar": brute_mqar,
    "in_context_recall": brute_recall,
    "noisy_recall": brute_recall,
    "fuzzy_recall": brute_fuzzy,
    "selective_copying": brute_selective_copying,
    "compression": brute_compression,
}


def expected_targets(d, inputs):
    s = d.settings
    if s.name == "memorization":
        table = memorization_table(d)
        return [brute_memorization(row, s, table) for row in inputs.tolist()]
    return [BRUTE[s.name](row, s) for row in inputs.tolist()]


def splits(d):
    return [(d.train_inputs, d.train_targets), (d.test_inputs, d.test_targets)]


# ----------------------------------------------------------------------- the targets


@pytest.mark.parametrize("name, changes", VARIANTS, ids=VARIANT_IDS)
def test_targets_match_a_brute_force_scan(name, changes):
    d = data(name, **changes)
    for inputs, targets in splits(d):
        assert targets.tolist() == expected_targets(d, inputs)


@pytest.mark.parametrize("name, changes", VARIANTS, ids=VARIANT_IDS)
def test_shapes_dtypes_and_token_range(name, changes):
    d = data(name, **changes)
    s = d.settings
    for (inputs, targets), n in zip(splits(d), (s.n_train, s.n_test), strict=True):
        assert inputs.shape == targets.shape == (n, s.seq_len)
        assert inputs.dtype == targets.dtype == torch.int64
        assert 0 <= inputs.min() and inputs.max() < s.vocab_size
        answers = targets[targets != IGNORE]
        assert 0 <= answers.min() and answers.max() < s.vocab_size


def answer_counts(targets):
    return (targets != IGNORE).sum(dim=1)


@pytest.mark.parametrize(
    "name, changes, per_row",
    [
        ("mqar", {}, 4),
        ("mqar", {"seq_len": 256, "num_kv_pairs": 16, "n_train": 40}, 16),
        ("in_context_recall", {"multi_query": False}, 1),
        ("noisy_recall", {"multi_query": False}, 1),
        ("selective_copying", {}, 16),
        ("selective_copying", {"num_tokens_to_copy": 96, "vocab_size": 32}, 96),
        ("compression", {}, 16),
        ("compression", {"seq_len": 128, "vocab_size": 64}, 64),
        ("memorization", {}, 16),
    ],
)
def test_answer_count_is_fixed_by_the_settings(name, changes, per_row):
    for _, targets in splits(data(name, **changes)):
        assert answer_counts(targets).tolist() == [per_row] * len(targets)


def test_multi_query_recall_asks_every_repeated_key():
    # L/2 slots; every slot whose key is not new in the row is asked, the last one always.
    d = data("in_context_recall")
    for row, count in zip(d.train_inputs.tolist(), answer_counts(d.train_targets).tolist(), strict=True):
        keys = row[0::2]
        assert count == len(keys) - len(set(keys)) >= 1
    assert (d.train_targets[:, -2] != IGNORE).all() and (d.train_targets[:, -1] == IGNORE).all()


def test_single_query_fuzzy_recall_asks_one_value_motif():
    d = data("fuzzy_recall", multi_query=False)
    counts = answer_counts(d.train_targets)
    assert counts.min() >= 1 and counts.max() <= 3 and set(counts.tolist()) == {1, 2, 3}
    assert (d.train_targets[:, -1] != IGNORE).all()  # the last value token, past the row


def test_fuzzy_motif_sizes_vary_over_their_whole_range():
    d = data("fuzzy_recall", k_motif_size=2, v_motif_size=4, vocab_size=32, seq_len=97)
    keys_end, values_end = recall_ranges(d.settings)
    key_sizes, value_sizes = set(), set()
    for row in d.train_inputs.tolist():
        kinds = ["k" if x < keys_end else "v" if x < values_end else "-" for x in row]
        runs = "".join(kinds).replace("-", " ").replace("vk", "v k").split()
        for run in runs:
            key_sizes.add(run.count("k"))
            value_sizes.add(run.count("v"))
    assert key_sizes == {1, 2} and value_sizes == {1, 2, 3, 4}


@pytest.mark.parametrize("name", ["noisy_recall", "memorization"])
@pytest.mark.parametrize("frac", [0.2, 0.8])
def test_noise_fills_the_asked_fraction_of_slots(name, frac):
    d = data(name, frac_noise=frac, noise_vocab_size=16, n_train=300)
    noise_lo = d.settings.vocab_size - 16 - (name == "memorization")
    first = d.train_inputs[:, 0::2]
    is_noise = (first >= noise_lo) & (first < noise_lo + 16)
    if name == "noisy_recall":  # the probe slot is never noise
        is_noise = is_noise[:, :-1]
    # One slot per row is kept as a pair, so the expected fraction is a little below frac.
    slots = is_noise.shape[1]
    expected = frac * (slots - 1) / slots
    assert abs(is_noise.float().mean().item() - expected) < 0.03
    assert (answer_counts(d.train_targets) >= 1).all()


def test_noise_tokens_are_never_answers_or_keys():
    d = data("noisy_recall", frac_noise=0.8)
    asked = d.train_inputs[d.train_targets != IGNORE]  # the token at each answer position
    keys_end, _ = recall_ranges(d.settings)
    assert (asked < keys_end).all()


def test_memorization_table_is_shared_fixed_and_seeded():
    d = data("memorization")
    table = memorization_table(d)  # asserts train and test agree on every key
    n_keys = (256 - 1) // 2
    assert sorted(table) == list(range(n_keys))  # 2000 rows x 16 slots reach every key
    assert len(set(table.values())) == n_keys  # a one-to-one map
    assert all(n_keys <= v < 255 for v in table.values())
    assert memorization_table(data("memorization", seed=1)) != table


def mean_query_gap(d):
    k = d.settings.knob("num_kv_pairs")
    pos = (d.train_targets[:, 2 * k :] != IGNORE).nonzero()[:, 1]
    assert (pos % 2 == 0).all()  # queries sit at even offsets of the query region
    return (pos // 2).float().mean().item()


def test_mqar_query_gaps_follow_the_power_law():
    # (256, 16): the query region holds 112 slots; uniform gaps average 55.5.
    uniform = mean_query_gap(data("mqar", seq_len=256, num_kv_pairs=16, power_a=1.0, n_train=200))
    skewed = mean_query_gap(data("mqar", seq_len=256, num_kv_pairs=16, n_train=200))
    assert abs(uniform - 55.5) < 3 and skewed < 0.75 * uniform


def filler(d):
    """The inputs at filler positions: neither in the pairs nor a query."""
    away = d.train_targets == IGNORE
    away[:, : 2 * d.settings.knob("num_kv_pairs")] = False
    return d.train_inputs[away]


def test_mqar_filler_is_random_or_zero():
    assert (filler(data("mqar", random_non_queries=False)) == 0).all()
    assert filler(data("mqar")).unique().numel() > 1000


def test_selective_copying_scatters_the_tokens():
    d = data("selective_copying")
    span = 256 - 16 - 1
    places = [[t for t, x in enumerate(row[:span]) if x != 14] for row in d.train_inputs.tolist()]
    # MAD's generator always puts the last token right before the copy token; uniform
    # places do so with probability 16/239.
    assert sum(p[-1] == span - 1 for p in places) < 0.2 * len(places)
    assert len({p[0] for p in places}) > 20


# -------------------------------------------------------------- determinism, held out


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_data_other_seed_other_data(name):
    a = make_task(settings(name, n_train=30, n_test=10), seed=3)
    b = data(name, seed=3, n_train=30, n_test=10)  # a second, separate call
    for x, y in zip(splits(a), splits(b), strict=True):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    c = data(name, seed=4, n_train=30, n_test=10)
    assert not torch.equal(a.train_inputs, c.train_inputs)
    assert not torch.equal(a.test_inputs, c.test_inputs)


def test_the_global_rngs_are_neither_used_nor_touched():
    np.random.seed(1)
    torch.manual_seed(1)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    a = make_task(settings("fuzzy_recall", n_train=10, n_test=5))
    assert (np.random.get_state()[1] == np_state).all()
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.random.seed(2)
    torch.manual_seed(2)
    b = make_task(settings("fuzzy_recall", n_train=10, n_test=5))
    assert torch.equal(a.train_inputs, b.train_inputs) and torch.equal(a.test_inputs, b.test_inputs)


def rows(tensor):
    return {tuple(row) for row in tensor.tolist()}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_test_rows_are_held_out(name):
    d = data(name)
    assert not rows(d.test_inputs) & rows(d.train_inputs)
    assert not torch.equal(d.train_inputs[: d.settings.n_test], d.test_inputs)  # other stream


@pytest.mark.parametrize("name", TASK_NAMES)
def test_the_test_set_has_its_own_stream(name):
    # Growing the training set leaves the test set alone (here no row collides), so
    # results on it stay comparable across training budgets.
    small, large = data(name, n_train=30), data(name, n_train=60)
    assert torch.equal(small.test_inputs, large.test_inputs)
    assert torch.equal(small.test_targets, large.test_targets)


def test_colliding_test_rows_are_redrawn():
    # 2 content tokens, 4 of them: 16 sequences, the training set covers most of them.
    s = settings("compression", vocab_size=4, seq_len=8, n_train=12, n_test=8)
    d = make_task(s)
    assert not rows(d.test_inputs) & rows(d.train_inputs)
    assert d.test_targets.tolist() == expected_targets(d, d.test_inputs)


def test_a_space_too_small_to_hold_out_raises():
    s = settings("compression", vocab_size=3, seq_len=4)  # one content token: one sequence
    with pytest.raises(ValueError, match="task compression: cannot draw a test set"):
        make_task(s)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        make_task(settings("compression"), seed=seed)


# ------------------------------------------------------------------------ settings

PUBLISHED = {
    "mqar": (8192, 64, {"num_kv_pairs": 4, "power_a": 0.01, "random_non_queries": True}),
    "in_context_recall": (16, 128, {"multi_query": True}),
    "fuzzy_recall": (16, 128, {"k_motif_size": 3, "v_motif_size": 3, "multi_query": True}),
    "noisy_recall": (32, 128, {"frac_noise": 0.2, "noise_vocab_size": 16, "multi_query": True}),
    "selective_copying": (16, 256, {"num_tokens_to_copy": 16}),
    "compression": (16, 32, {}),
    "memorization": (256, 32, {"frac_noise": 0.0, "noise_vocab_size": 0}),
}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_default_settings_are_the_published_baselines(name):
    s = default_settings(name)
    vocab_size, seq_len, knobs = PUBLISHED[name]
    assert (s.name, s.vocab_size, s.seq_len) == (name, vocab_size, seq_len)
    assert (s.n_train, s.n_test) == (2000, 200)
    assert s.knobs == tuple(sorted(knobs.items())) and hash(s) == hash(default_settings(name))
    for key, value in knobs.items():
        assert s.knob(key) == value
    assert s.knob("nope") is None and s.knob("nope", 7) == 7


def test_default_sizes_generate():
    d = make_task(default_settings("mqar"))
    assert d.train_inputs.shape == (2000, 64) and d.test_inputs.shape == (200, 64)


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ValueError) as err:
        default_settings("copying")
    assert all(name in str(err.value) for name in TASK_NAMES)
    with pytest.raises(ValueError, match="unknown task 'copying'"):
        TaskSettings("copying", 16, 32, 1, 1, ())


def test_overrides_change_only_what_they_name():
    base = default_settings("noisy_recall")
    s = with_overrides(base, seq_len=256, frac_noise=0.6, n_test=7)
    assert (s.vocab_size, s.seq_len, s.n_train, s.n_test) == (32, 256, 2000, 7)
    assert dict(s.knobs) == {"frac_noise": 0.6, "noise_vocab_size": 16, "multi_query": True}
    assert base == default_settings("noisy_recall")  # the original is untouched
    assert with_overrides(base, frac_noise=0) == with_overrides(base, frac_noise=0.0)
    assert with_overrides(base) == base


def test_unknown_setting_names_the_settings():
    with pytest.raises(ValueError) as err:
        with_overrides(default_settings("mqar"), num_pairs=8)
    assert str(err.value) == (
        "task mqar: unknown setting 'num_pairs' (settings: vocab_size, seq_len, n_train, "
        "n_test, num_kv_pairs, power_a, random_non_queries)"
    )
    with pytest.raises(ValueError, match="task compression: unknown setting 'frac_noise'"):
        with_overrides(default_settings("compression"), frac_noise=0.1)


@pytest.mark.parametrize(
    "name, changes, setting",
    [
        ("mqar", {"seq_len": 12}, "seq_len"),  # < 4 * 4
        ("mqar", {"num_kv_pairs": 17}, "seq_len"),  # 64 < 68
        ("mqar", {"seq_len": 66}, None),  # feasible: even and >= 16
        ("mqar", {"seq_len": 65}, "seq_len"),
        ("mqar", {"vocab_size": 9}, "vocab_size"),  # 4 keys from [1, 4)
        ("mqar", {"vocab_size": 10}, None),
        ("mqar", {"power_a": 0.0}, "power_a"),
        ("mqar", {"num_kv_pairs": 0}, "num_kv_pairs"),
        ("mqar", {"n_train": 0}, "n_train"),
        ("mqar", {"seq_len": 64.0}, "seq_len"),
        ("mqar", {"random_non_queries": 1}, "random_non_queries"),
        ("mqar", {"power_a": float("nan")}, "power_a"),
        ("in_context_recall", {"seq_len": 127}, "seq_len"),
        ("in_context_recall", {"seq_len": 2}, "seq_len"),
        ("in_context_recall", {"vocab_size": 1}, "vocab_size"),
        ("in_context_recall", {"vocab_size": 2, "multi_query": False}, "vocab_size"),
        ("in_context_recall", {"vocab_size": 5, "multi_query": False}, None),
        ("fuzzy_recall", {"vocab_size": 6}, "vocab_size"),  # 2 key tokens for 3-token motifs
        ("fuzzy_recall", {"vocab_size": 7}, None),
        ("fuzzy_recall", {"seq_len": 11}, "seq_len"),
        ("fuzzy_recall", {"k_motif_size": 0}, "k_motif_size"),
        ("fuzzy_recall", {"v_motif_size": 2.5}, "v_motif_size"),
        ("noisy_recall", {"frac_noise": 1.0}, "frac_noise"),
        ("noisy_recall", {"frac_noise": -0.1}, "frac_noise"),
        ("noisy_recall", {"noise_vocab_size": 0}, "noise_vocab_size"),
        ("noisy_recall", {"noise_vocab_size": 0, "frac_noise": 0.0}, None),
        ("noisy_recall", {"noise_vocab_size": 31}, "vocab_size"),
        ("selective_copying", {"num_tokens_to_copy": 128}, "seq_len"),  # 256 > 257 fails
        ("selective_copying", {"num_tokens_to_copy": 127}, None),
        ("selective_copying", {"num_tokens_to_copy": 0}, "num_tokens_to_copy"),
        ("selective_copying", {"vocab_size": 2}, "vocab_size"),
        ("compression", {"seq_len": 33}, "seq_len"),
        ("compression", {"vocab_size": 2}, "vocab_size"),
        ("memorization", {"frac_noise": 0.5}, "noise_vocab_size"),
        ("memorization", {"noise_vocab_size": 254}, "vocab_size"),
        ("memorization", {"noise_vocab_size": 253, "frac_noise": 0.5}, None),  # 1 key, 1 value
        ("memorization", {"seq_len": 31}, "seq_len"),
    ],
)
def test_infeasible_overrides_raise_one_line_naming_the_setting(name, changes, setting):
    if setting is None:  # the boundary just inside: accepted, and it generates
        s = with_overrides(default_settings(name), n_train=5, n_test=2, **changes)
        d = make_task(s)
        assert d.train_targets.tolist() == expected_targets(d, d.train_inputs)
        return
    with pytest.raises(ValueError) as err:
        with_overrides(default_settings(name), **changes)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"task {name}: {setting}=")


def test_direct_construction_is_validated_and_knobs_sorted():
    unsorted = (("random_non_queries", True), ("power_a", 0.01), ("num_kv_pairs", 4))
    s = TaskSettings("mqar", 8192, 64, 10, 10, unsorted)
    assert s == with_overrides(default_settings("mqar"), n_train=10, n_test=10)
    with pytest.raises(ValueError, match="knobs lack 'power_a'"):
        TaskSettings("mqar", 8192, 64, 10, 10, (("num_kv_pairs", 4), ("random_non_queries", True)))
    with pytest.raises(ValueError, match="task mqar: seq_len=8 must be >= 4"):
        TaskSettings("mqar", 8192, 8, 10, 10, default_settings("mqar").knobs)


# ---------------------------------------------------------------------- answer_metrics


def task_targets():
    return data("in_context_recall", n_train=16).train_targets  # [16, 128], ~56 answers a row


def test_logits_on_the_answers_give_accuracy_one_and_no_loss():
    targets, V = task_targets(), 16
    logits = torch.zeros(*targets.shape, V)
    asked = targets != IGNORE
    logits[asked] = 40.0 * torch.nn.functional.one_hot(targets[asked], V).float()
    loss, accuracy = answer_metrics(logits, targets)
    assert accuracy == 1.0 and 0 <= loss.item() < 1e-9


def test_uniform_logits_give_log_v_and_chance():
    targets, V = task_targets(), 16
    loss, accuracy = answer_metrics(torch.zeros(*targets.shape, V), targets)
    assert loss.item() == pytest.approx(math.log(V), abs=1e-6)
    # Every token ties; argmax takes the lowest id, so "chance" is how often 0 is right.
    asked = targets[targets != IGNORE]
    assert accuracy == pytest.approx((asked == 0).float().mean().item())
    # Random logits on uniformly random answers are right one time in V.
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (64, 64), generator=g)
    targets[:, ::2] = IGNORE
    _, accuracy = answer_metrics(torch.randn(64, 64, 4, generator=g), targets)
    assert accuracy == pytest.approx(0.25, abs=0.03)


def test_the_graph_safe_loss_is_the_metrics_loss_with_its_gradient():
    targets, V = task_targets(), 16
    logits = torch.randn(*targets.shape, V, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    metrics_loss, _ = answer_metrics(logits, targets)
    (metrics_grad,) = torch.autograd.grad(metrics_loss, logits)
    loss = answer_loss(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == pytest.approx(metrics_loss.item(), rel=1e-6)
    torch.testing.assert_close(grad, metrics_grad)


def test_non_answer_positions_change_nothing():
    targets, V = task_targets(), 16
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*targets.shape, V, generator=g)
    other = logits.clone()
    away = targets == IGNORE
    other[away] = torch.randn(int(away.sum()), V, generator=g) * 100
    other[tuple(away.nonzero()[0].tolist())] = float("nan")
    other.requires_grad_(True)
    loss_a, acc_a = answer_metrics(logits, targets)
    loss_b, acc_b = answer_metrics(other, targets)
    assert torch.equal(loss_a, loss_b.detach()) and acc_a == acc_b
    loss_b.backward()
    assert (other.grad[away] == 0).all() and other.grad[~away].abs().sum() > 0
    # ...while changing one answer position's logits does change the loss.
    third = logits.clone()
    third[tuple((~away).nonzero()[0].tolist())] += torch.randn(V, generator=g) * 10
    assert not torch.equal(answer_metrics(third, targets)[0], loss_a)


def test_answer_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="no answer positions"):
        answer_metrics(torch.zeros(2, 3, 4), torch.full((2, 3), IGNORE))
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\]"):
        answer_metrics(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
