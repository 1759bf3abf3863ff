"""Pareto frontiers (minimise cost, maximise score) and isoCost point tables.

Dominance: point i dominates j iff cost_i <= cost_j and score_i >= score_j with at least one
strict inequality.  The frontier is the set of non-dominated points.  Consequences:

* equal cost, different score: only the highest score can be on the frontier;
* equal score, different cost: only the cheapest can be on the frontier;
* exact duplicates (same cost and score) do not dominate each other: all copies are on the
  frontier if that (cost, score) is non-dominated;
* points with a NaN cost or score are never on the frontier and never dominate anything.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

__all__ = ["pareto_mask", "ParetoResult", "pareto_frontier", "isocost_points", "task_mean_se"]


def task_mean_se(se) -> float:
    """Standard error of a mean over tasks of independent task means: sqrt(sum se_t^2) / n_tasks."""
    import numpy as np

    return float(np.sqrt(np.sum(np.square(np.asarray(se, dtype=float))))) / max(len(se), 1)


def pareto_mask(cost, score):
    """Boolean array: True where the point (cost[i], score[i]) is on the Pareto frontier.

    O(n log n): sort by (cost ascending, score descending); a point is non-dominated iff its
    score equals the maximum score of its cost group and is strictly greater than every score
    at a strictly lower cost.
    """
    import numpy as np

    c = np.asarray(cost, dtype=float).ravel()
    s = np.asarray(score, dtype=float).ravel()
    if c.shape != s.shape:
        raise ValueError(f"cost and score differ in length: {c.shape} vs {s.shape}")
    mask = np.zeros(c.shape, dtype=bool)
    valid = ~(np.isnan(c) | np.isnan(s))
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return mask
    order = idx[np.lexsort((-s[idx], c[idx]))]  # primary cost asc, secondary score desc
    best_lower = -np.inf  # best score among strictly cheaper points
    i = 0
    n = order.size
    while i < n:
        j = i
        ci = c[order[i]]
        while j < n and c[order[j]] == ci:
            j += 1
        group = order[i:j]
        top = s[group[0]]  # max score of this cost group (sorted desc)
        if top > best_lower:
            mask[group[s[group] == top]] = True
            best_lower = top
        i = j
    return mask


class ParetoResult(NamedTuple):
    """``points``: the input rows plus a boolean ``on_frontier`` column (input order kept);
    ``frontier``: only frontier rows, sorted by (group columns,) cost ascending."""

    points: "object"
    frontier: "object"


def pareto_frontier(df, cost: str = "cost", score: str = "score",
                    by: Sequence[str] | str | None = None) -> ParetoResult:
    """Pareto frontier of a DataFrame, optionally separately within groups ``by``.

    Returns :class:`ParetoResult` (points with ``on_frontier``, frontier sorted by cost).
    """
    import numpy as np

    for col in (cost, score):
        if col not in df.columns:
            raise ValueError(f"pareto_frontier: column {col!r} not in DataFrame")
    points = df.copy()
    on = np.zeros(len(points), dtype=bool)
    if by is None or (not isinstance(by, str) and len(by) == 0):
        on[:] = pareto_mask(points[cost].to_numpy(), points[score].to_numpy())
        keys: list[str] = []
    else:
        keys = [by] if isinstance(by, str) else list(by)
        positions = np.arange(len(points))
        for _, grp in points.assign(_pos=positions).groupby(keys, sort=False, dropna=False):
            pos = grp["_pos"].to_numpy()
            on[pos] = pareto_mask(grp[cost].to_numpy(), grp[score].to_numpy())
    points["on_frontier"] = on
    frontier = points[on].sort_values(keys + [cost, score], ascending=[True] * len(keys) + [True, False],
                                      kind="mergesort")
    return ParetoResult(points=points, frontier=frontier.reset_index(drop=True))


def isocost_points(summary, models: Mapping[str, "object"], phase: str,
                   methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                   **cost_kwargs):
    """isoCost / isoFLOPS points: one row per (model, length, method, ratio), score averaged
    over tasks, cost from :func:`workflow_scripts.analysis.cost.method_cost`.

    ``summary`` needs columns model, task, length, method, ratio, mean, se.  ``phase`` is
    ``"prefill"`` (cost = prefill FLOPs) or ``"decode"`` (cost = decode memory per token; pass
    ``decode_metric="flops"`` for the v1-style decode FLOPs per token).  Other keyword
    arguments go to ``method_cost`` (batch, index_dim, bytes_per_element, ...).  ``methods`` defaults to the
    phase's paper choice (vertical_slash / quest); dense is always included.  Only
    (model, length, method, ratio) combinations present for **every** selected task are kept,
    so averages are over the same task set.

    Output columns: model, length, method, ratio, n_tasks, score (mean of task means),
    se (sqrt(sum se^2) / n_tasks), cost, cost_unit, n_params.
    """
    import pandas as pd

    from . import DENSE_METHOD
    from .cost import method_cost

    decode_metric = cost_kwargs.pop("decode_metric", "memory")
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    if methods is None:
        methods = ["vertical_slash"] if phase == "prefill" else ["quest"]
    keep = list(dict.fromkeys([DENSE_METHOD, *methods]))
    sub = summary[summary["method"].isin(keep)]
    if tasks is not None:
        sub = sub[sub["task"].isin(list(tasks))]
    task_set = sorted(sub["task"].unique())
    if not task_set:
        raise ValueError("isocost_points: no rows for the selected methods/tasks")
    keys = ["model", "length", "method", "ratio"]
    agg = (sub.groupby(keys, sort=True)
              .agg(n_tasks=("task", "nunique"), score=("mean", "mean"),
                   se=("se", task_mean_se))
              .reset_index())
    agg = agg[agg["n_tasks"] == len(task_set)].reset_index(drop=True)
    costs, units, params = [], [], []
    for rec in agg.itertuples(index=False):
        if rec.model not in models:
            raise ValueError(f"isocost_points: no ModelDims for model {rec.model!r}")
        dims = models[rec.model]
        out = method_cost(dims, rec.method, int(rec.length), float(rec.ratio), **cost_kwargs)
        if phase == "prefill":
            costs.append(out["prefill_flops"]); units.append("flops")
        elif decode_metric == "flops":
            costs.append(out["decode_flops"]); units.append("flops")
        else:
            costs.append(out["decode_memory"])
            units.append("elements" if cost_kwargs.get("bytes_per_element", 1) == 1 else "bytes")
        params.append(dims.params)
    agg["cost"] = costs
    agg["cost_unit"] = units
    agg["n_params"] = params
    return pd.DataFrame(agg)
