"""Per-cell summaries, the sequence-length analysis (v3 Fig. 3) and per-task method tables.

* :func:`summarise_samples` -- per-sample rows -> per-cell summary (n, mean, se, ...).
* :func:`values_at_ratio` / :func:`relative_error_by_length` -- relative error
  (p_dense - p_sparse) / p_dense at a fixed compression ratio, per length (pooled means).
* :func:`method_comparison_table` -- mean +- SE per method x ratio (v1 Fig. 4 / v3 Fig. 2).
"""

from __future__ import annotations

from typing import Sequence

__all__ = [
    "CELL_KEYS",
    "summarise_samples",
    "values_at_ratio",
    "relative_error_by_length",
    "method_comparison_table",
    "ratio_label",
]

#: Columns identifying a cell.
CELL_KEYS = ("model", "task", "length", "method", "ratio")


def ratio_label(r: float) -> str:
    """Compact label for a compression ratio: 1, 1.43, 3.33, 7.5, 20."""
    return f"{round(float(r), 2):g}"


def summarise_samples(samples, keys: Sequence[str] = CELL_KEYS):
    """Per-cell summary of a per-sample table.

    Output columns: keys..., n, mean, se (sample SD with ddof=1 / sqrt(n); 0 when n = 1),
    and mean_<col> for each of sparsity, prefill_ms, decode_ms_per_token present in the input.
    Rows with a NaN score are ignored for n/mean/se.
    """
    import numpy as np

    keys = list(keys)
    g = samples.dropna(subset=["score"]).groupby(keys, sort=True)
    out = g["score"].agg(n="count", mean="mean", sd="std").reset_index()
    out["se"] = np.where(out["n"] > 1, out["sd"] / np.sqrt(out["n"]), 0.0)
    out = out.drop(columns="sd")
    for col in ("sparsity", "prefill_ms", "decode_ms_per_token"):
        if col in samples.columns:
            m = g[col].mean().rename(f"mean_{col}").reset_index()
            out = out.merge(m, on=keys, how="left")
    return out


def values_at_ratio(summary, ratio: float, methods: Sequence[str] | None = None,
                    interpolate: bool = True, rtol: float = 0.01,
                    dense_method: str = "dense"):
    """Each sparse (model, task, length, method) series' mean score at compression ``ratio``.

    A series having a ratio within ``rtol`` (relative) of the target uses it directly.
    Otherwise, with ``interpolate``, the mean is interpolated linearly in sparsity
    (1 - 1/ratio) between the two nearest available ratios bracketing the target, the dense
    cell counting as sparsity 0 -- the paper's "linear interpolation at intermediate
    sparsities" (v3 section A.1).  No extrapolation: series whose ratios do not bracket the
    target are dropped.

    Output columns: model, task, length, method, ratio (= target), mean_sparse, mean_dense,
    interpolated (bool).
    """
    import numpy as np
    import pandas as pd

    target = float(ratio)
    if target < 1:
        raise ValueError("ratio must be >= 1")
    keys = ["model", "task", "length"]
    dense = (summary[summary["method"] == dense_method]
             .groupby(keys, sort=False)["mean"].mean())
    sparse = summary[summary["method"] != dense_method]
    if methods is not None:
        sparse = sparse[sparse["method"].isin(list(methods))]
    rows = []
    s_target = 1.0 - 1.0 / target
    for key, grp in sparse.groupby(keys + ["method"], sort=True):
        dkey = tuple(key[:3])
        if dkey not in dense.index:
            continue
        md = float(dense.loc[dkey])
        r = grp["ratio"].to_numpy(float)
        m = grp["mean"].to_numpy(float)
        close = np.isclose(r, target, rtol=rtol, atol=0)
        if close.any():
            ms, interp = float(m[close][np.argmin(np.abs(r[close] - target))]), False
        elif interpolate:
            sp = np.concatenate([[0.0], 1.0 - 1.0 / r])
            mm = np.concatenate([[md], m])
            order = np.argsort(sp)
            sp, mm = sp[order], mm[order]
            if not (sp[0] <= s_target <= sp[-1]):
                continue
            ms, interp = float(np.interp(s_target, sp, mm)), True
        else:
            continue
        rows.append(dict(zip(keys + ["method"], key)) | {
            "ratio": target, "mean_sparse": ms, "mean_dense": md, "interpolated": interp})
    cols = keys + ["method", "ratio", "mean_sparse", "mean_dense", "interpolated"]
    return pd.DataFrame(rows, columns=cols)


