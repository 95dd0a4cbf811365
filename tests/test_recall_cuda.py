"""The recall proxy on CUDA: a step captured as a CUDA graph trains as the eager step does."""

import pytest

from hybridnas import ArchSpec
from hybridnas.proxies import synthetic
from hybridnas.proxies.recall import RecallConfig, reduced_spec, train_task

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("pattern", ["M*", "MH", "M-E-"])
def test_a_graphed_recall_run_matches_the_eager_run(pattern):
    """Same seed, same rows: the replayed graph (capturable AdamW, the schedule written into
    its rate tensor) follows the eager run's curve. MoE layouts stay eager (``ffn`` keeps the
    MoE layer the default proxy would drop)."""
    config = RecallConfig(tasks=("mqar",), steps=60, eval_every=20, lrs=(3e-3,), head_dim=32, ffn=True,
                          task_overrides={"mqar": {"vocab_size": 64, "num_kv_pairs": 4, "n_train": 2000}})
    settings = config.settings("mqar")
    data = synthetic.make_task(settings)
    small = reduced_spec(ArchSpec.from_pattern(pattern, d_model=256), config, settings.vocab_size)
    eager = train_task(small, data, 3e-3, config, cuda_graph=False)
    graphed = train_task(small, data, 3e-3, config)
    assert graphed["graphed"] is ("E" not in pattern) and not eager["graphed"]
    assert [s for s, _ in graphed["curve"]] == [s for s, _ in eager["curve"]] == [20, 40, 60]
    assert graphed["loss"] == pytest.approx(eager["loss"], rel=1e-2)
    for (_, a), (_, b) in zip(graphed["curve"], eager["curve"], strict=True):
        assert a == pytest.approx(b, abs=0.02)
