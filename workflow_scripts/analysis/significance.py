"""Maximum compression ratio with statistically guaranteed performance retention.

Reconstruction of v1 Fig. 3 (the paper never published its procedure; docs/analysis.md is the
reference).  For every (model, length, task, method):

1. Pair each sparse run with the dense run of the same ``sample_id``:  D_i = dense_i - sparse_i,
   a number in [-1, 1] (scores are in [0, 1]).
2. At every compression ratio r (mild -> aggressive, i.e. ascending r) test
   H0(r): E[sparse] <= E[dense] - eps   (i.e. E[D] >= eps, "drop of at least eps")
   H1(r): E[sparse] >  E[dense] - eps   (i.e. E[D] <  eps, "retained within eps").
3. Fixed-sequence testing: reject H0 at r_1, r_2, ... while p <= alpha; stop at the first
   non-rejection.  This controls the family-wise error rate at alpha with no correction.
4. The maximum retained ratio is the largest rejected r (1.0 when even the mildest ratio fails).

Tests (argument ``test``), all one-sided and paired unless noted:

* ``"auto"`` (default): ``"exact_binary"`` when every dense and sparse score of the sequence is
  0 or 1, otherwise ``"betting"``.  Both are valid at every n (type-I error <= alpha).
* ``"exact_binary"``: exact unconditional test for paired binary scores.  With b = #(dense 1,
  sparse 0) and c = #(dense 0, sparse 1), the statistic is a score (Tango-type) z-statistic
  for p10 - p01 = eps; the p-value is the supremum, over the nuisance p01 on a 1000-point
  grid, of the exact trinomial probability of a statistic at least as extreme.
* ``"betting"``: an e-value (test-martingale) test for the mean of a bounded variable, valid
  for *any* distribution on [-1, 1] (graded scores such as NIAH's 0/0.25/.../1):

      E = (1/J) sum_j prod_i (1 + lambda_j (eps - D_i)),   lambda_j = j/J * 1/(1 - eps),
      p = min(1, 1/E).

  Under H0 every factor is >= 0 with mean <= 1, so E[E] <= 1 and Markov's inequality gives
  P(p <= alpha) <= alpha.  Conservative (Markov), hence less powerful than the exact test.
* ``"ttest"`` (paired t) and ``"welch"`` (unpaired Welch; what an AI summary of v1 mentions):
  normal approximations, **not** guaranteed at small n (the paired t-test reaches ~0.12
  type-I error at n = 100 with few discordant binary pairs).  Provided for comparison only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_EPS",
    "TESTS",
    "retention_pvalues",
    "fixed_sequence",
    "max_ratio_from_decisions",
    "SignificanceResult",
    "max_retained_ratio",
    "summarise_max_ratios",
]

#: Family-wise error rate per (model, length, task, method) sequence.
DEFAULT_ALPHA = 0.05
#: Non-inferiority margin in absolute score points (see docs/analysis.md for the rationale).
DEFAULT_EPS = 0.10
#: Available per-ratio tests.
TESTS = ("auto", "betting", "exact_binary", "ttest", "welch")
#: Number of points on the betting test's lambda grid.
N_LAMBDA = 200
#: Number of nuisance-parameter grid points of the exact binary test.
N_GRID = 1000


def _betting_log_evalue(diff, eps: float, n_lambda: int = N_LAMBDA):
    """log of the mixture e-value for H0: E[diff] >= eps, diff in [-1, 1]; shape diff.shape[:-1]."""
    import numpy as np
    from scipy.special import logsumexp

    lam_max = 1.0 / (1.0 - eps)
    lams = lam_max * np.arange(1, n_lambda + 1) / n_lambda
    x = eps - diff  # in [eps - 1, eps + 1]; factor 1 + lam*x >= 1 - lam*(1 - eps) >= 0
    with np.errstate(divide="ignore"):
        if x.size * n_lambda <= 4_000_000:  # small: one vectorised pass
            f = np.maximum(1.0 + x[..., None] * lams, 0.0)  # guard rounding at the last point
            logs = np.log(f).sum(axis=-2)
        else:  # large simulations: loop over the grid to bound memory
            logs = np.empty(diff.shape[:-1] + (n_lambda,))
            for j, lam in enumerate(lams):
                f = np.maximum(1.0 + lam * x, 0.0)
                logs[..., j] = np.sum(np.log(f), axis=-1)
    return logsumexp(logs, axis=-1) - np.log(n_lambda)


@lru_cache(maxsize=64)
def _exact_binary_table(n: int, eps: float, n_grid: int = N_GRID):
    """p-value table P[b, c] of the exact unconditional paired non-inferiority test.

    b = #(dense=1, sparse=0), c = #(dense=0, sparse=1) among n pairs.  Ordering statistic:
    Tango-type score statistic Z(b, c) (variance at the restricted MLE under p10 - p01 = eps),
    made non-decreasing in b by a cumulative max so that the supremum over the composite null
    {p10 - p01 >= eps} is attained on its boundary p10 = p01 + eps; the supremum over the
    nuisance p01 in [0, (1 - eps)/2] is taken on an ``n_grid``-point grid.
    """
    import numpy as np
    from scipy.special import gammaln

    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    valid = b + c <= n
    m = n - b - c
    # restricted MLE of p01 on the boundary p10 = p01 + eps:  2n x^2 - B x - C = 0
    B = b * (1 - eps) + c * (1 - 3 * eps) - 2 * m * eps
    C = c * eps * (1 - eps)
    x = (B + np.sqrt(np.maximum(B * B + 8.0 * n * C, 0.0))) / (4.0 * n)
    x = np.clip(x, 0.0, (1.0 - eps) / 2.0)
    var = np.maximum(2.0 * x + eps - eps * eps, 1e-12) / n
    z = ((b - c) / n - eps) / np.sqrt(var)
    z = np.where(valid, z, np.inf)
    z = np.maximum.accumulate(z, axis=0)  # non-decreasing in b for each c
    z = np.where(valid, z, np.inf)
    bv, cv, zv = b[valid], c[valid], z[valid]
    order = np.argsort(zv, kind="mergesort")
    bs, cs, zs = bv[order], cv[order], zv[order]
    ms = n - bs - cs
    logcoef = gammaln(n + 1) - gammaln(bs + 1) - gammaln(cs + 1) - gammaln(ms + 1)
    # index of the last element with z <= zs[i] (ties count as at least as extreme)
    last = np.searchsorted(zs, zs + 1e-9 * np.maximum(1.0, np.abs(zs)), side="right") - 1
    grid = np.linspace(0.0, (1.0 - eps) / 2.0, n_grid)
    best = np.zeros(zs.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        for p01 in grid:
            p10 = p01 + eps
            p00 = max(1.0 - p10 - p01, 0.0)
            lp = (logcoef + np.where(bs > 0, bs * np.log(p10), 0.0)
                  + np.where(cs > 0, cs * np.log(p01) if p01 > 0 else -np.inf, 0.0)
                  + np.where(ms > 0, ms * np.log(p00) if p00 > 0 else -np.inf, 0.0))
            cdf = np.cumsum(np.exp(lp))
            best = np.maximum(best, cdf[last])
    table = np.full((n + 1, n + 1), np.nan)
    table[bs, cs] = np.minimum(best, 1.0)
    return table


def retention_pvalues(dense, sparse, eps: float = DEFAULT_EPS, test: str = "auto",
                      n_lambda: int = N_LAMBDA):
    """One-sided p-values for H0: mean(sparse) <= mean(dense) - eps.

    ``dense`` and ``sparse`` are arrays of shape (..., n) of scores in [0, 1], paired along the
    last axis (index i = same sample).  Leading axes are batch axes (vectorised: e.g.
    (repetitions, n) in a simulation).  No NaNs allowed.  Returns p-values of shape (...).
    """
    import numpy as np

    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    d = np.asarray(dense, dtype=float)
    s = np.asarray(sparse, dtype=float)
    if d.shape != s.shape:
        raise ValueError(f"dense and sparse must have the same shape, got {d.shape} vs {s.shape}")
    if d.shape[-1] < 1:
        raise ValueError("need at least one paired sample")
    if np.isnan(d).any() or np.isnan(s).any():
        raise ValueError("scores contain NaN; drop unpaired/missing samples first")
    tol = 1e-9
    if (d.min() < -tol or d.max() > 1 + tol or s.min() < -tol or s.max() > 1 + tol):
        raise ValueError("scores must lie in [0, 1]")
    d = np.clip(d, 0.0, 1.0)
    s = np.clip(s, 0.0, 1.0)
    n = d.shape[-1]
    diff = d - s

    is_binary = bool(np.all((d == 0) | (d == 1)) and np.all((s == 0) | (s == 1)))
    if test == "auto":
        test = "exact_binary" if is_binary else "betting"
    if test == "exact_binary":
        if not is_binary:
            raise ValueError("test='exact_binary' needs scores in {0, 1}; use 'betting'")
        table = _exact_binary_table(int(n), float(eps))
        b = np.sum((d == 1) & (s == 0), axis=-1)
        c = np.sum((d == 0) & (s == 1), axis=-1)
        return np.asarray(table[b, c], dtype=float)

    if test == "betting":
        log_e = _betting_log_evalue(diff, eps, n_lambda)
        return np.minimum(1.0, np.exp(-log_e))

    from scipy import stats  # only the approximate tests need scipy.stats (slow import)

    if test == "ttest":
        mean = diff.mean(axis=-1)
        sd = diff.std(axis=-1, ddof=1) if n > 1 else np.zeros(diff.shape[:-1])
        se = sd / np.sqrt(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (mean - eps) / se
        p = stats.t.cdf(t, df=max(n - 1, 1))
        # zero variance: the observed difference is exact
        p = np.where(se > 0, p, np.where(mean < eps, 0.0, 1.0))
        return np.asarray(p, dtype=float)

    # welch: unpaired one-sided two-sample test of mean(s) - mean(d) > -eps
    md, ms = d.mean(axis=-1), s.mean(axis=-1)
    vd = d.var(axis=-1, ddof=1) / n if n > 1 else np.zeros(md.shape)
    vs = s.var(axis=-1, ddof=1) / n if n > 1 else np.zeros(ms.shape)
    se = np.sqrt(vd + vs)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ms - md + eps) / se
        dof = (vd + vs) ** 2 / (vd ** 2 / max(n - 1, 1) + vs ** 2 / max(n - 1, 1))
    dof = np.where(np.isfinite(dof) & (dof > 0), dof, 1.0)
    p = stats.t.sf(t, df=dof)
    p = np.where(se > 0, p, np.where(ms - md + eps > 0, 0.0, 1.0))
    return np.asarray(p, dtype=float)


def fixed_sequence(pvalues, alpha: float = DEFAULT_ALPHA):
    """Fixed-sequence decisions along the last axis (hypotheses already in testing order).

    ``rejected[..., k]`` is True iff p[..., j] <= alpha for every j <= k; the first
    non-rejection (or NaN p-value) stops the sequence.
    """
    import numpy as np

    p = np.asarray(pvalues, dtype=float)
    ok = np.where(np.isnan(p), False, p <= alpha)
    return np.logical_and.accumulate(ok, axis=-1)


def max_ratio_from_decisions(rejected, ratios):
    """Largest ratio whose H0 was rejected (ratios in the same ascending order as the last
    axis of ``rejected``); 1.0 where nothing was rejected."""
    import numpy as np

    rej = np.asarray(rejected, dtype=bool)
    r = np.asarray(ratios, dtype=float)
    if rej.shape[-1] != r.shape[-1]:
        raise ValueError("rejected and ratios disagree on the number of ratios")
    if rej.shape[-1] and np.any(np.diff(r) <= 0):
        raise ValueError("ratios must be strictly increasing (mild -> aggressive)")
    count = rej.sum(axis=-1)  # fixed-sequence rejections are a prefix
    padded = np.concatenate([[1.0], r])
    return padded[count]


class SignificanceResult(NamedTuple):
    """``detail``: one row per (group, method, ratio); ``summary``: one row per (group, method)."""

    detail: "object"
    summary: "object"


def max_retained_ratio(
    samples,
    *,
    alpha: float = DEFAULT_ALPHA,
    eps: float = DEFAULT_EPS,
    test: str = "auto",
    methods: Sequence[str] | None = None,
    group_cols: Sequence[str] = ("model", "length", "task"),
    dense_method: str = "dense",
    n_lambda: int = N_LAMBDA,
) -> SignificanceResult:
    """Run the retention procedure on a per-sample table.

    ``samples`` needs columns ``group_cols`` + method, ratio, sample_id, score.  Sparse rows are
    paired with the ``dense_method`` rows of the same group and sample_id (inner join; rows
    with a NaN score are dropped before pairing).  Ratios <= 1 of sparse methods are ignored.
    Duplicate (group, method, ratio, sample_id) rows raise ValueError.  A ratio with no paired
    samples gets p = NaN, which counts as a non-rejection.

    ``detail`` columns: group_cols..., method, ratio, step (1 = mildest), n_pairs, mean_dense,
    mean_sparse, mean_drop (= mean_dense - mean_sparse over the pairs), p_value, tested (the
    sequence reached this step), retained (H0 rejected within the fixed sequence), alpha, eps,
    test (the test actually used; ``"auto"`` is resolved once per (group, method) sequence
    from all of its dense and sparse scores).

    ``summary`` columns: group_cols..., method, max_ratio (largest retained ratio, 1.0 if none),
    n_ratios (ratios available), n_tested (steps reached), first_failed_ratio (NaN if every
    ratio was retained), alpha, eps, test.
    """
    import numpy as np
    import pandas as pd

    group_cols = list(group_cols)
    need = set(group_cols) | {"method", "ratio", "sample_id", "score"}
    missing = need - set(samples.columns)
    if missing:
        raise ValueError(f"max_retained_ratio: samples lack columns {sorted(missing)}")
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    data = samples[list(need)].dropna(subset=["score"])
    dup = data.duplicated(group_cols + ["method", "ratio", "sample_id"])
    if dup.any():
        example = data[dup].iloc[0].to_dict()
        raise ValueError(f"duplicate (group, method, ratio, sample_id) rows, e.g. {example}")

    dense = data[data["method"] == dense_method]
    sparse = data[(data["method"] != dense_method) & (data["ratio"] > 1)]
    if methods is not None:
        sparse = sparse[sparse["method"].isin(list(methods))]
    dense_by_group = {(k if isinstance(k, tuple) else (k,)): g.set_index("sample_id")["score"]
                      for k, g in dense.groupby(group_cols, sort=False)}

    detail_rows, summary_rows = [], []
    for key, grp in sparse.groupby(group_cols + ["method"], sort=True):
        gkey_t = tuple(key[:-1])
        method = key[-1]
        dref = dense_by_group.get(gkey_t)
        ratios = np.sort(grp["ratio"].unique())
        seq_test = test
        if test == "auto":
            vals = grp["score"].to_numpy(float)
            if dref is not None:
                vals = np.concatenate([vals, dref.to_numpy(float)])
            seq_test = "exact_binary" if np.all((vals == 0) | (vals == 1)) else "betting"
        pvals, rows = [], []
        wide = grp.pivot(index="sample_id", columns="ratio", values="score")
        if dref is not None:
            dvals = dref.reindex(wide.index).to_numpy(float)
        else:
            dvals = np.full(len(wide), np.nan)
        for step, r in enumerate(ratios, start=1):
            svals = wide[r].to_numpy(float)
            ok = ~(np.isnan(svals) | np.isnan(dvals))
            n = int(ok.sum())
            if n == 0:
                p = np.nan
                md = ms = np.nan
            else:
                dv, sv = dvals[ok], svals[ok]
                p = float(retention_pvalues(dv, sv, eps=eps, test=seq_test, n_lambda=n_lambda))
                md, ms = float(dv.mean()), float(sv.mean())
            pvals.append(p)
            rows.append(dict(zip(group_cols, gkey_t)) | {
                "method": method, "ratio": float(r), "step": step, "n_pairs": n,
                "mean_dense": md, "mean_sparse": ms, "mean_drop": md - ms, "p_value": p,
            })
        rejected = fixed_sequence(np.array(pvals), alpha)
        n_rej = int(rejected.sum())
        for i, row in enumerate(rows):
            row.update(tested=i <= n_rej, retained=bool(rejected[i]), alpha=alpha, eps=eps,
                       test=seq_test)
        detail_rows.extend(rows)
        summary_rows.append(dict(zip(group_cols, gkey_t)) | {
            "method": method,
            "max_ratio": float(max_ratio_from_decisions(rejected, ratios)),
            "n_ratios": len(ratios),
            "n_tested": min(n_rej + 1, len(ratios)),
            "first_failed_ratio": float(ratios[n_rej]) if n_rej < len(ratios) else np.nan,
            "alpha": alpha, "eps": eps, "test": seq_test,
        })
    detail_cols = group_cols + ["method", "ratio", "step", "n_pairs", "mean_dense", "mean_sparse",
                                "mean_drop", "p_value", "tested", "retained", "alpha", "eps", "test"]
    summary_cols = group_cols + ["method", "max_ratio", "n_ratios", "n_tested",
                                 "first_failed_ratio", "alpha", "eps", "test"]
    return SignificanceResult(
        detail=pd.DataFrame(detail_rows, columns=detail_cols),
        summary=pd.DataFrame(summary_rows, columns=summary_cols),
    )


def summarise_max_ratios(summary, by: Sequence[str] = ("model", "length", "method")):
    """Fig. 3 style aggregate over tasks: mean, SD (ddof=1), min and max of ``max_ratio``.

    Output columns: by..., n_tasks, mean_max_ratio, sd_max_ratio, min_max_ratio, max_max_ratio.
    """
    by = list(by)
    out = (summary.groupby(by, sort=True)["max_ratio"]
           .agg(n_tasks="count", mean_max_ratio="mean", sd_max_ratio="std",
                min_max_ratio="min", max_max_ratio="max")
           .reset_index())
    return out
