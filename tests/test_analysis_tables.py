"""Per-cell summary, sequence-length relative error, method comparison tables."""

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.analysis import tables


def cell(model, task, length, method, ratio, mean, se=0.02, n=100):
    return dict(model=model, task=task, length=length, method=method, ratio=ratio, mean=mean, se=se, n=n)


def test_summarise_samples():
    s = pd.DataFrame({
        "model": ["m"] * 5, "task": ["t"] * 5, "length": [1024] * 5,
        "method": ["dense", "dense", "dense", "quest", "quest"], "ratio": [1, 1, 1, 5, 5],
        "sample_id": [0, 1, 2, 0, 1], "score": [1.0, 0.0, 1.0, 0.5, np.nan],
        "sparsity": [0, 0, 0, 0.8, 0.8], "prefill_ms": [10.0, 12.0, 14.0, 10.0, 10.0]})
    out = tables.summarise_samples(s).set_index("method")
    assert out.loc["dense", "n"] == 3 and out.loc["dense", "mean"] == pytest.approx(2 / 3)
    assert out.loc["dense", "se"] == pytest.approx(np.std([1, 0, 1], ddof=1) / np.sqrt(3))
    assert out.loc["quest", "n"] == 1 and out.loc["quest", "se"] == 0.0
    assert out.loc["dense", "mean_prefill_ms"] == pytest.approx(12.0)
    assert "mean_decode_ms_per_token" not in out.columns


def test_relative_error_exact_ratio_pooled_means():
    rows = []
    for length, (d, s) in {16384: (0.8, 0.6), 32768: (0.5, 0.4)}.items():
        rows += [cell("m", "a", length, "dense", 1.0, d), cell("m", "a", length, "quest", 20.0, s),
                 cell("m", "b", length, "dense", 1.0, d), cell("m", "b", length, "quest", 20.0, s - 0.2)]
    out = tables.relative_error_by_length(pd.DataFrame(rows), ratio=20)
    r = out.set_index("length")
    # pooled: (mean_dense - mean_sparse) / mean_dense, not mean of per-cell ratios
    assert r.loc[16384, "relative_error"] == pytest.approx((0.8 - 0.5) / 0.8)
    assert r.loc[32768, "relative_error"] == pytest.approx((0.5 - 0.3) / 0.5)
    assert r.loc[32768, "n_cells"] == 2 and r.loc[32768, "n_interpolated"] == 0


def test_relative_error_interpolates_in_sparsity_without_extrapolation():
    rows = [cell("m", "a", 1024, "dense", 1.0, 1.0),
            cell("m", "a", 1024, "block_sparse", 10.0, 0.8),
            cell("m", "a", 1024, "block_sparse", 30.0, 0.4),
            cell("m", "a", 1024, "vertical_slash", 15.0, 0.7)]  # cannot reach 20: dropped
    vals = tables.values_at_ratio(pd.DataFrame(rows), 20)
    assert vals["method"].tolist() == ["block_sparse"]
    # sparsity 0.9 -> 0.8, 0.9667 -> 0.4; target 0.95 is 3/4 of the way
    assert vals["mean_sparse"].iloc[0] == pytest.approx(0.8 + 0.75 * (0.4 - 0.8))
    assert bool(vals["interpolated"].iloc[0])
    # dense anchors sparsity 0
    v2 = tables.values_at_ratio(pd.DataFrame(rows), 2)
    bs = v2.set_index("method").loc["block_sparse", "mean_sparse"]
    assert bs == pytest.approx(1.0 + (0.5 / 0.9) * (0.8 - 1.0))
    none = tables.values_at_ratio(pd.DataFrame(rows), 20, interpolate=False)
    assert none.empty
    # ratio 3.33 matches 10/3 within tolerance without interpolation
    rows2 = [cell("m", "a", 1024, "dense", 1.0, 1.0), cell("m", "a", 1024, "quest", 10 / 3, 0.9)]
    v3 = tables.values_at_ratio(pd.DataFrame(rows2), 3.33)
    assert not v3["interpolated"].iloc[0] and v3["mean_sparse"].iloc[0] == 0.9


def test_method_comparison_table_long_and_wide():
    rows = [cell("m1", "a", 1024, "dense", 1.0, 0.9, 0.03), cell("m1", "a", 1024, "quest", 10 / 3, 0.8, 0.04),
            cell("m2", "a", 1024, "dense", 1.0, 0.7, 0.04), cell("m2", "a", 1024, "quest", 10 / 3, 0.6, 0.03),
            cell("m1", "a", 1024, "snapkv", 20.0, 0.5, 0.05)]
    long = tables.method_comparison_table(pd.DataFrame(rows))
    q = long[(long.model == "m1") & (long.method == "quest")].iloc[0]
    assert q["label"] == "0.80 ± 0.04" and q["ratio_label"] == "3.33"
    pooled = tables.method_comparison_table(pd.DataFrame(rows), group_by=("length", "task"))
    pq = pooled[pooled.method == "quest"].iloc[0]
    assert pq["n_cells"] == 2 and pq["mean"] == pytest.approx(0.7)
    assert pq["se"] == pytest.approx(np.sqrt(0.04 ** 2 + 0.03 ** 2) / 2)
    wide = tables.method_comparison_table(pd.DataFrame(rows), wide=True)
    assert list(wide.columns) == ["model", "length", "task", "method", "1", "3.33", "20"]
    w = wide.set_index(["model", "method"])
    assert w.loc[("m1", "snapkv"), "20"] == "0.50 ± 0.05"
    assert w.loc[("m2", "quest"), "20"] == ""
