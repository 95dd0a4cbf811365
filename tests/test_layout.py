"""Layout builders: the documented placements, and patterns built from them."""

import pytest

from hybridnas.search_space import PLACEMENTS, ArchSpec, SpecError, layout, placement_indices
from hybridnas.search_space.layout import n_attn_for_ratio


@pytest.mark.parametrize(
    ("n", "a", "placement", "expected"),
    [
        # Megatron-LM 8B Mamba-2-Hybrid: 56 layers, attention at 10, 22, 33, 45
        (56, 4, "even", (10, 22, 33, 45)),
        (13, 2, "even", (4, 8)),
        (6, 1, "even", (3,)),
        (12, 2, "middle", (4, 7)),
        (12, 2, "front", (0, 1)),
        (12, 2, "back", (10, 11)),
        (12, 3, "sandwich", (0, 1, 11)),
        (12, 2, "cluster", (5, 6)),
        (32, 4, (28, 4, 20, 12), (4, 12, 20, 28)),  # Jamba, explicit (order does not matter)
        (5, 0, "even", ()),
        (4, 4, "even", (0, 1, 2, 3)),
    ],
)
def test_documented_placements(n, a, placement, expected):
    assert placement_indices(n, a, placement) == expected


def test_even_keeps_first_and_last_mixers_mamba():
    for n in range(3, 40):
        for a in range(1, (n - 1) // 2 + 1):
            indices = placement_indices(n, a, "even")
            assert 0 not in indices and n - 1 not in indices, (n, a, indices)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_every_placement_gives_exactly_n_attn_distinct_positions(placement):
    for n in range(1, 30):
        for a in range(n + 1):
            indices = placement_indices(n, a, placement)
            assert len(indices) == len(set(indices)) == a
            assert all(0 <= i < n for i in indices)
            assert list(indices) == sorted(indices)


def test_middle_avoids_the_outer_quarters_when_it_can():
    indices = placement_indices(24, 3, "middle")
    assert all(6 <= i < 18 for i in indices) and indices == (8, 12, 16)


def test_layout_patterns():
    assert layout(13, 2) == "M-M-M-M-*-M-M-M-*-M-M-M-M-"
    assert layout(13, 2, fusion="intra") == "M-M-M-M-H-M-M-M-H-M-M-M-M-"
    assert layout(4, 1, "back", window=True) == "M-M-M-W-"
    assert layout(4, 2, "front", ffn=False) == "**MM"
    # Jamba: attention every 8th from layer 4, MoE on every other FFN
    jamba = layout(32, 4, (4, 12, 20, 28), moe_every=2)
    assert jamba.count("E") == 16 and jamba[:8] == "M-MEM-ME" and jamba[8] == "*"
    assert layout(3, 0, moe_every=1) == "MEMEME"
    ArchSpec.from_pattern(jamba)  # every built layout is a valid spec pattern


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_mixers": 0, "n_attn": 0}, "n_mixers=0 must be a positive integer"),
        ({"n_mixers": 4, "n_attn": 5}, "n_attn=5 must be an integer in 0..n_mixers=4"),
        ({"n_mixers": 4, "n_attn": 1, "placement": "random"}, "placement='random' unknown"),
        ({"n_mixers": 4, "n_attn": 2, "placement": (1, 1)}, "must be distinct indices in 0..3"),
        ({"n_mixers": 4, "n_attn": 1, "placement": (4,)}, "must be distinct indices in 0..3"),
        ({"n_mixers": 4, "n_attn": 1, "placement": (0, 2)}, "placement gives 2 indices but n_attn=1"),
        ({"n_mixers": 4, "n_attn": 1, "fusion": "both"}, "fusion='both' unknown"),
        ({"n_mixers": 4, "n_attn": 1, "ffn": False, "moe_every": 2}, "moe_every needs ffn=True"),
        ({"n_mixers": 4, "n_attn": 1, "moe_every": -1}, "moe_every=-1 must be a non-negative integer"),
    ],
)
def test_bad_layouts(kwargs, message):
    with pytest.raises(SpecError, match=None) as info:
        layout(**kwargs)
    assert message in str(info.value)


def test_ratio():
    assert n_attn_for_ratio(13, "1:5") == 2  # Bae et al.'s Inter 1:5 at 13 mixers
    assert n_attn_for_ratio(12, "1:1") == 6
    assert n_attn_for_ratio(32, "1:7") == 4  # Jamba
    assert n_attn_for_ratio(10, "0:1") == 0
    with pytest.raises(SpecError, match="expected attention:mamba"):
        n_attn_for_ratio(10, "1/5")
