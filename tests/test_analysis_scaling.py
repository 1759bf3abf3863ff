"""Scaling law: coefficient recovery, held-out validation metrics, refusals."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import expit

from workflow_scripts.analysis import scaling as sc

TRUE = dict(epsilon=-16.0, alpha=1.3, beta=-1.1, gamma=-0.9)
DELTAS = {"qa_quality": 0.0, "ruler_niah": 3.0, "ruler_vt": -1.5, "ruler_cwe": 0.5}
SIZES = [7.61e9, 14.7e9, 32.5e9, 72.7e9]
LENGTHS = [16384, 32768, 65536, 128000]
RATIOS = [1.0, 2.0, 5.0, 10.0, 20.0]


def simulate(seed=0, n=200, curvature=0.0, deltas=DELTAS, sizes=SIZES, lengths=LENGTHS,
             ratios=RATIOS):
    rng = np.random.default_rng(seed)
    rows = []
    for (i, N), L, R, t in itertools.product(enumerate(sizes), lengths, ratios, deltas):
        eta = (TRUE["epsilon"] + TRUE["alpha"] * np.log(N) + TRUE["beta"] * np.log(L)
               + TRUE["gamma"] * np.log(R) + deltas[t] - curvature * (np.log(L / 16384)) ** 2)
        k = rng.binomial(n, expit(eta))
        rows.append(dict(model=f"m{i}", task=t, length=L, ratio=R, n=n, mean=k / n, n_params=N))
    return pd.DataFrame(rows)


def test_fit_recovers_known_coefficients():
    cells = simulate()
    fit = sc.fit_scaling_law(cells, phase="prefill")
    assert fit.converged
    assert fit.reference_task == "qa_quality"
    assert fit.coef["alpha"] == pytest.approx(TRUE["alpha"], abs=0.08)
    assert fit.coef["beta"] == pytest.approx(TRUE["beta"], abs=0.08)
    assert fit.coef["gamma"] == pytest.approx(TRUE["gamma"], abs=0.05)
    assert fit.coef["epsilon"] == pytest.approx(TRUE["epsilon"], abs=1.5)
    for t, d in DELTAS.items():
        assert fit.coef[f"delta_{t}"] == pytest.approx(d, abs=0.15)
    # the fitted logits match the true ones closely everywhere (intercept/slope trade-off ok)
    true_eta = (TRUE["epsilon"] + TRUE["alpha"] * np.log(cells.n_params) + TRUE["beta"] * np.log(cells.length)
                + TRUE["gamma"] * np.log(cells.ratio) + cells.task.map(DELTAS))
    assert np.max(np.abs(fit.linear_predictor(cells) - true_eta)) < 0.3


def test_fit_is_the_weighted_binomial_mle():
    # gradient of sum n [y log p + (1-y) log(1-p)] vanishes at the optimum (ridge negligible)
    cells = simulate(seed=2, n=50)
    cells["n"] = np.random.default_rng(0).integers(10, 100, len(cells))
    fit = sc.fit_scaling_law(cells)
    p = fit.predict(cells)
    r = cells["n"].to_numpy() * (cells["mean"].to_numpy() - p)
    X = np.column_stack([np.ones(len(cells)), np.log(cells.n_params), np.log(cells.length),
                         np.log(cells.ratio)] + [(cells.task == t).to_numpy(float)
                                                 for t in fit.tasks if t != fit.reference_task])
    assert np.max(np.abs(X.T @ r)) / cells["n"].sum() < 1e-4


def test_saturated_task_gives_large_finite_offset():
    cells = simulate(seed=3)
    cells.loc[cells.task == "ruler_niah", "mean"] = 1.0
    fit = sc.fit_scaling_law(cells)
    assert fit.converged and fit.ridge == 1e-6          # no finite maximum: the ridge is needed
    assert 5 < fit.coef["delta_ruler_niah"] < 60


def test_noiseless_weakly_identified_offset_is_exact_without_ridge():
    # cells exactly on the law; ruler_niah's offset (+7) puts its cells near 100 %, so the likelihood is flat
    # along delta_niah and a fixed ridge pulls it towards 0 (by ~1 standard error); unpenalised it is exact
    deltas = {**DELTAS, "ruler_niah": 7.0}
    cells = simulate(deltas=deltas)
    cells["mean"] = expit(TRUE["epsilon"] + TRUE["alpha"] * np.log(cells.n_params) + TRUE["beta"] * np.log(cells.length)
                          + TRUE["gamma"] * np.log(cells.ratio) + cells.task.map(deltas))
    fit = sc.fit_scaling_law(cells)
    assert fit.converged and fit.ridge == 0.0
    for t, d in deltas.items():
        assert fit.coef[f"delta_{t}"] == pytest.approx(d, abs=1e-3)
    for k in ("alpha", "beta", "gamma"):
        assert fit.coef[k] == pytest.approx(TRUE[k], abs=1e-3)


def test_held_out_metrics_use_held_out_points_only():
    # misspecified truth (curvature in ln L): extrapolating to the longest length is off
    cells = simulate(seed=4, curvature=0.6)
    val = sc.validate_scaling_law(cells, phase="prefill", axes=("length",))
    row = val.table3.iloc[0]
    test_mask = cells.length == max(LENGTHS)
    train, test = cells[~test_mask], cells[test_mask]
    fit = sc.fit_scaling_law(train)
    yhat = fit.predict(test)
    y = test["mean"].to_numpy()
    r2_manual = 1 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2)
    assert row["r2"] == pytest.approx(r2_manual, abs=1e-6)
    assert row["n_train"] == len(train) and row["n_test"] == len(test)
    assert row["held_out_value"] == 128000
    assert row["beta"] == pytest.approx(fit.coef["beta"], abs=1e-6)
    # the same fit scored on all cells gives a clearly different R^2 / MAE
    y_all, p_all = cells["mean"].to_numpy(), fit.predict(cells)
    r2_all = 1 - np.sum((y_all - p_all) ** 2) / np.sum((y_all - y_all.mean()) ** 2)
    assert abs(r2_all - row["r2"]) > 0.05
    t7 = val.table7.set_index("task")
    t4 = val.table4.set_index("task")
    for task in DELTAS:
        m = (test.task == task).to_numpy()
        mae = np.mean(np.abs(y[m] - yhat[m]))
        assert t7.loc[task, "mae"] == pytest.approx(mae, abs=1e-9)
        assert t7.loc[task, "n_test"] == m.sum()
        mae_all = np.mean(np.abs(y_all - p_all)[(cells.task == task).to_numpy()])
        assert abs(mae_all - mae) > 1e-3
        rho = stats.spearmanr(y[m], yhat[m])
        assert t4.loc[task, "spearman_rho"] == pytest.approx(rho.statistic, abs=1e-9)
        assert t4.loc[task, "p_value"] == pytest.approx(rho.pvalue, abs=1e-9)
        assert t4.loc[task, "significant"] == (rho.pvalue < 0.05)
    # held-out cells do not influence the reported coefficients
    scrambled = cells.copy()
    scrambled.loc[test_mask, "mean"] = 0.5
    val2 = sc.validate_scaling_law(scrambled, axes=("length",))
    assert val2.table3.iloc[0]["gamma"] == pytest.approx(row["gamma"], abs=1e-9)
    assert val2.table3.iloc[0]["r2"] != pytest.approx(row["r2"], abs=1e-3)
    # predictions table holds exactly the held-out cells
    assert len(val.predictions) == len(test) and (val.predictions.length == 128000).all()


def test_validation_tables_shape_like_paper():
    cells = simulate(seed=5)
    val = sc.validate_scaling_law(cells, phase="decode")
    assert val.table3["held_out"].tolist() == ["length", "model_size", "compression"]
    deltas = [c for c in val.table3.columns if c.startswith("delta_")]
    assert deltas == ["delta_ruler_cwe", "delta_ruler_niah", "delta_ruler_vt"]  # no reference column
    assert list(val.table3.columns[:4]) == ["phase", "held_out", "r2", "epsilon"]
    assert (val.table3["r2"] > 0.8).all()  # correctly specified model extrapolates well
    wide4 = sc.wide_by_task(val.table4, "spearman_rho", task_order=list(DELTAS))
    assert list(wide4.columns) == ["phase", "held_out"] + list(DELTAS)
    assert wide4.shape == (3, 6)
    wide7 = sc.wide_by_task(val.table7, "mae")
    assert wide7.shape == (3, 6)


def test_reference_task_rules():
    cells = simulate(seed=6, deltas={"b_task": 0.0, "a_task": 1.0})
    assert sc.fit_scaling_law(cells).reference_task == "a_task"  # alphabetical fallback
    fit = sc.fit_scaling_law(cells, reference_task="b_task")
    assert fit.coef["delta_b_task"] == 0.0
    assert fit.coef["delta_a_task"] == pytest.approx(1.0, abs=0.2)
    with pytest.raises(ValueError, match="reference_task"):
        sc.fit_scaling_law(cells, reference_task="zzz")


def test_refuses_axes_with_too_few_values():
    one_length = simulate(lengths=[16384])
    with pytest.raises(ValueError, match="axis 'length'.*1 distinct"):
        sc.fit_scaling_law(one_length)
    two_sizes = simulate(sizes=[7e9, 14e9])
    sc.fit_scaling_law(two_sizes)  # 2 values are enough to fit ...
    with pytest.raises(ValueError, match="axis 'model_size'.*2 distinct.*at least 3"):
        sc.validate_scaling_law(two_sizes)  # ... but not to hold one out
    val = sc.validate_scaling_law(two_sizes, on_insufficient="skip")
    assert val.table3["held_out"].tolist() == ["length", "compression"]
    with pytest.raises(ValueError, match="axis 'compression'"):
        sc.fit_scaling_law(simulate(ratios=[1.0]))
    with pytest.raises(ValueError, match="unknown axes"):
        sc.validate_scaling_law(simulate(), axes=("width",))


def test_scaling_cells_selects_phase_methods():
    summary = pd.DataFrame({
        "model": ["a"] * 4, "task": ["t"] * 4, "length": [1024] * 4,
        "method": ["dense", "vertical_slash", "quest", "snapkv"], "ratio": [1.0, 5.0, 5.0, 5.0],
        "n": [10] * 4, "mean": [0.9, 0.8, 0.7, 0.6], "se": [0.01] * 4})
    pre = sc.scaling_cells(summary, {"a": 7e9}, "prefill")
    assert pre["method"].tolist() == ["dense", "vertical_slash"]
    dec = sc.scaling_cells(summary, {"a": 7e9}, "decode", methods=["quest"])
    assert dec["method"].tolist() == ["dense", "quest"] and (dec["n_params"] == 7e9).all()
    with pytest.raises(ValueError, match="parameter count"):
        sc.scaling_cells(summary, {}, "prefill")
