"""Sparse-attention scaling law (v1 section 4, Tables 3, 4, 7).

Per phase (prefill or decode), over cells (model, task, length, compression ratio):

    acc ~ sigmoid(epsilon + alpha ln N + beta ln L + gamma ln CR + delta_task)

N = parameter count, L = sequence length in tokens, CR = compression ratio (dense = 1), and
delta_task a per-task offset with delta_reference = 0.  The reference task is QuALITY when
present (``qa_quality``; the paper's Table 3 has no QuALITY column), otherwise the first task
alphabetically, unless ``reference_task`` is given.

Fit: binomial / fractional-logit maximum likelihood,
    maximise sum_cells n [y log p + (1 - y) log(1 - p)],
with y the cell's mean score (in [0, 1]) and n its sample count, by Newton trust-region
(``scipy.optimize.minimize(method="trust-exact")``) on standardised regressors, without any
penalty: a fixed ridge biased weakly identified task offsets (by up to one standard error on
noiseless data). Only when that problem is singular — no finite maximum (a task at a 0 % or
100 % ceiling, NIAH, drives its delta to infinity: the Hessian at the solver's end point is
numerically singular), a rank-deficient design, or no convergence — is it refitted with a tiny
ridge (default 1e-6 per unit of average log-likelihood) on every coefficient except the
intercept, which gives the ceiling task a large finite delta; ``ScalingFit.ridge`` records
the ridge the fit used (0 when none).

Validation: for each axis in (length, model_size, compression) hold out the cells at the
axis' largest value, fit on the rest, predict the held-out cells, and report on the held-out
cells only: R^2 (Table 3), per-task Spearman rho with p-value (Table 4), per-task MAE
(Table 7).  An axis needs >= 2 distinct values to be fitted and >= 3 to be held out (so that
>= 2 remain in the training set); otherwise a ValueError names the axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

__all__ = [
    "AXES",
    "REFERENCE_TASK_CANDIDATES",
    "ScalingFit",
    "ScalingValidation",
    "scaling_cells",
    "fit_scaling_law",
    "validate_scaling_law",
    "wide_by_task",
]

#: held-out axis name -> column of the cell table.
AXES = {"length": "length", "model_size": "n_params", "compression": "ratio"}
#: Task names treated as QuALITY (the paper's reference task), in priority order.
REFERENCE_TASK_CANDIDATES = ("qa_quality", "quality", "QuALITY")
_REQUIRED = ("task", "n_params", "length", "ratio", "n", "mean")


def _choose_reference(tasks: Sequence[str], reference_task: str | None) -> str:
    if reference_task is not None:
        if reference_task not in tasks:
            raise ValueError(f"reference_task {reference_task!r} not among tasks {sorted(tasks)}")
        return reference_task
    for cand in REFERENCE_TASK_CANDIDATES:
        if cand in tasks:
            return cand
    return sorted(tasks)[0]


def _check_cells(cells) -> None:
    import numpy as np

    missing = [c for c in _REQUIRED if c not in cells.columns]
    if missing:
        raise ValueError(f"scaling law: cells lack columns {missing}")
    if len(cells) == 0:
        raise ValueError("scaling law: no cells")
    y = cells["mean"].to_numpy(float)
    n = cells["n"].to_numpy(float)
    if np.isnan(y).any() or (y < 0).any() or (y > 1).any():
        raise ValueError("scaling law: cell means must be in [0, 1] (no NaN)")
    if (n <= 0).any() or np.isnan(n).any():
        raise ValueError("scaling law: cell sample counts n must be positive")
    for col in ("n_params", "length", "ratio"):
        v = cells[col].to_numpy(float)
        lo = 1.0 if col == "ratio" else 0.0
        if np.isnan(v).any() or (v < lo).any() or (col != "ratio" and (v <= 0).any()):
            raise ValueError(f"scaling law: column {col!r} must be positive (ratio >= 1)")


def _distinct(cells, axis: str) -> int:
    import numpy as np

    v = cells[AXES[axis]].to_numpy(float)
    return int(np.unique(np.round(np.log(v), 9)).size)


def _require_axes(cells, min_values: Mapping[str, int]) -> None:
    for axis, k in min_values.items():
        got = _distinct(cells, axis)
        if got < k:
            raise ValueError(
                f"scaling law: axis '{axis}' (column {AXES[axis]!r}) has {got} distinct "
                f"value(s); at least {k} needed"
                + (" to hold it out (>= 2 must remain for fitting)" if k >= 3 else " to fit its slope")
            )


@dataclass
class ScalingFit:
    """Fitted coefficients.  ``coef`` keys: epsilon, alpha, beta, gamma and delta_<task> for
    every task (the reference task's delta is 0)."""

    coef: dict
    tasks: list
    reference_task: str
    phase: str = ""
    n_cells: int = 0
    n_samples: float = 0.0
    loglik: float = float("nan")
    converged: bool = False
    message: str = ""
    ridge: float = 0.0          # the ridge the fit used: 0 unless the unpenalised problem was singular
    extra: dict = field(default_factory=dict, repr=False)

    def linear_predictor(self, cells):
        import numpy as np

        unknown = sorted(set(cells["task"]) - set(self.tasks))
        if unknown:
            raise ValueError(f"scaling law: tasks {unknown} were not in the fit")
        eta = (self.coef["epsilon"]
               + self.coef["alpha"] * np.log(cells["n_params"].to_numpy(float))
               + self.coef["beta"] * np.log(cells["length"].to_numpy(float))
               + self.coef["gamma"] * np.log(cells["ratio"].to_numpy(float)))
        delta = cells["task"].map({t: self.coef[f"delta_{t}"] for t in self.tasks}).to_numpy(float)
        return eta + delta

    def predict(self, cells):
        """Predicted accuracy for cells with columns task, n_params, length, ratio."""
        from scipy.special import expit

        return expit(self.linear_predictor(cells))


def _design(cells, tasks: Sequence[str], reference: str):
    import numpy as np

    X = np.column_stack([
        np.log(cells["n_params"].to_numpy(float)),
        np.log(cells["length"].to_numpy(float)),
        np.log(cells["ratio"].to_numpy(float)),
    ])
    others = [t for t in tasks if t != reference]
    task = cells["task"].to_numpy()
    D = np.column_stack([(task == t).astype(float) for t in others]) if others else np.zeros((len(cells), 0))
    return X, D, others


SINGULAR_RCOND = 1e-9   # smallest / largest Hessian eigenvalue below which the unpenalised fit is singular


def fit_scaling_law(cells, *, reference_task: str | None = None, ridge: float = 1e-6,
                    phase: str = "") -> ScalingFit:
    """Fit the logistic scaling law to ``cells`` (columns task, n_params, length, ratio, n,
    mean; extra columns ignored).  Raises ValueError if an axis has < 2 distinct values.
    Unpenalised maximum likelihood; ``ridge`` is added only when that problem is singular
    (module docstring)."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit

    _check_cells(cells)
    _require_axes(cells, {a: 2 for a in AXES})
    tasks = sorted(cells["task"].unique())
    ref = _choose_reference(tasks, reference_task)
    X, D, others = _design(cells, tasks, ref)
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    Z = np.column_stack([np.ones(len(cells)), (X - mu) / sd, D])
    y = cells["mean"].to_numpy(float)
    w = cells["n"].to_numpy(float)
    W = w.sum()
    pen = np.zeros(Z.shape[1])

    def f(theta):
        eta = Z @ theta
        ll = w * (y * -np.logaddexp(0.0, -eta) + (1.0 - y) * -np.logaddexp(0.0, eta))
        return -ll.sum() / W + 0.5 * np.sum(pen * theta * theta)

    def grad(theta):
        p = expit(Z @ theta)
        return Z.T @ (w * (p - y)) / W + pen * theta

    def hess(theta):
        p = expit(Z @ theta)
        return (Z.T * (w * p * (1.0 - p))) @ Z / W + np.diag(pen)

    theta0 = np.zeros(Z.shape[1])
    ybar = np.clip(np.sum(w * y) / W, 1e-6, 1 - 1e-6)
    theta0[0] = np.log(ybar / (1 - ybar))

    def solve():
        return minimize(f, theta0, jac=grad, hess=hess, method="trust-exact", options={"gtol": 1e-10, "maxiter": 1000})

    res = None
    if np.linalg.matrix_rank(Z) == Z.shape[1]:
        res = solve()
        eig = np.linalg.eigvalsh(hess(res.x)) if np.all(np.isfinite(res.x)) else np.zeros(1)
        if not res.success or eig.min() <= SINGULAR_RCOND * max(eig.max(), 1e-300):
            res = None
    used = 0.0
    if res is None:                     # singular: no finite maximum (ceiling task) or rank-deficient design
        used = float(ridge)
        pen[1:] = used
        res = solve()
    th = res.x
    slopes = th[1:4] / sd
    intercept = th[0] - np.sum(slopes * mu)
    coef = {"epsilon": float(intercept), "alpha": float(slopes[0]), "beta": float(slopes[1]),
            "gamma": float(slopes[2])}
    for t in tasks:
        coef[f"delta_{t}"] = 0.0 if t == ref else float(th[4 + others.index(t)])
    loglik = -(f(th) - 0.5 * np.sum(pen * th * th)) * W
    return ScalingFit(coef=coef, tasks=tasks, reference_task=ref, phase=phase,
                      n_cells=len(cells), n_samples=float(W), loglik=float(loglik),
                      converged=bool(res.success), message=str(res.message), ridge=used)


def scaling_cells(summary, n_params: Mapping[str, float], phase: str,
                  methods: Sequence[str] | None = None):
    """Select a phase's cells from the per-cell ``summary`` table.

    Keeps dense rows (ratio 1) plus the rows of ``methods`` (default: every method of the
    phase, pooled -- one gamma per phase).  ``n_params`` maps model -> parameter count (e.g.
    ``{m: dims.params for m, dims in models.items()}``).  Output columns: model, task,
    length, method, ratio, n, mean, n_params.
    """
    from . import DENSE_METHOD, decode_methods, prefill_methods

    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    if methods is None:
        methods = prefill_methods() if phase == "prefill" else decode_methods()
    keep = [DENSE_METHOD, *methods]
    sub = summary[summary["method"].isin(keep)].copy()
    missing = sorted(set(sub["model"]) - set(n_params))
    if missing:
        raise ValueError(f"scaling_cells: no parameter count for models {missing}")
    sub["n_params"] = sub["model"].map(lambda m: float(n_params[m]))
    cols = ["model", "task", "length", "method", "ratio", "n", "mean", "n_params"]
    return sub[cols].reset_index(drop=True)


class ScalingValidation(NamedTuple):
    """Outputs of :func:`validate_scaling_law`.

    * ``table3``: one row per held-out axis -- phase, held_out, r2, epsilon, delta_<task> (one
      column per non-reference task), alpha, beta, gamma, reference_task, n_train, n_test,
      held_out_value, converged.
    * ``table4``: long -- phase, held_out, task, spearman_rho, p_value, significant, n_test.
    * ``table7``: long -- phase, held_out, task, mae, n_test.
    * ``predictions``: the held-out cells with columns phase, held_out, model (if present),
      task, length, ratio, n_params, n, mean, predicted.
    """

    table3: "object"
    table4: "object"
    table7: "object"
    predictions: "object"


def _held_out_mask(cells, axis: str):
    import numpy as np

    raw = cells[AXES[axis]].to_numpy(float)
    v = np.log(raw)
    mask = np.isclose(v, v.max(), rtol=0, atol=1e-9)
    return mask, float(raw[mask].max())


def validate_scaling_law(cells, *, phase: str = "",
                         axes: Sequence[str] = ("length", "model_size", "compression"),
                         reference_task: str | None = None, ridge: float = 1e-6,
                         alpha: float = 0.05, on_insufficient: str = "raise") -> ScalingValidation:
    """Hold out the largest value of each axis in turn; metrics on held-out cells only.

    ``on_insufficient="skip"`` drops (silently, recorded nowhere but the missing row) axes
    with < 3 distinct values instead of raising.  R^2 = 1 - SS_res/SS_tot over held-out cells
    (unweighted, SS_tot about their own mean; NaN if SS_tot = 0).  Spearman needs >= 3 held-out
    cells of the task with non-constant values (else NaN); ``significant`` = p_value < alpha.
    """
    import numpy as np
    import pandas as pd
    from scipy import stats

    if on_insufficient not in ("raise", "skip"):
        raise ValueError("on_insufficient must be 'raise' or 'skip'")
    _check_cells(cells)
    bad = [a for a in axes if a not in AXES]
    if bad:
        raise ValueError(f"unknown axes {bad}; choose from {list(AXES)}")
    _require_axes(cells, {a: 2 for a in AXES})
    all_tasks = sorted(cells["task"].unique())
    ref = _choose_reference(all_tasks, reference_task)
    delta_cols = [f"delta_{t}" for t in all_tasks if t != ref]

    rows3, rows4, rows7, preds = [], [], [], []
    for axis in axes:
        if _distinct(cells, axis) < 3:
            if on_insufficient == "skip":
                continue
            _require_axes(cells, {axis: 3})
        test_mask, held_value = _held_out_mask(cells, axis)
        train, test = cells[~test_mask], cells[test_mask]
        lost = sorted(set(all_tasks) - set(train["task"]))
        if lost:
            raise ValueError(f"scaling law: holding out axis '{axis}' leaves tasks {lost} "
                             "without training cells")
        fit = fit_scaling_law(train, reference_task=ref, ridge=ridge, phase=phase)
        y = test["mean"].to_numpy(float)
        yhat = fit.predict(test)
        ss_res = float(np.sum((y - yhat) ** 2))
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
        row = {"phase": phase, "held_out": axis, "r2": r2, "epsilon": fit.coef["epsilon"]}
        row.update({c: fit.coef[c] for c in delta_cols})
        row.update(alpha=fit.coef["alpha"], beta=fit.coef["beta"], gamma=fit.coef["gamma"],
                   reference_task=ref, n_train=len(train), n_test=len(test),
                   held_out_value=held_value, converged=fit.converged)
        rows3.append(row)
        pred = test.copy()
        pred["predicted"] = yhat
        pred.insert(0, "held_out", axis)
        pred.insert(0, "phase", phase)
        preds.append(pred)
        for task in all_tasks:
            tm = (test["task"] == task).to_numpy()
            yt, pt = y[tm], yhat[tm]
            k = int(tm.sum())
            if k >= 3 and np.ptp(yt) > 0 and np.ptp(pt) > 0:
                res = stats.spearmanr(yt, pt)
                rho, pv = float(res.statistic), float(res.pvalue)
            else:
                rho = pv = float("nan")
            rows4.append({"phase": phase, "held_out": axis, "task": task, "spearman_rho": rho,
                          "p_value": pv, "significant": bool(pv < alpha) if pv == pv else False,
                          "n_test": k})
            rows7.append({"phase": phase, "held_out": axis, "task": task,
                          "mae": float(np.mean(np.abs(yt - pt))) if k else float("nan"),
                          "n_test": k})
    cols3 = (["phase", "held_out", "r2", "epsilon"] + delta_cols
             + ["alpha", "beta", "gamma", "reference_task", "n_train", "n_test",
                "held_out_value", "converged"])
    keep_pred = ["phase", "held_out"] + [c for c in ("model", "method") if c in cells.columns] + [
        "task", "length", "ratio", "n_params", "n", "mean", "predicted"]
    predictions = (pd.concat(preds, ignore_index=True)[keep_pred] if preds
                   else pd.DataFrame(columns=keep_pred))
    return ScalingValidation(
        table3=pd.DataFrame(rows3, columns=cols3),
        table4=pd.DataFrame(rows4, columns=["phase", "held_out", "task", "spearman_rho",
                                            "p_value", "significant", "n_test"]),
        table7=pd.DataFrame(rows7, columns=["phase", "held_out", "task", "mae", "n_test"]),
        predictions=predictions,
    )


def wide_by_task(table, value: str, task_order: Sequence[str] | None = None):
    """Pivot table4/table7 to the paper's layout: rows (phase, held_out), one column per task
    (``task_order`` or alphabetical)."""
    out = table.pivot(index=["phase", "held_out"], columns="task", values=value)
    out.columns.name = None
    order = list(task_order) if task_order is not None else sorted(out.columns)
    out = out.reindex(columns=order)
    keys = table[["phase", "held_out"]].drop_duplicates()
    return keys.merge(out.reset_index(), on=["phase", "held_out"], how="left").reset_index(drop=True)
