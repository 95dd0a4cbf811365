"""One error type: every domain error is a UserError, reported by the CLI as one line, exit 2."""

import pytest

from hybridnas.analysis.study import StudyNotFound
from hybridnas.cli import main
from hybridnas.errors import UserError
from hybridnas.proxies.synthetic import TaskSettingsError
from hybridnas.search_space import PatternError, SpecError
from hybridnas.studies.config import StudyConfigError
from hybridnas.studies.storage import StorageError
from hybridnas.studies.where import QueryError
from hybridnas.trainer import BudgetError, ConfigError, DataError
from hybridnas.trainer.train import CheckpointError

DOMAIN_ERRORS = [SpecError, PatternError, StudyConfigError, StorageError, QueryError, ConfigError, DataError,
                 BudgetError, CheckpointError, StudyNotFound, TaskSettingsError]


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda e: e.__name__)
def test_every_domain_error_is_a_user_error(error):
    assert issubclass(error, UserError) and issubclass(error, ValueError)


def test_study_not_found_is_still_a_lookup_error():
    assert issubclass(StudyNotFound, LookupError)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "M-X-"], "error: pattern[2]='X': unknown symbol"),  # PatternError
        # TaskSettingsError
        (["proxy", "recall", "M-*-", "--tasks", "mqar", "--kv-pairs", "100000"], "error: task mqar: "),
        (["inspect", "{tmp}/missing.json"], "error: {tmp}/missing.json: no such file"),  # SpecError from load_spec
        (["launch", "{tmp}/missing/study.toml"], "error: {tmp}/missing/study.toml: cannot read"),  # StudyConfigError
        (["query", "s", "--storage", "nope://x"], "error: storage 'nope://x'"),  # StorageError
        (["query", "s", "--storage", "{db}", "--where", "n_attn =="], "error: --where"),  # QueryError
        (["train", "M-M-", "--flops", "1e9", "--tokenizer", "nope"], "error: tokenizer='nope'"),  # ConfigError
        (["report", "nope", "--storage", "{db}", "-o", "{tmp}/r.html"], "error: no study 'nope'"),  # StudyNotFound
        (["report", "s", "--storage", "sqlite:///{tmp}/none.db", "-o", "{tmp}/r.html"], "error: storage sqlite:///"),
    ],
)
def test_cli_reports_each_error_as_one_line(capsys, tmp_path, stored, args, message):
    def fill(text):
        return text.replace("{tmp}", str(tmp_path)).replace("{db}", stored)

    capsys.readouterr()
    assert main([fill(a) for a in args]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(fill(message)) and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    assert not (tmp_path / "none.db").exists()  # a reader creates nothing


def test_storage_that_cannot_be_opened_is_a_storage_error(tmp_path):
    from hybridnas.analysis.study import list_studies

    with pytest.raises(StorageError, match="no such file"):
        list_studies(f"sqlite:///{tmp_path / 'none.db'}")
