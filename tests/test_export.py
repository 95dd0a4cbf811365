"""``hybridnas export``: every format loaded back by its own library, the HF weights checked
by logits, and every layer a format cannot express refused in one line, nothing written."""

import importlib.util
import json
import os
import shlex
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from hybridnas.cli_export import export_command
from hybridnas.export import UnsupportedLayerError, export, render
from hybridnas.export.hf import check_logits
from hybridnas.search_space import ArchSpec
from hybridnas.studies.storage import ResultsStore, spec_columns

os.environ["HF_HUB_OFFLINE"] = "1"  # every HF load here is a local folder
transformers = pytest.importorskip("transformers")

SMALL = {"d_model": 64, "vocab_size": 256, "attn": {"n_heads": 4}, "ssm": {"d_state": 16, "chunk_size": 16}}


def small(pattern: str, **overrides) -> ArchSpec:
    merged = {**SMALL, **overrides}
    for section in ("attn", "ssm"):  # nested overrides add to the small sizes
        merged[section] = {**SMALL[section], **overrides.get(section, {})}
    return ArchSpec.from_pattern(pattern, **merged)


@pytest.fixture
def cli():
    """The command on an app of its own (hybridnas.cli registers it the same way)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("export")(export_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps "export" as a subcommand name
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["export", *args])


# ---- json --------------------------------------------------------------------------------


def test_json_round_trips_through_the_command(cli, tmp_path):
    spec_file = tmp_path / "in.json"
    spec = small("M-H-W-E-", attn={"window": 8})
    spec_file.write_text(spec.to_json())
    result = cli(str(spec_file), "--to", "json")
    assert result.exit_code == 0, result.output
    assert ArchSpec.from_json(result.stdout) == spec
    result = cli(str(spec_file), "--to", "json", "-o", str(tmp_path / "new" / "dir"))
    assert result.exit_code == 0, result.output
    assert ArchSpec.from_json((tmp_path / "new" / "dir" / "spec.json").read_text()) == spec


# ---- mamba-ssm ---------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["M-M-*-M-", "MM*M"])
def test_mamba_ssm_config(pattern):
    spec = small(pattern)
    data = json.loads(render(spec, "mamba-ssm"))
    assert data["n_layer"] == 4 and data["attn_layer_idx"] == [2]
    assert data["d_intermediate"] == (spec.d_ffn if "-" in pattern else 0)
    assert data["ssm_cfg"]["headdim"] == spec.ssm.head_dim and data["attn_cfg"]["num_heads_kv"] == spec.attn.n_kv_heads
    assert data["attn_cfg"]["rotary_emb_dim"] == spec.attn.head_dim
    found = importlib.util.find_spec("mamba_ssm")  # finds the package without importing it
    if found is None or not found.submodule_search_locations:
        pytest.skip("mamba-ssm is not installed (pip install mamba-ssm needs MAMBA_FORCE_BUILD=TRUE "
                    "MAMBA_SKIP_CUDA_BUILD=TRUE on a CPU-only machine)")
    # its config module alone: the package's __init__ imports Triton kernels, absent on a CPU
    path = Path(next(iter(found.submodule_search_locations))) / "models" / "config_mamba.py"
    module_spec = importlib.util.spec_from_file_location("mamba_ssm_config_mamba", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    MambaConfig = module.MambaConfig
    config = MambaConfig(**data)  # a dataclass: an unknown field is a TypeError
    assert config.n_layer == 4 and config.ssm_cfg["layer"] == "Mamba2" and config.attn_layer_idx == [2]


# ---- megatron ----------------------------------------------------------------------------


def _parse_args_file(text: str) -> dict[str, str | None]:
    """The MODEL_ARGS=( ... ) file back into {flag: value or None}, as bash would split it."""
    body = text.split("MODEL_ARGS=(", 1)[1].rsplit(")", 1)[0]
    words = shlex.split(body)
    out: dict[str, str | None] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            following = words[i + 1] if i + 1 < len(words) else None
            out[word] = None if following is None or following.startswith("--") else following
    return out


def test_megatron_args_parse_back(tmp_path):
    spec = small("M-M-*-ME", tie_embeddings=False, moe={"n_experts": 4, "top_k": 2, "router": "softmax"})
    args = _parse_args_file(export(spec, "megatron", tmp_path, seq_len=512).text or "")
    assert (tmp_path / "megatron_args.sh").read_text().count("MODEL_ARGS") == 1
    assert args["--hybrid-override-pattern"] == "M-M-*-ME"
    assert int(args["--num-layers"]) == 8 and int(args["--hidden-size"]) == 64
    assert int(args["--ffn-hidden-size"]) == spec.d_ffn and "--swiglu" in args
    assert int(args["--num-attention-heads"]) == spec.attn.n_heads
    assert int(args["--num-query-groups"]) == spec.attn.n_kv_heads
    assert int(args["--mamba-state-dim"]) == 16 and int(args["--mamba-head-dim"]) == spec.ssm.head_dim
    assert int(args["--seq-length"]) == 512 and args["--position-embedding-type"] == "rope"
    assert int(args["--vocab-size"]) + 1 == 256  # NullTokenizer adds its end-of-document id
    assert "--untie-embeddings-and-output-weights" in args
    assert int(args["--num-experts"]) == 4 and int(args["--moe-router-topk"]) == 2
    assert int(args["--moe-shared-expert-intermediate-size"]) == spec.moe.d_expert


def test_megatron_to_stdout(cli):
    result = cli("M-*-", "--to", "megatron")
    assert result.exit_code == 0, result.output
    assert _parse_args_file(result.stdout)["--hybrid-override-pattern"] == "M-*-"


# ---- hf ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "overrides", "model_type", "layers"), [
    ("M-M-*-M-", {}, "granitemoehybrid", ["linear_attention", "linear_attention", "full_attention",
                                          "linear_attention"]),
    ("M*MM", {"attn": {"rope": False}}, "nemotron_h", ["linear_attention", "full_attention", "linear_attention",
                                                       "linear_attention"]),
])
def test_hf_config_loads_with_auto_classes(tmp_path, pattern, overrides, model_type, layers):
    spec = small(pattern, **overrides)
    export(spec, "hf", tmp_path / "out")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert config.model_type == model_type and list(config.layer_types) == layers
    model = transformers.AutoModelForCausalLM.from_config(config)
    ours = sum(p.numel() for p in __import__("hybridnas").HybridLM(spec).parameters())
    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    theirs = sum(p.numel() for p in model.parameters()) + (0 if tied else -spec.vocab_size * spec.d_model)
    assert theirs == ours  # same architecture, same parameter count


@pytest.mark.parametrize(("pattern", "overrides"), [
    ("M-M-*-M-", {}),  # GraniteMoeHybrid, RoPE, tied head
    ("*-M-M-", {"tie_embeddings": False, "ssm": {"n_groups": 2}, "attn": {"rope_theta": 500.0}}),
    ("M*MM", {"attn": {"rope": False}}),  # NemotronH
])
def test_hf_weights_logits_match(tmp_path, pattern, overrides):
    from hybridnas.export.source import Source, load_weights

    spec = small(pattern, **overrides)
    weights = load_weights(Source(spec, pattern), trial=False, seed=3)
    result = export(spec, "hf", tmp_path, weights=weights)
    assert result.logits is not None and result.logits.ok, result.logits
    assert (tmp_path / "model.safetensors").is_file()
    # the check can fail: other weights than the exported ones differ far beyond the tolerance
    other = load_weights(Source(spec, pattern), trial=False, seed=4)
    assert not check_logits(spec, other, tmp_path).ok


def test_hf_needs_a_folder(cli):
    result = cli("M-*-", "--to", "hf")
    assert "-o DIR" in str(result.exception)


# ---- a study trial -----------------------------------------------------------------------


def test_trial_weights_from_model_pt(cli, tmp_path):
    from hybridnas.model import HybridLM

    spec = small("M-*-M-")
    run = tmp_path / "runs" / "trial-00003" / "seed-0"
    run.mkdir(parents=True)
    model = HybridLM(spec, seed=7)
    torch.save({"spec": spec.to_dict(), "model": model.state_dict()}, run / "model.pt")  # as the trainer saves it
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = ResultsStore(url)
    store.create()
    store.upsert({"study": "s", "trial": 3, "status": "complete", **spec_columns(spec),
                  "config": {"out_dir": str(run), "seq_len": 128}})
    store.dispose()
    result = cli("s", "--trial", "3", "--storage", url, "--to", "hf", "--weights", "-o", str(tmp_path / "hf"))
    assert result.exit_code == 0, result.output
    assert "logits match" in result.stderr
    config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert config.max_position_embeddings == 128  # the trial's training length
    missing = cli("s", "--trial", "9", "--storage", url, "--to", "json")
    assert "has no such trial" in str(missing.exception)


# ---- refusals ----------------------------------------------------------------------------


REFUSALS = [
    ("mamba-ssm", "M-W-", {}, "pattern[2]='W': mamba-ssm cannot express sliding-window attention"),
    ("mamba-ssm", "H-M-", {}, "pattern[0]='H': mamba-ssm cannot express the intra-layer hybrid"),
    ("mamba-ssm", "M-ME", {}, "pattern[3]='E': mamba-ssm cannot express an MoE FFN"),
    ("mamba-ssm", "M-E-", {}, "pattern[2]='E': mamba-ssm cannot express an MoE FFN"),
    ("mamba-ssm", "M-M*-", {}, "pattern[2]='M': mamba-ssm cannot express a mixer without one '-' after it"),
    ("mamba-ssm", "-M", {}, "pattern[0]='-': mamba-ssm cannot express an FFN before the first mixer"),
    ("mamba-ssm", "MM-", {}, "pattern[2]='-': mamba-ssm cannot express an FFN here"),
    ("megatron", "M-W-", {}, "pattern[2]='W': megatron cannot express sliding-window attention"),
    ("megatron", "M-H-", {}, "pattern[2]='H': megatron cannot express the intra-layer hybrid"),
    ("megatron", "*-M-", {"ssm": {"expand": 4}}, "pattern[2]='M': megatron cannot express Mamba-2 with ssm.expand=4"),
    ("megatron", "M-", {"ssm": {"conv_kernel": 2}}, "pattern[0]='M': megatron cannot express Mamba-2 with "
     "ssm.conv_kernel=2"),
    ("hf", "M-W-", {}, "pattern[2]='W': hf (GraniteMoeHybrid) cannot express sliding-window attention"),
    ("hf", "M-H-", {}, "pattern[2]='H': hf (GraniteMoeHybrid) cannot express the intra-layer hybrid"),
    ("hf", "M-*E", {}, "pattern[3]='E': hf (GraniteMoeHybrid) cannot express an MoE FFN"),
    ("hf", "M-*M-", {}, "pattern[2]='*': hf (GraniteMoeHybrid) cannot express a mixer without one '-' after it"),
    ("hf", "M-M--", {}, "pattern[4]='-': hf (GraniteMoeHybrid) cannot express two FFNs in a row"),
    ("hf", "MM-", {}, "pattern[0]='M': hf (GraniteMoeHybrid) cannot express a mixer without one '-' after it"),
    ("hf", "MM*", {}, "pattern[2]='*': hf (NemotronH, for layouts without FFNs) cannot express attention with RoPE"),
    ("hf", "MWM", {}, "pattern[1]='W': hf (NemotronH, for layouts without FFNs) cannot express sliding-window"),
    ("hf", "MH", {}, "pattern[1]='H': hf (NemotronH, for layouts without FFNs) cannot express the intra-layer"),
]


@pytest.mark.parametrize(("fmt", "pattern", "overrides", "message"), REFUSALS,
                         ids=[f"{f}:{p}" for f, p, _, _ in REFUSALS])
def test_unsupported_layer_is_one_line_and_writes_nothing(cli, tmp_path, fmt, pattern, overrides, message):
    spec = small(pattern, **overrides)
    out = tmp_path / "never"
    with pytest.raises(UnsupportedLayerError) as caught:
        export(spec, fmt, out)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert not out.exists()
    if not overrides:  # the command says the same (hybridnas.cli prints it as `error: ...`, exit 2)
        result = cli("--to", fmt, "-o", str(out), "--", pattern)  # "--": a pattern may start with "-"
        assert isinstance(result.exception, UnsupportedLayerError) and str(result.exception).startswith(message)
        assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["M-", "--to", "onnx"], "--to onnx: unknown format"),
    (["M-", "--to", "json", "--weights"], "--weights: only --to hf"),
    (["M-", "--to", "json", "--storage", "sqlite:///x.db"], "--storage: only with --trial"),
    (["s", "--trial", "1", "--d-model", "64", "--to", "json"], "--d-model: a trial's spec is fixed"),
])
def test_bad_options(cli, args, message):
    from hybridnas.errors import UserError

    result = cli(*args)
    assert isinstance(result.exception, UserError) and str(result.exception).startswith(message)
