"""The recall protocol: shrunk layouts, the MQAR gap between attention and a small-state
Mamba-2, parallel tasks on Ray, recall objectives in a study, and `hybridnas proxy recall`."""

import dataclasses
import json
import re

import optuna
import pytest
import torch

from hybridnas import ArchSpec
from hybridnas.cli import main
from hybridnas.cluster import ensure_ray
from hybridnas.proxies import synthetic
from hybridnas.proxies.recall import (
    RecallConfig,
    gpu_share,
    parallel_pays,
    recall_pattern,
    reduced_spec,
    score_recall,
    train_task,
)
from hybridnas.search_space.load import load_spec
from study_files import run_study, tiny_preset


def test_the_default_mqar_is_8_pairs_in_64_tokens_of_a_64_token_vocabulary_with_fresh_rows():
    config = RecallConfig()
    s = config.settings("mqar")
    assert (s.vocab_size, s.seq_len, s.knob("num_kv_pairs"), s.n_train) == (64, 64, 8, 5000 * 32)
    assert config.settings("in_context_recall") == synthetic.default_settings("in_context_recall")  # MAD's own
    # flags and overrides still win over the proxy's choices, and fresh rows are bounded
    changed = RecallConfig(kv_pairs=4, steps=10**6, task_overrides={"mqar": {"vocab_size": 256}}).settings("mqar")
    assert (changed.vocab_size, changed.knob("num_kv_pairs"), changed.n_train) == (256, 4, 200_000)


def test_the_default_proxy_of_bae_hybrids_is_their_mixers_with_mamba_runs_of_one():
    defaults = RecallConfig()
    shrunk = {name: reduced_spec(load_spec(name), defaults, 64).pattern
              for name in ("*-*-", "bae-inter-1:5", "bae-intra-1:5", "mamba2-1b")}
    assert shrunk == {"*-*-": "**", "bae-inter-1:5": "M*M*M", "bae-intra-1:5": "MHMHM", "mamba2-1b": "M"}


def test_reduced_spec_keeps_the_layout_and_its_choices():
    spec = ArchSpec.from_pattern("M-H-W-E", d_model=512, hybrid={"merge": "merge_attention", "norm": "rms"},
                                 attn={"window": 128}, moe={"n_experts": 4, "top_k": 2, "n_shared": 0})
    full_depth = RecallConfig(d_model=64, head_dim=16, ffn=True, max_run=None)
    small = reduced_spec(spec, full_depth, vocab_size=32)
    assert small.pattern == spec.pattern and small.d_model == 64 and small.vocab_size == 32
    assert small.hybrid == spec.hybrid and small.attn.window == 128
    assert (small.moe.n_experts, small.moe.top_k, small.moe.n_shared) == (4, 2, 0)
    assert small.ssm.d_state == 16  # 128 scaled by 64 / 512
    assert reduced_spec(spec, dataclasses.replace(full_depth, d_state=4), 32).ssm.d_state == 4


@pytest.mark.parametrize(
    ("pattern", "ffn", "max_run", "expected"),
    [
        ("M-M-M-M-*-M-M-M-M-*-M-M-M-", False, 2, "MM*MM*MM"),  # Bae et al.'s inter 1:5
        ("M-M-M-M-*-M-M-M-M-*-M-M-M-", False, 1, "M*M*M"),
        ("*-M-M-M-M-M-", False, 2, "*MM"),  # attention first stays first
        ("M-M-M-M-M-*-", True, 2, "M-M-*-"),  # attention last stays last, with its FFN
        ("M-MEM-M-*-", True, 2, "M-ME*-"),  # a run's FFNs go with its mixers
        ("M-M-M-H-H-H-*-", True, 1, "M-H-*-"),  # H is its own kind
        ("*-*-", False, 1, "**"),  # attention runs are never cut: two layers recall, one cannot
        ("M-*-*-*-W-W-MMM", True, 1, "M-*-*-*-W-W-M"),
        ("MMHMMHMM", False, None, "MMHMMHMM"),  # None keeps the full depth
        ("-M-M-*E", True, None, "-M-M-*E"),  # with both off, the candidate's own pattern
        ("-M-M-*E", False, 1, "M*"),
    ],
)
def test_the_recall_pattern_keeps_which_mixers_meet_and_where_attention_sits(pattern, ffn, max_run, expected):
    assert recall_pattern(pattern, ffn=ffn, max_run=max_run) == expected