def relative_error_by_length(summary, ratio: float = 20.0, by: Sequence[str] = ("length",),
                             methods: Sequence[str] | None = None, interpolate: bool = True,
                             rtol: float = 0.01):
    """Relative error (p_dense - p_sparse) / p_dense at a fixed compression ratio (v3 Fig. 3).

    p_dense and p_sparse are the means, over all matched (model, task, method) cells in each
    ``by`` group, of the dense and sparse cell means (so the ratio is of pooled means, as in
    the paper: "0.33 at 16k, 0.26 at 32k, 0.20 at 64k" at a 1/20 budget).  ``by`` may add
    model, method or task to ``length``.

    Output columns: by..., ratio, n_cells, n_interpolated, mean_dense, mean_sparse,
    relative_error (NaN when mean_dense = 0).
    """
    import numpy as np

    by = list(by)
    vals = values_at_ratio(summary, ratio, methods=methods, interpolate=interpolate, rtol=rtol)
    out = (vals.groupby(by, sort=True)
           .agg(n_cells=("mean_sparse", "size"), n_interpolated=("interpolated", "sum"),
                mean_dense=("mean_dense", "mean"), mean_sparse=("mean_sparse", "mean"))
           .reset_index())
    out.insert(len(by), "ratio", float(ratio))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (out["mean_dense"] - out["mean_sparse"]) / out["mean_dense"]
    out["relative_error"] = rel.where(out["mean_dense"] > 0)
    out["n_interpolated"] = out["n_interpolated"].astype(int)
    return out


def method_comparison_table(summary, group_by: Sequence[str] = ("model", "length", "task"),
                            methods: Sequence[str] | None = None, wide: bool = False,
                            decimals: int = 2):
    """Mean +- SE per method x ratio within each ``group_by`` group (dense included).

    Cells sharing (group_by, method, ratio) -- e.g. several models when ``group_by`` omits
    model -- are pooled: mean of cell means, se = sqrt(sum se^2) / k.

    Long output (default) columns: group_by..., method, ratio, ratio_label, n_cells, mean, se,
    label ("0.83 ± 0.04").  ``wide=True``: rows group_by + method, one column per ratio label
    (ascending ratio), values = label, missing combinations empty strings.
    """
    import numpy as np

    group_by = list(group_by)
    sub = summary
    if methods is not None:
        sub = sub[sub["method"].isin(["dense", *methods])]
    keys = group_by + ["method", "ratio"]
    out = (sub.groupby(keys, sort=True)
           .agg(n_cells=("mean", "size"), mean=("mean", "mean"),
                se=("se", lambda x: float(np.sqrt(np.sum(np.square(x)))) / len(x)))
           .reset_index())
    out.insert(len(keys), "ratio_label", out["ratio"].map(ratio_label))
    fmt = f"{{:.{decimals}f}} ± {{:.{decimals}f}}"
    out["label"] = [fmt.format(m, s) for m, s in zip(out["mean"], out["se"])]
    if not wide:
        return out
    order = [ratio_label(r) for r in sorted(out["ratio"].unique())]
    order = list(dict.fromkeys(order))
    w = out.pivot_table(index=group_by + ["method"], columns="ratio_label", values="label",
                        aggfunc="first")
    w = w.reindex(columns=order).fillna("")
    w.columns.name = None
    return w.reset_index()
