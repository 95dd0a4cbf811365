"""`hybridnas launch | studies | query` on bad input: one line, exit code 2, nothing stored lost."""

import pytest

from hybridnas import ArchSpec
from hybridnas.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["launch", "no-such-preset"], "error: unknown preset 'no-such-preset'"),
        (["launch", "quickstart", "--trials", "0"], "error: --trials=0: must be at least 1"),
        (["launch", "quickstart", "--storage", "mysql://u@h/db"], "error: storage 'mysql://u@h/db'"),
        (["studies", "--storage", "nonsense"], "error: storage 'nonsense'"),
        (["query", "s", "--format", "xml"], "error: --format=xml"),
        (["launch", "quickstart", "--set", "budget.flops"], "error: --set budget.flops: expected KEY=VALUE"),
        (["launch", "quickstart", "--set", "budget.flops=-1"], "error: budget.flops=-1: input should be greater"),
        (["launch", "quickstart", "--set", "budget.flopz=1e9"], "error: unknown key 'budget.flopz'"),
    ],
)
def test_bad_study_input_is_one_line(capsys, args, message):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.startswith(message), err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("name = 'x'\n[budget\nflops = 1", "line 2"),
        ("name = 'x'\n[size]\nd_model = 64\nn_mixers = 2\n[budget]\nflops = 1e9\nflop = 2",
         "unknown key 'budget.flop'"),
        ("name = 'x'\n[size]\nd_model = 64\nn_mixers = 2\n[budget]\nflops = 1e9\n[space]\nfusion = 'intre'",
         "space.fusion: 'intre' is not one of inter, intra"),
        ("name = 'x'\nenqueue = [{fusion = 'intre'}]\n[size]\nd_model = 64\nn_mixers = 2\n[budget]\nflops = 1e9\n"
         "[space]\nfusion = ['inter', 'intra']", "enqueue[0].fusion: 'intre' is not one of inter, intra"),
        ("name = 'x'\nenqueue = [{fusions = 'inter'}]\n[size]\nd_model = 64\nn_mixers = 2\n[budget]\nflops = 1e9\n"
         "[space]\nfusion = ['inter', 'intra']", "enqueue[0].fusions: not a searched parameter"),
    ],
)
def test_bad_study_files(capsys, tmp_path, toml, message):
    path = tmp_path / "study.toml"
    path.write_text(toml)
    code, _, err = run_cli(capsys, "launch", str(path), "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert path.read_text() == toml and not (tmp_path / "db.sqlite").exists()  # nothing written


def test_query_filters_sorts_and_rejects_injection(capsys, stored):
    code, out, _ = run_cli(capsys, "query", "s", "--storage", stored, "--where", "n_attn >= 1", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("1,complete,M-*-")
    code, out, _ = run_cli(capsys, "query", "s", "--storage", stored, "--sort", "-val_loss", "--format", "csv")
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["1", "0"]
    for bad in ['fusion == "x"; DROP TABLE hybridnas_trials', "1=1 --", '__import__("os")', "n_attn == 'two'"]:
        code, _, err = run_cli(capsys, "query", "s", "--storage", stored, "--where", bad)
        assert code == 2 and err.startswith("error: --where") and err.count("\n") == 1, err
    code, out, _ = run_cli(capsys, "query", "s", "--storage", stored, "--format", "csv")
    assert len(out.splitlines()) == 3  # both rows still there


def test_query_pareto_and_studies(capsys, stored):
    code, out, _ = run_cli(capsys, "query", "s", "--storage", stored, "--pareto", "val_loss,n_attn", "--format", "csv")
    assert code == 0 and len(out.splitlines()) == 2  # M-M- has the lower loss and fewer attention layers
    code, _, err = run_cli(capsys, "query", "nope", "--storage", stored)
    assert code == 2 and "no study 'nope'" in err
    code, out, _ = run_cli(capsys, "studies", "--storage", stored)
    assert code == 0 and "s" in out and "3.0000" in out


def test_query_pareto_gives_the_fronts_full_rows(stored):
    """The front is found on the scalar columns, then its rows are read whole (spec and all)."""
    from hybridnas.studies.query import query_study

    front = query_study(stored, "s", pareto=["val_loss", "n_attn"])
    assert front == [r for r in query_study(stored, "s") if r["trial"] == 0]
    assert ArchSpec.from_dict(front[0]["spec"]) == ArchSpec.from_pattern("M-M-", d_model=64)
