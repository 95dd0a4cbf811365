"""`hybridnas inspect | examples | doctor`: output shapes, and bad input as one line, exit 2."""

import json
import subprocess
import sys

import pytest

from hybridnas.cli import main
from hybridnas.search_space import ArchSpec, cost
from hybridnas.search_space.examples import EXAMPLES


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json_shape_and_numbers(capsys):
    code, out, err = run_cli(capsys, "inspect", "M-M-*-", "--d-model", "256", "--seq-len", "1024", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    spec = ArchSpec.from_pattern("M-M-*-", d_model=256)
    report = cost(spec, 1024)
    assert data["spec"] == spec.to_dict() and data["seq_len"] == 1024
    assert [layer["symbol"] for layer in data["layers"]] == list("M-M-*-")
    assert set(data["layers"][0]) >= {"index", "symbol", "params", "train_flops_per_token", "cache_bytes"}
    assert set(data["total"]) >= {
        "params", "params_nonembed", "params_active", "train_flops_per_token", "infer_flops_per_token", "cache_bytes"
    }
    assert data["total"]["params"] == report.total.params
    assert data["total"]["train_flops_per_token"] == report.total.train_flops_per_token
    assert data["layers"][4]["cache_bytes"] == 2 * report.spec.dims.d_kv * 1024 * 2


def test_inspect_table(capsys):
    code, out, _ = run_cli(capsys, "inspect", "bae-inter-1:5", "--seq-len", "8192")
    assert code == 0
    assert "13 mixers: 2 attn (inter) + 11 mamba; dense FFN" in out
    assert "* attention" in out and "M Mamba-2" in out and "16 MiB" in out  # one attention layer's KV at 8K
    assert "43.4 MiB" in out  # the total, as Bae et al. report (43 MiB)


def test_inspect_spec_file_and_d_model_override(capsys, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(ArchSpec.from_pattern("H-M-", d_model=128, hybrid={"merge": "mean"}).to_json())
    code, out, _ = run_cli(capsys, "inspect", str(path), "--json")
    assert code == 0 and json.loads(out)["spec"]["hybrid"]["merge"] == "mean"
    # a partial spec file gets the same derived defaults as a pattern
    partial = tmp_path / "partial.json"
    partial.write_text('{"pattern": "M-*-", "d_model": 128}')
    code, out, _ = run_cli(capsys, "inspect", str(partial), "--json")
    assert json.loads(out)["spec"] == ArchSpec.from_pattern("M-*-", d_model=128).to_dict()


def test_examples_all_build(capsys):
    code, out, _ = run_cli(capsys, "examples", "--names")
    assert code == 0 and out.split() == list(EXAMPLES)
    code, out, _ = run_cli(capsys, "examples")
    assert code == 0 and all(name in out for name in EXAMPLES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "M-X-"], "error: pattern[2]='X': unknown symbol, expected one of M * W H - E"),
        (["inspect", ""], "error: pattern='': empty"),
        (["inspect", "---"], "error: No such option"),  # looks like an option to the parser
        (["inspect", "-E-E"], "error: No such option"),
        (["inspect", "--", "-E-E"], "error: pattern='-E-E': no mixer layer"),
        (["inspect", "M-", "--d-model", "0"], "error: d_model=0: input should be greater than 0"),
        (["inspect", "M-", "--d-model", "-64"], "error: d_model=-64: input should be greater than 0"),
        (["inspect", "M-", "--d-model", "wide"], "error: Invalid value for '--d-model'"),
        (["inspect", "M-", "--seq-len", "0"], "error: Invalid value for '--seq-len'"),
        (["inspect", "M-", "--seq-len", "1e3"], "error: Invalid value for '--seq-len'"),
        (["inspect", "H-", "--d-model", "16"], "error: hybrid.attn_fraction=0.5 leaves a branch of the H block empty"),
        (["inspect", "missing.json"], "error: missing.json: no such file"),
        (["inspect", "mamba-9000"], "error: 'mamba-9000' is neither an example"),
        (["inspect"], "error: Missing argument"),
        (["inspect", "M-", "--colour"], "error: No such option: --colour"),
        (["launch-rockets"], "error: No such command 'launch-rockets'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed JSON"),
        ('{"pattern": "M-", "d_modle": 64}', "d_modle: unknown key"),
        ('{"pattern": "M-", "ssm": {"d_state": "big"}}', "ssm.d_state='big': input should be a valid integer"),
        ('["M-"]', "spec: expected a JSON object, got list"),
        ("", "malformed JSON"),
    ],
)
def test_bad_spec_files(capsys, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, _, err = run_cli(capsys, "inspect", str(path))
    assert code == 2 and message in err and err.count("\n") == 1
    assert path.read_text() == content  # the user's file is untouched


def test_installed_entry_point_reports_bad_input_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "hybridnas", "inspect", "M-Q"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "error: pattern[2]='Q': unknown symbol, expected one of M * W H - E\n"
    assert proc.stdout == ""


def test_doctor(capsys):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0
    for name in ("python", "torch", "optuna", "ray", "device", "optional: mamba-ssm", "optional: causal-conv1d"):
        assert name in out
    assert "cpu" in out or "cuda" in out


def test_bare_command_shows_help(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 0 and "inspect" in out and "doctor" in out