def test_a_shallow_proxy_of_an_intra_hybrid_builds_with_wide_heads():
    spec = ArchSpec.from_pattern("M-M-M-H-M-M-M-H-M-", d_model=512, hybrid={"merge": "merge_attention"})
    small = reduced_spec(spec, RecallConfig(head_dim=32, ffn=False, max_run=2), vocab_size=64)
    assert small.pattern == "MMHMMHM" and small.attn.head_dim == 32 and small.hybrid.merge == "merge_attention"


def test_a_run_records_its_curve_and_stops_once_learned():
    config = RecallConfig(tasks=("compression",), steps=40, eval_every=10, lrs=(3e-3,), stop_at=0.01,
                          task_overrides={"compression": {"n_train": 200, "n_test": 50}})
    settings = config.settings("compression")
    small = reduced_spec(ArchSpec.from_pattern("M*", d_model=64), config, settings.vocab_size)
    run = train_task(small, synthetic.make_task(settings), 3e-3, config)
    assert run["steps"] == 10 and run["curve"] == [[10, pytest.approx(run["accuracy"], abs=1e-4)]]
    full = train_task(small, synthetic.make_task(settings), 3e-3, dataclasses.replace(config, stop_at=1.0))
    assert [step for step, _ in full["curve"]] == [10, 20, 30, 40]
    assert not run["graphed"] and not full["graphed"]  # CUDA graphs are for GPU steps only


def test_once_a_rate_has_learned_the_task_the_rest_of_the_grid_is_skipped():
    config = RecallConfig(tasks=("compression",), steps=20, eval_every=10, lrs=(3e-3, 1e-3, 1e-2), stop_at=0.01,
                          task_overrides={"compression": {"n_train": 200, "n_test": 50}})
    learned = score_recall(ArchSpec.from_pattern("M*", d_model=64), config)
    assert [r["lr"] for r in learned.runs] == [3e-3]  # accuracy >= 0.01 at the first evaluation
    unlearned = score_recall(ArchSpec.from_pattern("M*", d_model=64), dataclasses.replace(config, stop_at=1.0))
    assert [r["lr"] for r in unlearned.runs] == [3e-3, 1e-3, 1e-2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ("nope",)}, "tasks: nope: expected some of mqar"),
        ({"max_run": 0}, "max_run=0: must be at least 1"),
        ({"stop_at": 0.0}, "stop_at=0.0: must be in (0, 1]"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1: must be in [0, 1)"),
        ({"d_model": 60}, "d_model=60: must be a multiple of head_dim=32"),
        ({"lrs": ()}, "lrs=[]: need one or more"),
        ({"steps": 0}, "steps=0: must be at least 1"),
    ],
)
def test_bad_recall_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RecallConfig(**kwargs)


def test_tasks_run_in_parallel_on_ray_as_they_do_in_sequence():
    import ray
    config = RecallConfig(tasks=("in_context_recall", "compression"), steps=20, eval_every=10, lrs=(3e-3, 1e-3),
                          task_overrides={"in_context_recall": {"n_train": 200, "n_test": 50},
                                          "compression": {"n_train": 200, "n_test": 50}})
    spec = ArchSpec.from_pattern("M-*-", d_model=64)
    ensure_ray(num_cpus=2)
    try:
        parallel = score_recall(spec, config, parallel=True)
    finally:
        ray.shutdown()
    sequential = score_recall(spec, config)
    assert set(parallel.tasks) == set(sequential.tasks) == {"in_context_recall", "compression"}
    # one Ray task per task and rate: every rate runs (20 steps learn neither task)
    assert sorted((r["task"], r["lr"]) for r in parallel.runs) == sorted(
        (r["task"], r["lr"]) for r in sequential.runs) == sorted(
        (t, lr) for t in config.tasks for lr in config.lrs)
    for task in parallel.tasks:
        assert 0 <= parallel.tasks[task] <= 1
        assert parallel.tasks[task] == pytest.approx(sequential.tasks[task], abs=0.05)
    assert parallel.score == pytest.approx(sum(parallel.tasks.values()) / 2)


