"""The objective registry is the one home of every objective: each registered objective goes
from a study file through the driver (simulated trials, real Optuna and SQLite) into its
table column and metrics, and back out through query, the dashboard's data and the report."""

import math

import pytest

from hybridnas.analysis.report import write_report
from hybridnas.analysis.study import load_study
from hybridnas.proxies.recall import RECALL_TASKS
from hybridnas.studies.config import Objective, load_study_config, parse_study_config
from hybridnas.studies.objectives import REGISTRY, ObjectiveRef, default_direction, names
from hybridnas.studies.query import query_study
from hybridnas.studies.simulate import simulate
from hybridnas.studies.storage import TRIALS
from study_files import tiny_preset


def _study(tmp_path, name: str, context: int | None):
    """The test-tiny study on (val_loss, ``name``), one baseline, in a fresh SQLite file."""
    entry = f'[[objectives]]\nname = "{name}"\n' + (f"context = {context}\n" if context else "")
    text = tiny_preset("objective-" + name, ('[[objectives]]\nname = "params"\n', entry),
                       ('baselines = ["mamba2", "bae-intra-1:5"]', 'baselines = ["bae-intra-1:5"]'))
    path = tmp_path / "study.toml"
    path.write_text(text)
    return load_study_config(str(path), storage=f"sqlite:///{tmp_path / 'study.db'}", trials=3)


def test_registry_entries_are_complete():
    assert len(set(names())) == len(REGISTRY) and "val_loss" in REGISTRY
    for name, metric in REGISTRY.items():
        assert metric.name == name == metric.column and metric.direction in ("minimize", "maximize")
        assert (metric.cost_field is not None) == (metric.source == "static"), name
        assert (metric.factor is not None) == name.startswith("val_loss_"), name
        assert TRIALS.c[metric.column] is not None
    assert default_direction("flops_spent") == "minimize"  # not an objective: minimised
    # the recall objectives are the tasks the recall proxy can score, plus their mean
    assert {m.task for m in REGISTRY.values() if m.source == "recall"} == {*RECALL_TASKS, None}


@pytest.mark.parametrize("name", names()[1:])  # val_loss is in every study
def test_every_objective_round_trips(tmp_path, name):
    metric = REGISTRY[name]
    context = 4096 if metric.takes_context else None
    config = _study(tmp_path, name, context)

    # config: the registry's direction and context, and the saved config reads back the same
    (objective,) = [o for o in config.objectives if o.name == name]
    assert objective.ref == ObjectiveRef(name, metric.direction, context)
    assert parse_study_config(config.model_dump(mode="json")) == config

    result = simulate(config, runs_dir=tmp_path / "runs")
    assert result.tally.done >= 1 and result.tally.failed == 0, result.tally

    # table: the column and the metric by its key, on every trained complete row
    rows = [r for r in query_study(config.storage, config.name) if r["status"] == "complete"]
    trained = [r for r in rows if r["reused_from"] is None]
    assert trained
    for row in rows:
        assert row[metric.column] is not None, row
        assert row["metrics"][objective.ref.metric_key] == pytest.approx(row[metric.column])

    # query: a filter on the column and a front on it
    where = f'{metric.column} >= 0 and status == "complete"'
    assert len(query_study(config.storage, config.name, where=where)) == len(rows)
    front = query_study(config.storage, config.name, pareto=["val_loss", metric.column])
    assert front and all(r["status"] == "complete" for r in front)

    # dashboard data: the study's objectives and their values
    data = load_study(config.storage, config.name)
    assert data.objectives == list(config.refs)
    values = data.values(data.objectives, data.complete())
    assert values.shape == (len(data.complete()), 2) and not any(math.isnan(v) for v in values.ravel())
    assert objective.ref.label in data.metric_labels()

    # report: the objective's label in its tables
    html = write_report(config.storage, config.name, tmp_path / "report.html").read_text()
    assert objective.ref.label in html


def test_context_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="context: only for cache_bytes, decode_tokens_per_s, prefill"):
        Objective(name="val_loss_2x", context=8192)
