"""The analysis rules' drivers on a synthetic study with known structure (no model runs needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workflow_scripts import analyze, charts
from workflow_scripts.analysis.pareto import pareto_mask

MODELS = {  # name -> (layers, hidden, heads, kv, mlp)
    "s": (2, 64, 4, 2, 128), "m": (4, 128, 4, 2, 256), "l": (6, 256, 8, 2, 512),
}
TASKS = ["ruler_niah", "story_retrieval"]
LENGTHS = [1024, 2048, 4096]
RATIOS = [2.0, 5.0, 10.0, 20.0]


def _write_model(d, layers, hidden, heads, kv, mlp):
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({
        "num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
        "num_key_value_heads": kv, "intermediate_size": mlp, "vocab_size": 1000, "tie_word_embeddings": True}))


def _true_acc(model_i, length, ratio):
    # bigger models better, longer and more compressed worse: a known logistic law
    z = 2.0 + 1.0 * model_i - 0.8 * np.log(length / 1024) - 0.9 * np.log(ratio)
    return 1 / (1 + np.exp(-z))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    paths = {}
    for name, dims in MODELS.items():
        _write_model(root / name, *dims)
        paths[name] = str(root / name)
    rng = np.random.default_rng(0)
    rows = []
    for mi, model in enumerate(MODELS):
        for task in TASKS:
            for L in LENGTHS:
                cells = [("dense", 1.0)] + [(m, r) for m in ("vertical_slash", "quest") for r in RATIOS]
                for method, ratio in cells:
                    p = _true_acc(mi, L, ratio)
                    for sid in range(60):
                        rows.append({"model": model, "task": task, "length": L, "method": method, "ratio": ratio,
                                     "sample_id": sid, "score": float(rng.random() < p), "sparsity": 1 - 1 / ratio,
                                     "density": 1 / ratio, "prefill_ms": L * (0.3 + 0.7 / ratio) * (mi + 1),
                                     "decode_ms_per_token": 1 + (mi + 1) * L / 1024 / ratio})
    samples = pd.DataFrame(rows)
    summary = (samples.groupby(["model", "task", "length", "method", "ratio"])
               .agg(n=("score", "size"), mean=("score", "mean"), se=("score", "sem"),
                    mean_prefill_ms=("prefill_ms", "mean"), mean_decode_ms_per_token=("decode_ms_per_token", "mean"))
               .reset_index())
    samples.to_parquet(root / "samples.parquet")
    summary.to_parquet(root / "summary.parquet")
    analyze.model_table(paths, str(root / "models.parquet"))
    return root


def test_model_table_counts_parameters_exactly(tmp_path, tiny_model):
    analyze.model_table({"tiny": str(tiny_model)}, str(tmp_path / "m.parquet"))
    row = pd.read_parquet(tmp_path / "m.parquet").iloc[0]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    assert row["n_params_exact"] and row["n_params"] == sum(p.numel() for p in model.parameters())


def test_isocost_points_and_frontier(study, tmp_path):
    out = tmp_path / "iso.parquet"
    analyze.isocost(str(study / "summary.parquet"), str(study / "models.parquet"), {}, str(out))
    pts = pd.read_parquet(out)
    assert set(zip(pts["phase"], pts["metric"])) == {("prefill", "flops"), ("prefill", "time"),
                                                     ("decode", "memory"), ("decode", "flops"), ("decode", "time")}
    for (phase, metric, length), g in pts.groupby(["phase", "metric", "length"]):
        # one point per (model, ratio) incl. dense; frontier = independent pareto computation
        assert len(g) == len(MODELS) * (len(RATIOS) + 1)
        assert (g["on_frontier"].to_numpy() == pareto_mask(g["cost"].to_numpy(), g["score"].to_numpy())).all()
    pre = pts[(pts["metric"] == "flops") & (pts["phase"] == "prefill") & (pts["length"] == 4096)]
    # compressing prefill reduces prefill FLOPs for every model
    for _, g in pre.groupby("model"):
        assert g.sort_values("ratio")["cost"].is_monotonic_decreasing
    # every point, isoTime's too, carries the standard error of its mean over tasks: sqrt(sum se_t^2) / n_tasks
    summary = pd.read_parquet(study / "summary.parquet")
    picked = pd.concat([pts[pts["metric"] == "time"].sample(10, random_state=0),
                        pts[pts["metric"] != "time"].sample(10, random_state=0)])
    for rec in picked.to_dict("records"):
        se = summary[(summary["model"] == rec["model"]) & (summary["length"] == rec["length"])
                     & (summary["method"] == rec["method"]) & (summary["ratio"] == rec["ratio"])]["se"]
        assert len(se) == len(TASKS) and rec["se"] == pytest.approx(float(np.sqrt((se ** 2).sum())) / len(TASKS))
    for kind in charts.METRICS:
        charts.iso_chart(str(out), kind, str(tmp_path / f"{kind}.html"), str(tmp_path / f"{kind}.png"))
        assert (tmp_path / f"{kind}.png").read_bytes()[:4] == b"\x89PNG"


def test_significance_finds_retained_ratios(study, tmp_path):
    analyze.significance(str(study / "samples.parquet"), {"analysis": {"eps": 0.1}},
                         str(tmp_path / "d.parquet"), str(tmp_path / "s.parquet"))
    s = pd.read_parquet(tmp_path / "s.parquet")
    assert len(s) == len(MODELS) * len(TASKS) * len(LENGTHS) * 2
    assert (s["eps"] == 0.1).all()
    # the true drop at 20x exceeds eps everywhere -> 20x is never certified
    assert (s["max_ratio"] < 20).all()
    # larger models degrade less -> certified ratios are higher on average for the largest model
    by_model = s.groupby("model")["max_ratio"].mean()
    assert by_model["l"] >= by_model["s"]
    charts.max_ratio_chart(str(tmp_path / "s.parquet"), str(tmp_path / "mr.html"), str(tmp_path / "mr.png"))


def test_scaling_tables_and_refusal(study, tmp_path):
    outs = [str(tmp_path / f) for f in ("t3.parquet", "t4.parquet", "t7.parquet", "scaling.md")]
    analyze.scaling(str(study / "summary.parquet"), str(study / "models.parquet"), *outs)
    t3 = pd.read_parquet(outs[0])
    assert set(t3["status"]) == {"ok"} and len(t3) == 6      # 2 phases x 3 held-out axes
    assert (t3["r2"] > 0.5).all()
    md = (tmp_path / "scaling.md").read_text()
    assert "Spearman" in md and "held-out compression" in md
    # a study with two lengths cannot hold out the length axis: refused with the reason, others still fit
    small = pd.read_parquet(study / "summary.parquet")
    small = small[small["length"] < 4096]
    small.to_parquet(tmp_path / "small.parquet")
    analyze.scaling(str(tmp_path / "small.parquet"), str(study / "models.parquet"), *outs)
    t3 = pd.read_parquet(outs[0]).set_index(["phase", "held_out"])
    assert t3.loc[("prefill", "length"), "status"].startswith("refused") and "length" in t3.loc[
        ("prefill", "length"), "status"]
    assert t3.loc[("prefill", "compression"), "status"] == "ok"


def test_relative_error_by_length(study, tmp_path):
    analyze.relative_error(str(study / "summary.parquet"), {}, str(tmp_path / "re.parquet"))
    df = pd.read_parquet(tmp_path / "re.parquet")
    assert set(df["method"]) == {"vertical_slash", "quest"} and set(df["length"]) == set(LENGTHS)
    assert (df["relative_error"] > 0).all()           # compression at 20x hurts in the synthetic law
    charts.relative_error_chart(str(tmp_path / "re.parquet"), str(tmp_path / "re.html"), str(tmp_path / "re.png"))


def test_relative_error_uses_the_studys_own_ratio(study, tmp_path):
    """Without analysis.fixed_ratio the comparison is at the largest ratio every sparse method ran at (a fixed 20
    would leave a 2x-4x study with nothing); a study setting fixed_ratio keeps it."""
    full = pd.read_parquet(study / "summary.parquet")
    assert analyze.study_ratio(full) == 20.0
    # ratios up to 10 only, and Quest without 10: the largest common ratio is 5
    small = full[(full["ratio"] <= 10) & ~((full["method"] == "quest") & (full["ratio"] == 10))]
    assert analyze.study_ratio(small) == 5.0
    small.to_parquet(tmp_path / "small.parquet")
    analyze.relative_error(str(tmp_path / "small.parquet"), {}, str(tmp_path / "re.parquet"))
    df = pd.read_parquet(tmp_path / "re.parquet")
    assert set(df["ratio"]) == {5.0} and set(df["method"]) == {"vertical_slash", "quest"}
    assert set(df["n_interpolated"]) == {0}                       # measured cells, not interpolated ones
    # the values are those of the 5x cells (pooled over models and tasks), by hand from the summary: not the
    # largest ratio any method ran at (10, V-S only), not the smallest common one (2)
    for rec in df.to_dict("records"):
        at = small[small["length"] == rec["length"]]
        dense = at[at["method"] == "dense"]["mean"].mean()
        sparse = at[(at["method"] == rec["method"]) & (at["ratio"] == 5.0)]["mean"].mean()
        assert rec["relative_error"] == pytest.approx((dense - sparse) / dense)
        for wrong in (2.0, 10.0):
            other = at[(at["method"] == "vertical_slash") & (at["ratio"] == wrong)]["mean"].mean()
            assert rec["method"] != "vertical_slash" or rec["relative_error"] != pytest.approx((dense - other) / dense)
    analyze.relative_error(str(tmp_path / "small.parquet"), {"analysis": {"fixed_ratio": 2}},
                           str(tmp_path / "re2.parquet"))
    assert set(pd.read_parquet(tmp_path / "re2.parquet")["ratio"]) == {2.0}
    # no ratio in common: the one most methods ran at; no sparse method: None
    odd = full[((full["method"] == "vertical_slash") & (full["ratio"] == 2)) | (full["method"] == "dense")
               | ((full["method"] == "quest") & (full["ratio"] == 5))]
    assert analyze.study_ratio(odd) == 5.0
    assert analyze.study_ratio(full[full["method"] == "dense"]) is None


def test_scaling_fit_without_support_is_flagged_in_words():
    bad = {"r2": -0.956, "n_train": 32, "n_test": 16, "converged": True}
    lines = analyze.scaling_warnings(bad)
    assert len(lines) == 1 and "R² ≤ 0" in lines[0] and "32 training cells, 16 held-out cells" in lines[0]
    assert "weak fit" in analyze.scaling_warnings({**bad, "r2": 0.3})[0]
    assert analyze.scaling_warnings({**bad, "r2": 0.8}) == []
    assert analyze.scaling_warnings({**bad, "r2": 0.8, "converged": False}) == [
        "  - **warning:** the optimiser did not converge."]
