"""Effect summaries and figures against brute force on random rows shaped like the study table."""

import itertools
import math
import random
import statistics

import numpy as np
import pytest

from hybridnas import pareto
from hybridnas.analysis import figures
from hybridnas.analysis.effects import effect_summary
from hybridnas.analysis.study import ObjectiveRef, StudyData


def random_rows(n=200, seed=0):
    rng = random.Random(seed)
    rows = []
    for trial in range(n):
        fusion = rng.choice(["inter", "intra", "none"])
        seeds = [rng.gauss(3.0, 0.2) for _ in range(rng.choice([1, 3]))]
        rows.append({
            "trial": trial, "status": rng.choice(["complete"] * 4 + ["pruned"]), "reused_from": None,
            "pattern": "".join(rng.choice("M*H") + "-" for _ in range(rng.randint(2, 6))),
            "fusion": fusion, "merge_op": rng.choice(["sub", "mean"]) if fusion == "intra" else None,
            "baseline": "mamba2" if trial == 0 else None,
            "val_loss": statistics.fmean(seeds) if rng.random() > 0.05 else None,
            "params": rng.randint(10**5, 10**6),
            "metrics": {"val_loss_seeds": seeds, "decode_tokens_per_s@8192": rng.uniform(1e3, 1e4)},
        })
    return rows


def test_effect_summary_matches_a_brute_force_groupby():
    rows = random_rows()
    groups = effect_summary(rows, ("fusion", "merge_op"))
    expected = {}
    for row in rows:
        if row["val_loss"] is not None:
            expected.setdefault((row["fusion"], row["merge_op"]), []).append(row)
    assert {(g["fusion"], g["merge_op"]) for g in groups} == set(expected)
    for g in groups:
        members = expected[(g["fusion"], g["merge_op"])]
        losses = [r["val_loss"] for r in members]
        assert g["n"] == len(members) and g["mean"] == pytest.approx(sum(losses) / len(losses))
        assert g["std"] == (pytest.approx(statistics.stdev(losses)) if len(losses) > 1 else None)
        assert g["best"] == min(losses) and g["worst"] == max(losses)
        spreads = [
            statistics.stdev(r["metrics"]["val_loss_seeds"]) for r in members if len(r["metrics"]["val_loss_seeds"]) > 1
        ]
        assert g["seed_std"] == (pytest.approx(sum(spreads) / len(spreads)) if spreads else None)
    assert [g["mean"] for g in groups] == sorted(g["mean"] for g in groups)


def test_effect_summary_of_a_maximised_metric_puts_the_best_first():
    rows = random_rows(seed=1)
    groups = effect_summary(rows, ("fusion",), metric="decode_tokens_per_s@8192")
    assert [g["mean"] for g in groups] == sorted((g["mean"] for g in groups), reverse=True)
    assert all(g["best"] >= g["worst"] for g in groups)


def test_pareto_figure_draws_the_front_of_the_complete_trials():
    rows = random_rows(seed=2)
    rows[0].update(status="complete", val_loss=3.0)  # the baseline is drawn as a star
    objectives = [ObjectiveRef("val_loss"), ObjectiveRef("params")]
    data = StudyData("s", objectives, rows)
    for hover in ("html", "data"):
        figure = figures.pareto_figure(data, rows, objectives, hover=hover)
        front = next(t for t in figure.data if t.name == "Pareto front")
        complete = [r for r in rows if r["status"] == "complete" and r["val_loss"] is not None]
        points = np.array([[r["val_loss"], r["params"]] for r in complete])
        brute = [i for i, p in enumerate(points) if not any((q <= p).all() and (q < p).any() for q in points)]
        assert sorted(int(c) for c in front.customdata) == sorted(complete[i]["trial"] for i in brute)
        trials = sum(len(t.x) for t in figure.data if t.name.endswith("fusion") or t.name == "pure")
        assert trials == len(complete)
        stars = next(t for t in figure.data if t.name == "baselines")
        assert list(stars.text) == ["mamba2"]
    html_figure = figures.pareto_figure(data, rows, objectives, hover="html")
    label = html_figure.data[0].hovertext[0]
    pattern = next(r for r in rows if r["trial"] == html_figure.data[0].customdata[0])["pattern"]
    assert label.count("█") == len(pattern)  # one cell per layer
    data_figure = figures.pareto_figure(data, rows, objectives, hover="data")
    assert data_figure.data[0].hoverinfo == "none"
    meta = data_figure.layout.meta
    assert meta["objectives"] == ["val_loss", "params"]
    for trace in data_figure.data:  # every point's trial has its layout, and only its own
        for trial in trace.customdata:
            layout, *third = meta["points"][str(trial)]
            row = next(r for r in rows if r["trial"] == trial)
            assert meta["layouts"][layout][0] == row["pattern"] and row["fusion"] in meta["layouts"][layout][1]
            assert third == []
    assert len(meta["layouts"]) == len({figures._described(r) for r in complete})
    assert len(data_figure.to_json()) < len(html_figure.to_json())


def test_three_objectives_colour_by_the_third_and_bad_counts_are_refused():
    rows = random_rows(seed=3)
    objectives = [ObjectiveRef("val_loss"), ObjectiveRef("params"), ObjectiveRef.parse("decode_tokens_per_s@8192")]
    data = StudyData("s", objectives, rows)
    figure = figures.pareto_figure(data, rows, objectives)
    points = figures.pareto_figure(data, rows, objectives, hover="data").layout.meta["points"]
    third = [points[str(trial)][1] for trial in figure.data[0].customdata]  # the hover's third value
    assert third == list(figure.data[0].marker.color)
    assert figure.data[0].marker.showscale and "decode_tokens_per_s@8192 ↑" in figure.data[0].marker.colorbar.title.text
    values = data.values(objectives, [r for r in rows if r["status"] == "complete" and r["val_loss"] is not None])
    front = next(t for t in figure.data if t.name == "Pareto front")
    assert len(front.x) == len(pareto.pareto_front(values, [o.direction for o in objectives]))
    with pytest.raises(ValueError, match="2 or 3 objectives"):
        figures.pareto_figure(data, rows, objectives[:1])


def test_objective_value_reads_columns_then_metrics_and_is_nan_when_missing():
    row = {"val_loss": 2.5, "params": None, "metrics": {"params": 7, "decode_tokens_per_s@8192": 1e4}}
    assert ObjectiveRef("val_loss").value(row) == 2.5
    assert ObjectiveRef("params").value(row) == 7
    assert ObjectiveRef.parse("decode_tokens_per_s@8192").value(row) == 1e4
    assert ObjectiveRef.parse("decode_tokens_per_s@8192").direction == "maximize"
    assert math.isnan(ObjectiveRef("cache_bytes").value(row))


def test_layout_strip_has_one_cell_per_layer():
    labelled = [(f"t{i}", "".join(p)) for i, p in enumerate(itertools.islice(itertools.product("M*H-E", repeat=4), 5))]
    figure = figures.layout_strip(labelled)
    heat = figure.data[0]
    assert len(heat.z) == 5 and all(len(row) == 4 for row in heat.z)
    symbols = list(figures.LAYER_COLORS)
    assert [[symbols[v] for v in row] for row in heat.z] == [list(p) for _, p in labelled]
