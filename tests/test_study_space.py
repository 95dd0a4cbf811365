"""SearchSpace on real in-memory Optuna studies: valid specs, conditional parameters,
constraints for infeasible combinations, parameter-target sizing, baselines, spec keys."""

import warnings

import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from hybridnas.search_space import ArchSpec, cost
from hybridnas.studies.config import load_study_config, parse_study_config
from hybridnas.studies.space import CONSTRAINTS, Infeasible, SearchSpace, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

# test-tiny with every kind of conditional dimension searched
WIDE = {
    "space.attention": ["global", "window"],
    "space.window": [256, 512],
    "space.rope": [True, False],
    "space.moe.ffn": ["none", "every", "every_other"],
    "space.moe.n_experts": [4, 8],
    "space.moe.top_k": [1, 2],
}


def tiny_without(*removed: str, **changes):
    """test-tiny with dotted keys removed (overrides cannot remove keys) and changes applied."""
    import tomllib
    from importlib import resources

    data = tomllib.loads((resources.files("hybridnas.studies") / "presets" / "test-tiny.toml").read_text())
    for key in removed:
        section, leaf = key.split(".")
        data[section].pop(leaf)
    for key, value in changes.items():
        section, leaf = key.split(".")
        data[section][leaf] = value
    return parse_study_config(data)


