"""StudyConfig: presets load, errors are one line naming the dotted key, overrides apply."""

from pathlib import Path

import pytest

from hybridnas.studies.config import (
    Ratio,
    Split,
    StudyConfigError,
    load_study_config,
    parse_study_config,
    preset_names,
)
from hybridnas.trainer.config import TrainConfig

MINIMAL = """
name = "mini"
[size]
d_model = 64
n_mixers = 4
[budget]
flops = 1e12
"""


def write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(target, **overrides) -> str:
    with pytest.raises(StudyConfigError) as info:
        load_study_config(target, **overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    config = load_study_config(name)
    assert config.name == name
    assert isinstance(config.trainer, TrainConfig)
    assert config.directions[0] == "minimize"  # val_loss comes first in every preset


def test_presets_shipped():
    expected = {"quickstart", "inter-vs-intra", "ratio-placement", "merge-methods", "moe", "test-tiny", "bae-small"}
    assert expected <= set(preset_names())


def test_bae_small_trains_each_layout_of_its_findings_once():
    """Every trial of bae-small is a baseline or an enqueued candidate, all distinct, and
    they are the layouts benchmarks/bae_findings.py compares (by its labels)."""
    import importlib.util

    from hybridnas.studies.space import SearchSpace
    from hybridnas.studies.storage import spec_columns

    config = load_study_config("bae-small")
    space = SearchSpace(config)
    space.check_enqueued()
    specs = [*space.baseline_specs().values(), *(space.spec_from_params(dict(p)) for p in config.enqueue)]
    params = [{"placement": "even"}] * len(config.baselines) + [dict(p) for p in config.enqueue]
    assert config.trials == len(specs) == len({s.key for s in specs}) == 13
    path = Path(__file__).parent.parent / "benchmarks" / "bae_findings.py"
    module_spec = importlib.util.spec_from_file_location("bae_findings", path)
    findings = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(findings)
    labels = {findings.label(spec_columns(s, p)) for s, p in zip(specs, params, strict=True)}
    compared = {name for _, better, worse in findings.FINDINGS for name in (better, worse)}
    assert compared <= labels and len(labels) == 13
    assert config.seeds_per_candidate == 2 and len(config.trainer.lr_grid) > 1


def test_quickstart_covers_both_fusions_and_three_merge_ops():
    space = load_study_config("quickstart").space
    assert set(space.fusion) == {"inter", "intra"}
    assert len(space.merge.op) >= 3


def test_minimal_file_gets_defaults(tmp_path):
    config = load_study_config(write(tmp_path, MINIMAL))
    assert config.storage == "sqlite:///hybridnas.db"
    assert config.space.share == ("attn_ratio", (Ratio(1, 5),))
    assert config.budget.rungs == (0.25, 0.5) and config.budget.eta == 3
    assert [o.label for o in config.objectives] == ["val_loss", "params"]
    assert config.baselines == ("attention", "mamba2", "bae-inter-1:5", "bae-intra-1:5")


def test_scalar_is_a_fixed_choice_and_list_is_searched(tmp_path):
    text = MINIMAL + '[space]\nfusion = "intra"\nplacement = ["even", "middle"]\n'
    space = load_study_config(write(tmp_path, text)).space
    assert space.fusion == ("intra",)
    assert space.placement == ("even", "middle")


def test_objective_defaults(tmp_path):
    text = MINIMAL + (
        '[[objectives]]\nname = "val_loss"\n'
        '[[objectives]]\nname = "decode_tokens_per_s"\ncontext = 32768\n'
        '[[objectives]]\nname = "cache_bytes"\n'
    )
    config = load_study_config(write(tmp_path, text))
    assert config.directions == ["minimize", "maximize", "minimize"]
    assert [o.label for o in config.objectives] == ["val_loss", "decode_tokens_per_s@32768", "cache_bytes@8192"]


def test_model_dump_round_trips():
    config = load_study_config("merge-methods")
    again = parse_study_config(config.model_dump(mode="json"))
    assert again == config


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, 'name = "x"\n[size]\nd_model = = 3\n')
    message = error_of(path)
    assert message.startswith("study.toml: line 3: ")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"space.fusion": "intre"}, "space.fusion: 'intre' is not one of inter, intra"),
        ({"space.fusion": ["inter", "intre"]}, "space.fusion: 'intre' is not one of inter, intra"),
        ({"budget.flop": 3}, "unknown key 'budget.flop' (allowed: flops, rungs, eta)"),
        ({"sampler.kind": "cmaes"}, "sampler.kind: 'cmaes' is not one of tpe, nsga2, random, grid, gp"),
        ({"space.moe.n_experts": 5}, "space.moe.n_experts: 5 is not one of 4, 8, 16"),
        ({"space.merge.op": ["sub", "sub"]}, "space.merge.op: 'sub' is listed twice"),
        ({"space.attn_ratio": "1-5"}, "space.attn_ratio: '1-5' is not a ratio such as 1:5"),
        ({"space.attn_fraction": 1.5}, "space.attn_fraction: 1.5 is not a ratio such as 1:2 or a fraction in (0, 1)"),
        ({"space.n_attn": 9}, "space.n_attn: 9 exceeds size.n_mixers=2"),
        ({"size.mode": "params"}, "size.params: required when mode = 'params'"),
        ({"size.attn": {"n_heads": 3}}, "size.attn.n_heads=3 does not divide d_model=32"),
        ({"size.attn": {"window": 64}}, "size.attn.window: searched in space.window, not set here"),
        ({"objectives": [{"name": "params"}]}, "objectives: val_loss is required"),
        ({"objectives": [{"name": "val_loss", "context": 5}]}, "objectives.context: only for cache_bytes"),
        ({"objectives": [{"name": "val_loss"}, {"name": "val_loss"}]}, "objectives: 'val_loss' is listed twice"),
        ({"budget.rungs": [0.5, 0.25]}, "budget.rungs: [0.5, 0.25] must be increasing"),
        ({"budget.rungs": [0.9]}, "budget.rungs: 0.9 is outside the trainer's stable phase"),
        ({"budget.eta": 1}, "budget.eta=1: input should be greater than or equal to 2"),
        ({"sampler.population_size": 8}, "sampler.population_size: only for kind nsga2, not random"),
        ({"name": "a b"}, "name: 'a b' must be non-empty"),
        ({"baselines": ["llama"]}, "baselines: 'llama' is not one of attention, mamba2"),
        ({"trials": 0}, "trials=0: input should be greater than or equal to 1"),
    ],
)
def test_one_line_errors(overrides, expected):
    assert error_of("test-tiny", **overrides).startswith(expected)


