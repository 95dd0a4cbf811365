"""CLI conventions (issue 17): --version, -h, completion, HYBRIDNAS_STORAGE, launch --dry-run,
init, config schema, and the readers that never import torch. Real SQLite files, no mocks."""

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from importlib.resources import files

import click
import jsonschema
import pytest
import typer

from hybridnas.cli import app, main
from hybridnas.cli_storage import DEFAULT_STORAGE, STORAGE_ENV
from hybridnas.studies.config import load_study_config, preset_names
from hybridnas.studies.schema import study_schema


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def preset_text(name):
    return (files("hybridnas.studies") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


def study_db(path, name):
    """A SQLite file holding one hybridnas study ``name`` of one row; its URL."""
    import optuna

    from hybridnas.search_space import ArchSpec
    from hybridnas.studies.storage import ResultsStore, spec_columns

    url = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=name, storage=url)
    store = ResultsStore(url)
    store.create()
    spec = ArchSpec.from_pattern("M-*-", d_model=64)
    store.upsert({"study": name, "trial": 0, "status": "complete", "val_loss": 3.0, **spec_columns(spec)})
    store.dispose()
    return url


# ---- --version, -h, completion ------------------------------------------------------------


def test_version(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert (code, out, err) == (0, f"hybridnas {importlib.metadata.version('hybridnas')}\n", "")


def _command_paths(command: click.Command, path: tuple[str, ...] = ()):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*path, name))


@pytest.mark.parametrize("path", list(_command_paths(typer.main.get_command(app))), ids=" ".join)
def test_h_is_help_on_every_command(capsys, path):
    code, out, _ = run_cli(capsys, *path, "-h")
    assert code == 0 and "Usage:" in out and "--help" in out


def test_show_completion_prints_a_script(capsys, monkeypatch):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")  # the shell is named, not detected
    code, out, _ = run_cli(capsys, "--show-completion", "bash")
    assert code == 0 and "_HYBRIDNAS_COMPLETE=complete_bash" in out


def test_completion_request_completes_commands(capsys, monkeypatch):
    for key, value in {"_HYBRIDNAS_COMPLETE": "complete_bash", "COMP_WORDS": "hybridnas la", "COMP_CWORD": "1"}.items():
        monkeypatch.setenv(key, value)
    code, out, _ = run_cli(capsys)
    assert code == 0 and out.split() == ["launch"]


@pytest.mark.parametrize("args", [["--bogus"], ["studies", "--set", "a=1"], ["init"], ["config", "nope"]])
def test_usage_errors_are_still_one_line(capsys, args):
    # --set on a reader: only launch reads a study file, so only launch takes --set
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


# ---- HYBRIDNAS_STORAGE ----------------------------------------------------------------------


def _listed(capsys, *args):
    code, out, err = run_cli(capsys, "studies", *args)
    assert code == 0, err
    return out


def test_storage_flag_beats_variable_beats_default(capsys, tmp_path, monkeypatch):
    flag = study_db(tmp_path / "flag.db", "from-flag")
    variable = study_db(tmp_path / "variable.db", "from-variable")
    monkeypatch.chdir(tmp_path)
    study_db(tmp_path / DEFAULT_STORAGE.removeprefix("sqlite:///"), "from-default")
    monkeypatch.setenv(STORAGE_ENV, variable)
    assert "from-variable" in _listed(capsys)
    assert "from-flag" in _listed(capsys, "--storage", flag)
    monkeypatch.setenv(STORAGE_ENV, "")  # empty: unset, as in shells
    assert "from-default" in _listed(capsys)
    monkeypatch.delenv(STORAGE_ENV)
    assert "from-default" in _listed(capsys)


def test_storage_variable_reaches_query_and_bad_one_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, study_db(tmp_path / "v.db", "v"))
    code, out, _ = run_cli(capsys, "query", "v", "--format", "json")
    assert code == 0 and json.loads(out)[0]["val_loss"] == 3.0
    monkeypatch.setenv(STORAGE_ENV, "nonsense")
    code, _, err = run_cli(capsys, "studies")
    assert code == 2 and err.startswith("error: storage 'nonsense'") and err.count("\n") == 1


def _launch_storage(capsys, *args):
    code, out, err = run_cli(capsys, "launch", *args, "--dry-run")
    assert code == 0, err
    return next(line for line in out.splitlines() if line.startswith("study ")).split(" storage ")[1].split()[0]


def test_launch_storage_precedence(capsys, tmp_path, monkeypatch):
    """--storage (or --set storage=), then HYBRIDNAS_STORAGE, then the file's key, then the default."""
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    text = preset_text("quickstart")
    keyed = tmp_path / "keyed.toml"
    keyed.write_text(text.replace('storage = "sqlite:///hybridnas.db"', f'storage = "sqlite:///{tmp_path}/file.db"'))
    bare = tmp_path / "bare.toml"
    bare.write_text(text.replace('storage = "sqlite:///hybridnas.db"\n', ""))
    flag, variable = f"sqlite:///{tmp_path}/flag.db", f"sqlite:///{tmp_path}/variable.db"
    assert _launch_storage(capsys, str(bare)) == DEFAULT_STORAGE
    assert _launch_storage(capsys, str(keyed)) == f"sqlite:///{tmp_path}/file.db"
    monkeypatch.setenv(STORAGE_ENV, variable)
    assert _launch_storage(capsys, str(keyed)) == variable
    assert _launch_storage(capsys, str(keyed), "--storage", flag) == flag
    assert _launch_storage(capsys, str(keyed), "--set", f'storage="{flag}"') == flag
    assert not list(tmp_path.glob("*.db"))  # a dry run opens no database


