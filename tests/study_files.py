"""Helpers for tests that run a real study: the test-sized preset, edited, run through a
local Ray that the helper starts and stops."""

from importlib.resources import files
from pathlib import Path

from hybridnas.cluster import ensure_ray


def tiny_preset(name: str, *replacements: tuple[str, str]) -> str:
    """The test-tiny preset's text, renamed, with each (old, new) replaced; an old text that
    is not there is an error (the edit would silently do nothing)."""
    text = (files("hybridnas.studies") / "presets" / "test-tiny.toml").read_text()
    for old, new in [('name = "test-tiny"', f'name = "{name}"'), *replacements]:
        if old not in text:
            raise AssertionError(f"test-tiny.toml has no {old!r}")
        text = text.replace(old, new)
    return text


def run_study(text: str, folder: Path, trials: int) -> str:
    """Write ``text`` as a study file in ``folder``, run it to ``trials`` on a local Ray;
    returns the SQLite URL of its database."""
    import ray

    from hybridnas.studies.launch import launch

    path = folder / "study.toml"
    path.write_text(text)
    url = f"sqlite:///{folder / 'study.db'}"
    ensure_ray(num_cpus=2)
    try:
        launch(str(path), storage=url, trials=trials, progress=False)
    finally:
        ray.shutdown()
    # Move the committed pages out of the WAL now, as a driver's exit eventually does: otherwise
    # whichever later connection closes last (a reader's, even) checkpoints them into the file
    # and changes its bytes without changing its data, which the read-only tests compare
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(folder / "study.db")) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return url