def test_trainer_errors_carry_the_prefix():
    assert error_of("test-tiny", **{"trainer.lr": -1}) == "trainer.lr=-1: input should be greater than 0"
    assert error_of("test-tiny", **{"trainer.warmup_frac": 0.9}).startswith("trainer.warmup_frac=0.9 + decay_frac")
    assert error_of("test-tiny", **{"trainer.tokenizer": "words"}).startswith("trainer.tokenizer=")
    assert error_of("test-tiny", **{"trainer.rungs": [0.5]}).startswith("trainer.rungs: set budget.rungs instead")


def test_unknown_trainer_key():
    message = error_of("test-tiny", **{"trainer.learning_rate": 1e-3})
    assert message.startswith("unknown key 'trainer.learning_rate' (allowed: corpus, tokenizer, ")


def test_unknown_preset_lists_available():
    message = error_of("no-such-preset")
    assert message.startswith("unknown preset 'no-such-preset' (available: ")
    assert "quickstart" in message


def test_missing_file(tmp_path):
    assert error_of(str(tmp_path / "absent.toml")).startswith(str(tmp_path / "absent.toml"))


def test_overrides_apply_and_none_is_ignored():
    config = load_study_config("test-tiny", storage="sqlite:///other.db", trials=7, concurrent=None)
    assert config.storage == "sqlite:///other.db"
    assert config.trials == 7
    assert config.concurrent == 1
    # None keeps the preset's value, not the field's default (sqlite:///hybridnas.db, 32 trials)
    ignored = load_study_config("test-tiny", storage=None, trials=None)
    assert (ignored.storage, ignored.trials) == ("sqlite:///hybridnas-test-tiny.db", 4)
    assert load_study_config("test-tiny", budget__flops=5e9).budget.flops == 5e9
    assert load_study_config("test-tiny", **{"sampler.seed": 3}).sampler.seed == 3


def test_config_is_frozen():
    config = load_study_config("test-tiny")
    with pytest.raises(ValueError):
        config.trials = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        config.size.d_model = 64  # type: ignore[misc]  # sections too, not only the top level
    assert (config.trials, config.size.d_model) == (4, 32)
    assert config == load_study_config("test-tiny")  # the failed assignments changed nothing


def test_split_fraction():
    assert Split.parse("2:1").fraction == pytest.approx(2 / 3)
    assert Split.parse("1:4").fraction == pytest.approx(0.2)
    assert Split.parse(0.25).fraction == 0.25