# ---- launch --dry-run ------------------------------------------------------------------------


def test_dry_run_reports_and_writes_nothing(capsys, tmp_path):
    db, runs = tmp_path / "study.db", tmp_path / "runs"
    code, out, err = run_cli(capsys, "launch", "quickstart", "--dry-run", "--storage", f"sqlite:///{db}",
                             "--runs-dir", str(runs), "--set", "trials=10")
    assert code == 0, err
    config = load_study_config("quickstart", trials=10, storage=f"sqlite:///{db}", runs_dir=str(runs))
    assert json.loads(out[out.index("{"):out.index("\n}\n") + 2]) == config.model_dump(mode="json")
    assert "search space: 49 distinct feasible candidates" in out  # as the preset's comment says
    sweep = (3 - 1 + 3 * config.trainer.rung_cooldown_frac) * 0.25 * config.budget.flops  # lr_grid of 3, frac 0.25
    per_trial = config.budget.flops + sweep
    assert f"total: at most 10 trials x {per_trial / 1e9:.3g}GFLOPs = {10 * per_trial / 1e12:.3g}TFLOPs" in out
    assert "training on cpu; concurrent = 2" in out and "0 GPU, 1 CPU per trial" in out
    assert "bae-inter-1:5: 6 mixers: 1 attn (inter) + 5 mamba" in out and " tokens in " in out
    assert not db.exists() and not runs.exists()
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_dry_run_for_a_cluster_sizes_gpu_trials(capsys, tmp_path):
    code, out, err = run_cli(capsys, "launch", "bae-small", "--dry-run", "--ray-address", "10.0.0.5:6379",
                             "--storage", f"sqlite:///{tmp_path}/s.db")
    assert code == 0, err
    assert "the Ray cluster at 10.0.0.5:6379 (not contacted" in out and "2 seed(s)" in out
    assert "GPU, 2 CPU per trial" in out and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "budget.flops=1e3"], "error: budget.flops=1000: too small for baseline attention"),
    (["--set", "trainer.device=cuda", "--set", "resources.gpus_per_trial=1"], "error: device='cuda'"),
    (["--set", "space.fusion=intre"], "error: space.fusion: 'intre' is not one of"),
    (["--trials", "0"], "error: --trials=0"),
])
def test_dry_run_bad_input_is_one_line(capsys, tmp_path, args, message):
    if message.startswith("error: device") and __import__("torch").cuda.is_available():
        pytest.skip("this host has a GPU")
    code, _, err = run_cli(capsys, "launch", "quickstart", "--dry-run", "--storage", f"sqlite:///{tmp_path}/s.db",
                           *args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


# ---- init, config schema ---------------------------------------------------------------------


def test_init_prints_the_preset_with_its_comments(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "init", "quickstart")
    assert code == 0 and out == preset_text("quickstart") and out.startswith("# ")
    path = tmp_path / "study.toml"
    path.write_text(out)
    assert load_study_config(str(path)) == load_study_config("quickstart")


def test_init_output_file_is_never_overwritten(capsys, tmp_path):
    path = tmp_path / "study.toml"
    code, _, err = run_cli(capsys, "init", "moe", "-o", str(path))
    assert code == 0 and path.read_text() == preset_text("moe") and "wrote" in err
    path.write_text("mine")
    code, _, err = run_cli(capsys, "init", "moe", "-o", str(path))
    assert code == 2 and "exists; not overwritten" in err and err.count("\n") == 1
    assert path.read_text() == "mine"
    code, _, err = run_cli(capsys, "init", "moe", "-o", str(tmp_path / "no" / "such" / "folder.toml"))
    assert code == 2 and "cannot be written" in err and err.count("\n") == 1


def test_init_unknown_preset_is_one_line(capsys):
    code, out, err = run_cli(capsys, "init", "quickstrat")
    assert code == 2 and out == "" and err.startswith("error: unknown preset 'quickstrat' (available: ")
    assert err.count("\n") == 1


def test_config_schema_validates_every_preset(capsys):
    code, out, _ = run_cli(capsys, "config", "schema")
    assert code == 0
    schema = json.loads(out)
    assert schema == json.loads(json.dumps(study_schema()))
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for name in preset_names():
        data = tomllib.loads(preset_text(name))
        assert not list(validator.iter_errors(data)), name
    data = tomllib.loads(preset_text("quickstart"))
    for key, bad in [("fusion", "intre"), ("attn_ratio", "one to five"), ("placement", ["even", 3])]:
        assert list(validator.iter_errors({**data, "space": {**data["space"], key: bad}})), key
    assert list(validator.iter_errors({**data, "budget": {"flops": -1}}))
    assert list(validator.iter_errors({**data, "bogus": 1}))


# ---- readers never import torch ---------------------------------------------------------------

PROBE = ("import sys; from hybridnas.cli import main; code = main(sys.argv[1:]); "
         "print(code, 'torch' in sys.modules)")


READERS = {  # command: (arguments, the exit code)
    "studies": ([], 0),
    "query": (["s", "--format", "csv"], 0),
    "report": (["s", "-o", "{tmp}/report.html"], 0),
    "dashboard": (["--study", "no-such-study"], 2),  # fails after the dashboard's imports, before it serves
}


def test_readers_do_not_import_torch(tmp_path):
    url = study_db(tmp_path / "study.db", "s")
    running = {  # at once: each is a fresh interpreter, the slow part
        name: subprocess.Popen([sys.executable, "-c", PROBE, name, *(a.format(tmp=tmp_path) for a in args),
                                "--storage", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (args, _) in READERS.items()
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        code, torch = out.split()[-2:]
        assert torch == "False", f"{name} imported torch"
        assert int(code) == READERS[name][1], err
