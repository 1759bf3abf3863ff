"""Maximum retained compression ratio: validity (type-I / FWER), power, fixed-sequence logic."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import gammaln

from workflow_scripts.analysis import significance as sig

ALPHA = 0.05
REPS = 2000
# Monte Carlo slack: 3 standard errors of a rate of alpha over REPS repetitions
SLACK = 3 * math.sqrt(ALPHA * (1 - ALPHA) / REPS)


def binary_pairs(rng, reps, n, drop, disc, p_dense=0.6):
    """Paired binary scores with P(dense 1, sparse 0) - P(dense 0, sparse 1) = drop and
    P(discordant) = disc."""
    p10, p01 = (disc + drop) / 2, (disc - drop) / 2
    assert p01 >= 0
    u = rng.random((reps, n))
    conc = (rng.random((reps, n)) < p_dense).astype(float)
    dense = np.where(u < p10, 1.0, np.where(u < p10 + p01, 0.0, conc))
    sparse = np.where(u < p10, 0.0, np.where(u < p10 + p01, 1.0, conc))
    return dense, sparse


def graded_pairs(rng, reps, n):
    """NIAH-like graded scores (multiples of 0.25) with E[dense - sparse] = 0.10 exactly."""
    dense = 0.5 + 0.25 * (rng.random((reps, n)) < 0.5)
    diff = rng.choice([-0.25, 0.0, 0.25, 0.5], p=[0.1, 0.45, 0.4, 0.05], size=(reps, n))
    return dense, dense - diff


@pytest.mark.parametrize("disc", [0.1, 0.25, 0.5])
def test_exact_binary_false_retention_at_the_null_boundary(disc):
    rng = np.random.default_rng(11)
    eps = 0.10
    d, s = binary_pairs(rng, REPS, 100, drop=eps, disc=disc)
    p = sig.retention_pvalues(d, s, eps=eps)  # auto -> exact_binary
    assert np.mean(p <= ALPHA) <= ALPHA + SLACK
    # drop well beyond eps: retention is rarely claimed
    d, s = binary_pairs(rng, REPS, 100, drop=0.2, disc=max(disc, 0.2))
    assert np.mean(sig.retention_pvalues(d, s, eps=eps) <= ALPHA) <= 0.01


def test_exact_binary_size_computed_exactly_over_the_composite_null():
    # Exact rejection probability (no Monte Carlo) for n = 40 over a grid of the whole null
    # region p10 - p01 >= eps (boundary and interior).
    n, eps = 40, 0.10
    table = sig._exact_binary_table(n, eps)
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    ok = (b + c <= n)
    reject = ok & (np.nan_to_num(table, nan=1.0) <= ALPHA)
    m = n - b - c
    worst = 0.0
    for p01 in np.linspace(0, 0.45, 46):
        for extra in (0.0, 0.05, 0.2):
            p10 = p01 + eps + extra
            p00 = 1 - p10 - p01
            if p00 < 0:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                lp = (gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(m + 1)
                      + b * np.log(p10) + np.where(c > 0, c * np.log(max(p01, 1e-300)), 0)
                      + np.where(m > 0, m * np.log(max(p00, 1e-300)), 0))
            prob = np.where(reject, np.exp(np.where(ok, lp, -np.inf)), 0.0).sum()
            worst = max(worst, prob)
    assert worst <= ALPHA + 1e-9
    assert worst > 0.03  # not trivially conservative


def test_betting_valid_for_graded_scores_and_t_test_is_not_for_binary():
    rng = np.random.default_rng(5)
    d, s = graded_pairs(rng, REPS, 100)
    p = sig.retention_pvalues(d, s, eps=0.10)  # auto -> betting (non-binary)
    assert np.mean(p <= ALPHA) <= ALPHA + SLACK
    assert np.array_equal(p, sig.retention_pvalues(d, s, eps=0.10, test="betting"))
    with pytest.raises(ValueError, match="exact_binary"):
        sig.retention_pvalues(d, s, eps=0.10, test="exact_binary")
    # why the t-test is not the default: few discordant binary pairs inflate its type-I error
    d, s = binary_pairs(rng, REPS, 100, drop=0.10, disc=0.12)
    assert np.mean(sig.retention_pvalues(d, s, eps=0.10, test="ttest") <= ALPHA) > 0.07
    assert np.mean(sig.retention_pvalues(d, s, eps=0.10, test="exact_binary") <= ALPHA) <= ALPHA + SLACK
    assert np.mean(sig.retention_pvalues(d, s, eps=0.10, test="betting") <= ALPHA) <= ALPHA + SLACK


def test_fixed_sequence_fwer_when_drops_exceed_eps():
    rng = np.random.default_rng(7)
    eps = 0.10
    # ratio 1 fine, ratio 2 on the null boundary, ratios 3-4 fine again (non-monotone):
    # the only possible false retention is rejecting ratio 2.
    drops = [0.0, eps, 0.0, 0.0]
    ps = np.stack([sig.retention_pvalues(*binary_pairs(rng, REPS, 100, dr, 0.15), eps=eps)
                   for dr in drops], axis=-1)
    rej = sig.fixed_sequence(ps, ALPHA)
    assert np.mean(rej[:, 1]) <= ALPHA + SLACK
    # later ratios can only be retained after ratio 2 was (falsely) retained
    assert not np.any(rej[:, 2] & ~rej[:, 1])
    # all nulls true (every drop >= eps): FWER <= alpha
    ps = np.stack([sig.retention_pvalues(*binary_pairs(rng, REPS, 100, dr, 0.3), eps=eps)
                   for dr in (0.10, 0.15, 0.2)], axis=-1)
    assert np.mean(sig.fixed_sequence(ps, ALPHA).any(axis=-1)) <= ALPHA + SLACK


def test_finds_true_max_ratio_with_large_drops_and_many_samples():
    rng = np.random.default_rng(3)
    eps, n, reps = 0.10, 300, 300
    ratios = np.array([2.0, 5.0, 10.0, 15.0, 20.0])
    drops = [0.0, 0.0, 0.02, 0.4, 0.6]  # truth: max retained ratio = 10
    ps = np.stack([sig.retention_pvalues(*binary_pairs(rng, reps, n, dr, max(dr, 0.1)), eps=eps)
                   for dr in drops], axis=-1)
    found = sig.max_ratio_from_decisions(sig.fixed_sequence(ps, ALPHA), ratios)
    assert np.mean(found == 10.0) >= 0.95
    assert np.all(found <= 10.0)
    # graded scores (betting test) with many samples
    dense = np.full((200, 600), 0.75)
    found_b = []
    ps_b = []
    for dr in drops:
        sparse = np.clip(dense - dr + rng.choice([-0.25, 0.0, 0.25], p=[0.05, 0.9, 0.05], size=dense.shape), 0, 1)
        ps_b.append(sig.retention_pvalues(dense, sparse, eps=eps))
    found_b = sig.max_ratio_from_decisions(sig.fixed_sequence(np.stack(ps_b, -1), ALPHA), ratios)
    assert np.mean(found_b == 10.0) >= 0.95


def test_fixed_sequence_and_max_ratio_helpers():
    p = np.array([[0.01, 0.02, 0.5, 0.001], [0.2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0],
                  [0.01, np.nan, 0.0, 0.0]])
    rej = sig.fixed_sequence(p, 0.05)
    assert rej.tolist() == [[True, True, False, False], [False] * 4, [True] * 4,
                            [True, False, False, False]]
    assert sig.max_ratio_from_decisions(rej, [2, 5, 10, 20]).tolist() == [5.0, 1.0, 20.0, 2.0]
    with pytest.raises(ValueError):
        sig.max_ratio_from_decisions(rej, [5, 2, 10, 20])


def make_samples(dense_scores, sparse_by_ratio, task="qa", method="quest", seed=0):
    rows = [dict(model="m", length=1024, task=task, method="dense", ratio=1.0, sample_id=i, score=v)
            for i, v in enumerate(dense_scores)]
    for r, scores in sparse_by_ratio.items():
        rows += [dict(model="m", length=1024, task=task, method=method, ratio=r, sample_id=i, score=v)
                 for i, v in enumerate(scores)]
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # shuffle rows


def test_max_retained_ratio_stops_at_first_failure_even_if_later_ratio_passes():
    rng = np.random.default_rng(0)
    dense = (rng.random(200) < 0.7).astype(float)
    bad = np.where(rng.random(200) < 0.5, 0.0, dense)  # drops ~0.35
    df = make_samples(dense, {2.0: dense, 5.0: bad, 10.0: dense})
    res = sig.max_retained_ratio(df, eps=0.1)
    s = res.summary.iloc[0]
    assert s["max_ratio"] == 2.0 and s["first_failed_ratio"] == 5.0 and s["n_tested"] == 2
    d = res.detail.set_index("ratio")
    assert d.loc[10.0, "p_value"] <= ALPHA  # would pass on its own ...
    assert not d.loc[10.0, "retained"] and not d.loc[10.0, "tested"]  # ... but is never reached
    assert d.loc[2.0, "retained"] and d.loc[5.0, "tested"] and not d.loc[5.0, "retained"]
    assert (d["test"] == "exact_binary").all()
    assert d.loc[2.0, "n_pairs"] == 200 and d.loc[2.0, "mean_drop"] == 0.0


def test_max_retained_ratio_pairs_by_sample_id_not_row_order():
    rng = np.random.default_rng(1)
    dense = (rng.random(150) < 0.5).astype(float)
    df = make_samples(dense, {3.0: dense}, seed=4)
    p_paired = sig.max_retained_ratio(df, eps=0.1).detail["p_value"].iloc[0]
    # identical per-sample scores: b = c = 0
    assert p_paired == pytest.approx(float(sig.retention_pvalues(dense, dense, eps=0.1)))
    assert p_paired < 1e-3
    # pairing by row position of the shuffled table would mix samples and lose the evidence
    misaligned = sig.retention_pvalues(dense, np.roll(dense, 1), eps=0.1)
    assert misaligned > 100 * p_paired


def test_max_retained_ratio_edge_cases():
    dense = np.ones(50)
    df = make_samples(dense, {2.0: dense})
    no_dense = df[df["method"] != "dense"]
    res = sig.max_retained_ratio(no_dense)
    assert res.summary["max_ratio"].tolist() == [1.0]
    assert np.isnan(res.detail["p_value"].iloc[0]) and res.detail["n_pairs"].iloc[0] == 0
    with pytest.raises(ValueError, match="duplicate"):
        sig.max_retained_ratio(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(ValueError, match="lack columns"):
        sig.max_retained_ratio(df.drop(columns="sample_id"))
    with pytest.raises(ValueError):
        sig.retention_pvalues([1.2], [1.0])
    summ = sig.summarise_max_ratios(sig.max_retained_ratio(df).summary)
    assert summ["mean_max_ratio"].tolist() == [2.0] and summ["n_tasks"].tolist() == [1]


def test_betting_evalue_has_expectation_at_most_one_exactly():
    # Enumerate every outcome of n = 4 i.i.d. differences from a 4-point law with mean eps
    # (the null boundary): E[e-value] must be <= 1 (it is exactly 1 for this test).
    import itertools

    eps = 0.1
    support = np.array([-1.0, 0.0, 0.5, 1.0])
    probs = np.array([0.3, 0.2, 0.2, 0.3])  # mean 0.1 = eps
    assert support @ probs == pytest.approx(eps)
    combos = np.array(list(itertools.product(range(4), repeat=4)))
    weights = np.prod(probs[combos], axis=1)
    evalues = np.exp(sig._betting_log_evalue(support[combos], eps))
    expect = float(weights @ evalues)
    assert expect <= 1 + 1e-9


def test_approximate_tests_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(9)
    d = rng.random(40)
    s = np.clip(d - 0.05 + 0.2 * rng.standard_normal(40), 0, 1)
    p_t = sig.retention_pvalues(d, s, eps=0.1, test="ttest")
    assert p_t == pytest.approx(stats.ttest_1samp(d - s, 0.1, alternative="less").pvalue)
    p_w = sig.retention_pvalues(d, s, eps=0.1, test="welch")
    assert p_w == pytest.approx(stats.ttest_ind(s + 0.1, d, equal_var=False, alternative="greater").pvalue)