@pytest.mark.parametrize(("gpus", "tasks"), [(1, 7), (1, 3), (1, 4), (2, 7), (8, 4), (0, 4)])
def test_gpu_shares_let_every_task_run_at_once(gpus, tasks):
    share = gpu_share(gpus, tasks)
    assert share == round(share, 4)  # Ray's precision
    if not gpus:
        assert share == 0
    elif gpus >= tasks:
        assert share == 1
    else:  # all fit at once, and no more than the rounding is left idle
        assert tasks * share <= gpus < tasks * (share + 1e-4)


def test_cli_prints_the_json_the_issue_names(capsys):
    code = main(["proxy", "recall", "M-*-", "--tasks", "in_context_recall,selective_copying", "--steps", "10",
                 "--lrs", "3e-3", "--sequential", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and set(out) == {"tasks", "score"}
    assert set(out["tasks"]) == {"in_context_recall", "selective_copying"}
    assert out["score"] == pytest.approx(sum(out["tasks"].values()) / 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="states the CPU default")
def test_cli_runs_a_cpus_rates_in_sequence_and_a_gpus_at_once(capsys):
    """On a CPU, with neither --parallel nor --sequential, no Ray starts (the rates run in
    turn, each with every core); on a GPU they would go to Ray tasks at once."""
    import ray
    assert not parallel_pays(RecallConfig()) and not parallel_pays(RecallConfig(device="cpu"))
    assert parallel_pays(RecallConfig(device="cuda"))
    if ray.is_initialized():
        ray.shutdown()
    code = main(["proxy", "recall", "M-*-", "--tasks", "in_context_recall", "--steps", "10", "--json"])
    assert code == 0 and not ray.is_initialized()
    assert set(json.loads(capsys.readouterr().out)["tasks"]) == {"in_context_recall"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "nope"], "error: tasks: nope"),
        (["--tasks", "mqar", "--seq-len", "64", "--kv-pairs", "40"], "error: task mqar: seq_len=64"),
        (["--lrs", "fast"], "error: --lrs=fast"),
        (["--d-model", "60"], "error: d_model=60"),
    ],
)
def test_cli_bad_input_is_one_line(capsys, args, message):
    code = main(["proxy", "recall", "M-*-", "--sequential", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_a_study_can_maximise_recall_and_minimise_extrapolated_loss(tmp_path):
    """Objectives val_loss, mqar (maximised) and val_loss_2x: every complete trial carries
    them in Optuna's values and in the table's columns, which query can filter on."""
    objectives = '[[objectives]]\nname = "val_loss"\n\n[[objectives]]\nname = "params"\n'
    text = tiny_preset("recall", (objectives, (
        '[[objectives]]\nname = "val_loss"\n\n[[objectives]]\nname = "mqar"\n\n'
        '[[objectives]]\nname = "val_loss_2x"\n\n'
        '[recall]\nsteps = 10\nlrs = [3e-3]\nd_model = 32\nbatch_size = 16\n')))
    url = run_study(text, tmp_path, trials=2)
    study = optuna.load_study(study_name="recall", storage=url)
    assert study.directions[1] == optuna.study.StudyDirection.MAXIMIZE
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(len(t.values) == 3 and 0 <= t.values[1] <= 1 for t in complete)
    assert main(["query", "recall", "--storage", url, "--where", "mqar >= 0", "--format", "json"]) == 0
    from hybridnas.studies.storage import ResultsStore

    store = ResultsStore(url)
    rows = [r for r in store.rows("recall") if r["status"] == "complete"]
    store.dispose()
    assert rows and all(r["mqar"] is not None and r["val_loss_2x"] > 0 for r in rows)
