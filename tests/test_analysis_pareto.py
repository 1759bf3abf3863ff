"""Pareto frontier (minimise cost, maximise score) on hand-made cases."""

import math

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.analysis import cost
from workflow_scripts.analysis.pareto import isocost_points, pareto_frontier, pareto_mask


def brute_force(cost_, score):
    n = len(cost_)
    out = []
    for i in range(n):
        if math.isnan(cost_[i]) or math.isnan(score[i]):
            out.append(False)
            continue
        dominated = any(
            not (math.isnan(cost_[j]) or math.isnan(score[j]))
            and cost_[j] <= cost_[i] and score[j] >= score[i]
            and (cost_[j] < cost_[i] or score[j] > score[i])
            for j in range(n))
        out.append(not dominated)
    return out


def test_simple_dominated_point():
    # (2, 0.5) is dominated by (1, 0.6)
    assert pareto_mask([1, 2, 3], [0.6, 0.5, 0.9]).tolist() == [True, False, True]


def test_ties_in_cost_keep_only_best_score():
    assert pareto_mask([1, 1, 2], [0.4, 0.7, 0.8]).tolist() == [False, True, True]


def test_ties_in_score_keep_only_cheapest():
    assert pareto_mask([1, 2, 3], [0.7, 0.7, 0.9]).tolist() == [True, False, True]


def test_exact_duplicates_both_on_frontier_when_non_dominated():
    assert pareto_mask([1, 1, 2, 2], [0.5, 0.5, 0.4, 0.4]).tolist() == [True, True, False, False]


def test_higher_cost_lower_score_and_nan():
    c = [5, 1, 3, np.nan, 2]
    s = [0.1, 0.2, 0.9, 1.0, np.nan]
    assert pareto_mask(c, s).tolist() == [False, True, True, False, False]


def test_empty_and_all_equal():
    assert pareto_mask([], []).tolist() == []
    assert pareto_mask([3, 3, 3], [1, 1, 1]).tolist() == [True, True, True]


def test_matches_brute_force_on_random_points_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = rng.integers(1, 15)
        c = rng.integers(0, 5, n).astype(float)
        s = rng.integers(0, 5, n).astype(float)
        assert pareto_mask(c, s).tolist() == brute_force(c.tolist(), s.tolist())


def test_pareto_frontier_dataframe_grouped_and_sorted():
    df = pd.DataFrame({
        "length": [1, 1, 1, 1, 2, 2],
        "cost": [3.0, 1.0, 2.0, 2.0, 1.0, 5.0],
        "score": [0.9, 0.5, 0.4, 0.7, 0.3, 0.2],
        "name": list("abcdef"),
    })
    res = pareto_frontier(df, by="length")
    assert res.points["on_frontier"].tolist() == [True, True, False, True, True, False]
    assert res.points["name"].tolist() == list("abcdef")  # input order kept
    assert res.frontier["name"].tolist() == ["b", "d", "a", "e"]  # sorted by group, cost
    ungrouped = pareto_frontier(df)
    # b and e tie in cost (1.0); only the higher score (b, 0.5) survives
    assert ungrouped.frontier["name"].tolist() == ["b", "d", "a"]
    with pytest.raises(ValueError):
        pareto_frontier(df, cost="nope")


def test_isocost_points_average_tasks_and_attach_cost():
    dims = {"7B": cost.PAPER_MODELS["Qwen2.5-7B-Instruct"], "14B": cost.PAPER_MODELS["Qwen2.5-14B-Instruct"]}
    rows = []
    for model in dims:
        for task, base in (("a", 0.8), ("b", 0.6)):
            rows.append(dict(model=model, task=task, length=16384, method="dense", ratio=1.0, mean=base, se=0.04))
            rows.append(dict(model=model, task=task, length=16384, method="quest", ratio=10.0, mean=base - 0.1, se=0.03))
    # a cell present for one task only must be dropped
    rows.append(dict(model="7B", task="a", length=16384, method="quest", ratio=20.0, mean=0.1, se=0.03))
    pts = isocost_points(pd.DataFrame(rows), dims, phase="decode", index_dim="head")
    assert len(pts) == 4
    r = pts[(pts.model == "7B") & (pts.method == "quest")].iloc[0]
    assert r["score"] == pytest.approx(0.6) and r["n_tasks"] == 2
    assert r["se"] == pytest.approx(math.sqrt(2 * 0.03 ** 2) / 2)
    assert r["cost"] == pytest.approx(
        cost.method_cost(dims["7B"], "quest", 16384, 10, index_dim="head")["decode_memory"])
    # frontier: the cheaper quest 7B point is on it
    fr = pareto_frontier(pts, cost="cost", score="score").frontier
    assert fr["cost"].is_monotonic_increasing and fr["score"].is_monotonic_increasing