def run_study(config, n_trials: int) -> tuple[optuna.Study, list]:
    """Ask/tell like the driver: feasible trials complete with dummy values, infeasible ones
    are told PRUNED. Returns the study and [(trial number, spec or Infeasible)]."""
    space = SearchSpace(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings of some samplers
        study = optuna.create_study(directions=config.directions, sampler=make_sampler(config))
        outcomes = []
        for _ in range(n_trials):
            trial = study.ask()
            try:
                spec = space.suggest(trial)
            except Infeasible as exc:
                outcomes.append((trial.number, exc))
                study.tell(trial, state=TrialState.PRUNED)
                continue
            outcomes.append((trial.number, spec))
            study.tell(trial, [cost(spec, 32).total.params / 1e5, float(spec.n_attention_mixers)])
    return study, outcomes


@pytest.mark.parametrize("kind", ["tpe", "nsga2", "random", "grid", "gp"])
def test_every_sampler_suggests_valid_specs(kind):
    config = load_study_config("test-tiny", **{"sampler.kind": kind})
    study, outcomes = run_study(config, 12)
    specs = [o for _, o in outcomes if isinstance(o, ArchSpec)]
    assert specs, "no feasible candidate in 12 trials"
    for spec in specs:
        assert ArchSpec.from_json(spec.to_json()) == spec
        assert len(spec.mixers) == config.size.n_mixers
        assert spec.vocab_size == 257  # the bytes tokenizer's
    for trial in study.trials:  # every trial records every constraint, in the same order
        assert list(trial.constraints) == list(CONSTRAINTS)


def test_conditional_parameters_appear_only_when_they_matter():
    config = load_study_config("test-tiny", **WIDE)
    study, outcomes = run_study(config, 60)
    seen = set()
    for trial in study.trials:
        p = trial.params
        seen |= set(p)
        has_attn = p["n_attn"] > 0
        assert ("fusion" in p) == has_attn
        intra = has_attn and p["fusion"] == "intra"
        inter = has_attn and p["fusion"] == "inter"
        assert ("merge.op" in p) == intra and ("hybrid.split" in p) == intra
        assert ("attn" in p) == inter
        assert ("attn.window" in p) == (inter and p.get("attn") == "window")
        assert ("rope" in p) == has_attn
        assert ("placement" in p) == (0 < p["n_attn"] < config.size.n_mixers)
        assert ("moe.n_experts" in p) == (p["moe"] != "none")
        assert "merge.norm" not in p and "moe.n_shared" not in p  # fixed: never asked
    assert {"merge.op", "attn.window", "moe.top_k", "placement"} <= seen
    for _, outcome in outcomes:
        if isinstance(outcome, ArchSpec):
            assert ("W" in outcome.pattern) or outcome.attn.window == 512  # untouched unless used
            if "E" not in outcome.pattern:
                assert outcome.moe == ArchSpec.from_pattern("M-", d_model=32).moe


def test_infeasible_combination_records_constraints():
    config = load_study_config("test-tiny")
    space = SearchSpace(config)
    study = optuna.create_study(directions=config.directions, sampler=make_sampler(config))
    joint = {"fusion": "intra", "n_attn": 1, "placement": "even", "hybrid.split": "1:1",
             "merge.op": "sub", "merge.out_proj": "joint"}
    study.enqueue_trial(joint)
    trial = study.ask()
    with pytest.raises(Infeasible, match="needs equal branch widths") as info:
        space.suggest(trial)
    assert info.value.constraints["branch_widths"] > 0
    study.tell(trial, state=TrialState.PRUNED)
    assert study.trials[0].constraints["branch_widths"] > 0
    # the same merge with the 2:1 split has equal widths: feasible, all constraints zero
    study.enqueue_trial({**joint, "hybrid.split": "2:1"})
    trial = study.ask()
    spec = space.suggest(trial)
    assert spec.hybrid.out_proj == "joint" and "H" in spec.pattern
    study.tell(trial, [1.0, 1.0])
    assert all(v <= 0 for v in study.trials[1].constraints.values())


def test_tpe_steers_away_from_infeasible_region():
    # A quarter of the space is infeasible (joint out-projection at the 1:1 split); once
    # infeasible trials are told PRUNED, the constrained TPE keeps them rare.
    overrides = {"space.n_attn": 1, "space.fusion": "intra", "space.merge.op": ["sub", "mean"],
                 "space.attn_fraction": ["1:1", "2:1"], "space.merge.out_proj": ["joint", "separate"]}
    tpe = load_study_config("test-tiny", **overrides, **{"sampler.kind": "tpe", "sampler.n_startup_trials": 8})
    _, outcomes = run_study(tpe, 40)
    late = [o for _, o in outcomes[20:]]
    assert sum(isinstance(o, Infeasible) for o in late) < len(late) / 4


def test_params_target_sizing():
    overrides = {"size.mode": "params", "size.params": 2e6, "size.d_model": 128,
                 "size.attn": {"n_heads": 8}, "size.max_mixers": 40,
                 "space.attn_ratio": ["1:0", "0:1", "1:3"], "trainer.tokenizer": "bpe", "trainer.vocab_size": 1024}
    config = tiny_without("size.n_mixers", "space.n_attn", **overrides)
    space = SearchSpace(config)
    depths = set()
    for ratio in ("1:0", "0:1", "1:3"):
        for fusion in ("inter", "intra"):
            spec = space.suggest(FixedTrial({"attn_ratio": ratio, "fusion": fusion, "placement": "even",
                                             "hybrid.split": "1:1", "merge.op": "sub", "merge.out_proj": "separate"}))
            params = cost(spec, config.trainer.seq_len).total.params
            assert abs(params - 2e6) / 2e6 < 0.1, (ratio, fusion, params)
            depths.add(len(spec.mixers))
            # the depth is the closest: one more or one less mixer is no closer
            for n in (len(spec.mixers) - 1, len(spec.mixers) + 1):
                other = space._sized(space._ask(FixedTrial({"attn_ratio": ratio, "fusion": fusion,
                    "placement": "even", "hybrid.split": "1:1", "merge.op": "sub",
                    "merge.out_proj": "separate"})), [n], dict.fromkeys(CONSTRAINTS, 0.0))
                assert abs(cost(other, 32).total.params - 2e6) >= abs(params - 2e6)
    assert len(depths) > 1  # pure attention is deeper than pure Mamba at the same parameters


def test_unreachable_params_target_is_infeasible():
    overrides = {"size.mode": "params", "size.params": 1e9, "size.max_mixers": 4,
                 "space.attn_ratio": "1:1", "space.fusion": "inter"}
    space = SearchSpace(tiny_without("size.n_mixers", "space.n_attn", **overrides))
    with pytest.raises(Infeasible, match="size.tolerance") as info:
        space.suggest(FixedTrial({"placement": "even"}))
    assert info.value.constraints["params_target"] > 0


BASELINE_SPACE = {"size.n_mixers": 6, "space.n_attn": [0, 1, 6], "trainer.tokenizer": "bpe",
                  "baselines": ["attention", "mamba2", "bae-inter-1:5", "bae-intra-1:5"]}


def test_baselines_at_study_size():
    config = load_study_config("test-tiny", **BASELINE_SPACE)
    specs = SearchSpace(config).baseline_specs()
    assert specs["attention"].pattern == "*-" * 6
    assert specs["mamba2"].pattern == "M-" * 6
    assert specs["bae-inter-1:5"].pattern.count("*") == 1
    assert specs["bae-intra-1:5"].pattern.count("H") == 1
    assert specs["bae-intra-1:5"].hybrid == ArchSpec.model_fields["hybrid"].default
    assert all(s.d_model == 32 and s.vocab_size == 8192 for s in specs.values())


def test_baselines_enqueue_and_reproduce():
    config = load_study_config("test-tiny", **BASELINE_SPACE)
    space = SearchSpace(config)
    study = optuna.create_study(directions=config.directions, sampler=make_sampler(config))
    specs = space.baseline_specs()
    for name in config.baselines:
        params = space.baseline_params(name)
        assert params is not None, name
        study.enqueue_trial(params)
        trial = study.ask()
        assert space.suggest(trial).key == specs[name].key, name
        study.tell(trial, [1.0, 1.0])


def test_baseline_outside_the_space_gives_none():
    config = load_study_config("test-tiny", **{**BASELINE_SPACE, "space.n_attn": [0, 1]})
    assert SearchSpace(config).baseline_params("attention") is None


def test_identical_suggestions_share_a_key():
    space = SearchSpace(load_study_config("test-tiny", **WIDE))
    params = {"fusion": "inter", "n_attn": 1, "placement": "even", "attn": "window", "attn.window": 256,
              "rope": True, "moe": "every", "moe.n_experts": 4, "moe.top_k": 1}
    a, b = space.spec_from_params(params), space.spec_from_params(dict(params))
    assert a.key == b.key and a == b
    assert a.key != space.spec_from_params({**params, "attn.window": 512}).key
    # without attention, fusion and rope do not change the model: one key
    none_inter = space.spec_from_params({"fusion": "inter", "n_attn": 0, "moe": "none"})
    none_intra = space.spec_from_params({"fusion": "intra", "n_attn": 0, "moe": "none"})
    assert none_inter.key == none_intra.key and none_inter == none_intra
    # a section the layout does not use does not change the key
    other_window = ArchSpec.from_dict({**none_inter.to_dict(), "attn": {**none_inter.attn.model_dump(), "window": 64}})
    assert other_window.key == none_inter.key


def test_grid_covers_searched_parameters_only():
    grid = SearchSpace(load_study_config("test-tiny")).grid()
    assert grid["fusion"] == ["inter", "intra"] and grid["n_attn"] == [0, 1, 2]
    assert "merge.norm" not in grid and "moe" not in grid


def test_every_preset_space_suggests():
    from hybridnas.studies.config import preset_names

    for name in preset_names():
        config = load_study_config(name)
        random_sampler = config.sampler.model_copy(update={"kind": "random"})
        _, outcomes = run_study(config.model_copy(update={"sampler": random_sampler}), 6)
        assert any(isinstance(o, ArchSpec) for _, o in outcomes), name
