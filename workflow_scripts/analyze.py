"""Drivers of the analysis rules: read the aggregated tables, call ``workflow_scripts.analysis``, write parquet.

Each function takes paths (so a rule stays a one-liner) and writes its outputs atomically. Charts are drawn by
``workflow_scripts.charts`` from these tables. Settings come from the study config's ``analysis`` section
(defaults in ``DEFAULTS``; documented in docs/analysis.md).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

DEFAULTS = {
    "alpha": 0.05,            # family-wise error of the retention test (fixed-sequence testing)
    "eps": 0.10,              # tolerated drop in mean score (absolute) before "retention" fails
    "index_dim": "hidden",    # Eq. 9/10 as written (d); "head" uses d_h
    "quest_index_dim": "head",  # Eq. 10 with d would make Quest cost more than dense (docs/analysis.md)
    # compression at which the sequence-length analysis compares (the paper: 20, a 1/20 budget); None = the study's
    # own: the largest ratio every sparse method of the study ran at (see study_ratio)
    "fixed_ratio": None,
}


def settings(config: dict | None) -> dict:
    return {**DEFAULTS, **((config or {}).get("analysis") or {})}


def _write(df, path: str) -> None:
    import pyarrow as pa

    from .io import write_parquet

    write_parquet(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False), path)


def count_parameters(model_dir: str | Path) -> int | None:
    """Exact parameter count from safetensors headers (no weights loaded); None without safetensors files."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for s in entry["shape"]:
                    count *= s
                total += count
    return total


def model_table(models: dict[str, str], out: str) -> None:
    """models: name -> checkpoint dir. Writes dims (from config.json) and exact parameter counts."""
    import pandas as pd

    from .analysis.cost import ModelDims

    rows = []
    for name, path in models.items():
        n = count_parameters(path)
        dims = ModelDims.from_hf_config(path, name=name, n_params=n)
        rows.append({"model": name, "path": str(path), "n_params": float(dims.params),
                     "n_params_exact": n is not None, **{k: v for k, v in dims.to_dict().items()
                                                          if k not in ("name", "n_params")}})
    _write(pd.DataFrame(rows), out)


def _dims(models_path: str) -> dict:
    import pandas as pd

    from .analysis.cost import ModelDims

    ints = ("n_layers", "n_heads", "n_kv_heads", "hidden_size", "intermediate_size", "vocab_size", "head_dim")
    out = {}
    for rec in pd.read_parquet(models_path).to_dict("records"):
        fields = {k: int(rec[k]) for k in ints}
        fields.update({k: bool(rec[k]) for k in ("tie_word_embeddings", "qkv_bias") if k in rec})
        out[rec["model"]] = ModelDims(name=rec["model"], n_params=float(rec["n_params"]), **fields)
    return out


def _single_method_rows(summary):
    """Combined prefill+decode cells (``a+b``) have no single phase; the paper's analyses use single methods."""
    return summary[~summary["method"].str.contains("+", regex=False)]


def isocost(summary_path: str, models_path: str, config: dict, out: str) -> None:
    """isoFLOPS (v1: FLOPs in both phases), isoCost (v3: FLOPs prefill, memory decode) and isoTime points.

    One point per (phase, metric, model, length, method, ratio), y = mean score over tasks; ``on_frontier``
    marks the Pareto frontier within (phase, metric, length).
    """
    import pandas as pd

    from .analysis import decode_methods, prefill_methods
    from .analysis.pareto import isocost_points, pareto_frontier, task_mean_se

    s = settings(config)
    summary = _single_method_rows(pd.read_parquet(summary_path))
    dims = _dims(models_path)
    kw = {"index_dim": s["index_dim"], "quest_index_dim": s["quest_index_dim"]}
    frames = []
    present = set(summary["method"])
    for phase, methods in (("prefill", prefill_methods()), ("decode", decode_methods())):
        methods = [m for m in methods if m in present]
        if not methods:
            continue
        metrics = [("flops", {})] if phase == "prefill" else [("memory", {}), ("flops", {"decode_metric": "flops"})]
        for metric, extra in metrics:
            pts = isocost_points(summary, dims, phase, methods=methods, **kw, **extra)
            pts["phase"], pts["metric"] = phase, metric
            frames.append(pts)
        # isoTime: measured wall clock of the phase (mean over tasks of the per-cell means)
        col = "mean_prefill_ms" if phase == "prefill" else "mean_decode_ms_per_token"
        sub = summary[summary["method"].isin(["dense", *methods])]
        t = (sub.groupby(["model", "length", "method", "ratio"])
             .agg(n_tasks=("task", "nunique"), score=("mean", "mean"), se=("se", task_mean_se), cost=(col, "mean"))
             .reset_index())
        t["cost_unit"] = "ms" if phase == "prefill" else "ms/token"
        t["n_params"] = t["model"].map(lambda m: float(dims[m].params))
        t["phase"], t["metric"] = phase, "time"
        frames.append(t.dropna(subset=["cost"]))
    if not frames:   # dense-only study: nothing to compare; charts say so
        frames = [pd.DataFrame(columns=["model", "length", "method", "ratio", "n_tasks", "score", "se", "cost",
                                        "cost_unit", "n_params", "phase", "metric"])]
    pts = pd.concat(frames, ignore_index=True)
    res = pareto_frontier(pts, cost="cost", score="score", by=["phase", "metric", "length"])
    _write(res.points, out)


def significance(samples_path: str, config: dict, out_detail: str, out_summary: str) -> None:
    import pandas as pd

    from .analysis.significance import max_retained_ratio

    s = settings(config)
    samples = _single_method_rows(pd.read_parquet(samples_path))
    res = max_retained_ratio(samples, alpha=s["alpha"], eps=s["eps"])
    _write(res.detail, out_detail)
    _write(res.summary, out_summary)


def scaling(summary_path: str, models_path: str, out_table3: str, out_table4: str, out_table7: str,
            out_md: str) -> None:
    """Scaling-law fits per phase, validated by holding out the largest value of each axis in turn.

    Axes with too few distinct values are refused with the reason written into the tables and the markdown
    (the rule never fails for a small study).
    """
    import pandas as pd

    from .analysis.scaling import scaling_cells, validate_scaling_law, wide_by_task
    from .io import atomic_path

    summary = _single_method_rows(pd.read_parquet(summary_path))
    n_params = {m: d.params for m, d in _dims(models_path).items()}
    t3, t4, t7, lines = [], [], [], ["# Scaling-law fits", ""]
    for phase in ("prefill", "decode"):
        cells = scaling_cells(summary, n_params, phase)
        lines.append(f"## {phase}")
        if cells.empty or cells["method"].nunique() < 2:
            msg = f"refused: no {phase} method besides dense in this study"
            t3.append(pd.DataFrame([{"phase": phase, "held_out": None, "status": msg}]))
            lines += [msg, ""]
            continue
        for axis in ("length", "model_size", "compression"):
            try:
                v = validate_scaling_law(cells, phase=phase, axes=(axis,))
            except ValueError as err:
                msg = f"refused: {err}"
                t3.append(pd.DataFrame([{"phase": phase, "held_out": axis, "status": msg}]))
                lines += [f"- held-out {axis}: {msg}"]
                continue
            t3.append(v.table3.assign(status="ok"))
            t4.append(v.table4)
            t7.append(v.table7)
            row = v.table3.iloc[0]
            lines.append(f"- held-out {axis}: R² = {row['r2']:.3f}, alpha(ln N) = {row['alpha']:.3f}, "
                         f"beta(ln L) = {row['beta']:.3f}, gamma(ln CR) = {row['gamma']:.3f}")
            lines += scaling_warnings(row)
        lines.append("")
    table3 = pd.concat(t3, ignore_index=True)
    table4 = pd.concat(t4, ignore_index=True) if t4 else pd.DataFrame(columns=["phase", "held_out", "task"])
    table7 = pd.concat(t7, ignore_index=True) if t7 else pd.DataFrame(columns=["phase", "held_out", "task"])
    if t4:
        lines += ["## Spearman rho (held-out cells)", "",
                  wide_by_task(table4, "spearman_rho").to_markdown(index=False, floatfmt=".2f"), "",
                  "## MAE (held-out cells)", "",
                  wide_by_task(table7, "mae").to_markdown(index=False, floatfmt=".2f"), ""]
    _write(table3, out_table3)
    _write(table4, out_table4)
    _write(table7, out_table7)
    with atomic_path(out_md) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def scaling_warnings(row) -> list[str]:
    """Sentences for a held-out fit (a row of table 3) that does not support conclusions."""
    out = []
    n = f" ({int(row['n_train'])} training cells, {int(row['n_test'])} held-out cells)" \
        if "n_train" in row and "n_test" in row else ""
    if row["r2"] <= 0:
        out.append(f"  - **warning:** R² ≤ 0: the fit predicts the held-out cells no better than their mean{n}; "
                   "too few cells or samples per cell for a scaling law (the paper fits its whole grid, 100 "
                   "samples per cell). Do not read the coefficients.")
    elif row["r2"] < 0.5:
        out.append(f"  - **warning:** R² = {row['r2']:.2f} on held-out cells{n}: a weak fit; read the coefficients "
                   "as trends at most.")
    if "converged" in row and not bool(row["converged"]):
        out.append("  - **warning:** the optimiser did not converge.")
    return out


def study_ratio(summary) -> float | None:
    """The compression ratio a single-ratio comparison of the study's methods uses: the largest ratio every sparse
    (single) method ran at; with none in common, the ratio most methods ran at (the larger on a tie). None when the
    study has no sparse method."""
    from collections import Counter

    sparse = summary[summary["method"] != "dense"]
    by_method = {m: set(g["ratio"].astype(float)) for m, g in sparse.groupby("method")}
    if not by_method:
        return None
    common = set.intersection(*by_method.values())
    if common:
        return max(common)
    counts = Counter(r for rs in by_method.values() for r in rs)
    return max(counts, key=lambda r: (counts[r], r))


def relative_error(summary_path: str, config: dict, out: str) -> None:
    """Relative error of sparse vs dense at one compression ratio, per length and method (v3 Fig. 3: at 20x).
    The ratio is ``analysis.fixed_ratio`` when set, else the study's own (:func:`study_ratio`)."""
    import pandas as pd

    from .analysis.tables import relative_error_by_length

    s = settings(config)
    summary = _single_method_rows(pd.read_parquet(summary_path))
    ratio = s["fixed_ratio"] if s["fixed_ratio"] is not None else study_ratio(summary)
    if ratio is None:
        df = pd.DataFrame(columns=["length", "method", "ratio", "relative_error"])
    else:
        df = relative_error_by_length(summary, ratio=float(ratio), by=("length", "method"))
    _write(df, out)


def _recall_phase(samples):
    """Name of the sparsified phase of each sample row ("prefill" / "decode"; None for dense and combined)."""
    import numpy as np
    import pandas as pd

    pre = (samples["prefill_method"] != "dense").to_numpy()
    dec = (samples["decode_method"] != "dense").to_numpy()
    return pd.Series(np.select([pre & ~dec, dec & ~pre], ["prefill", "decode"], None), index=samples.index,
                     dtype=object)


def recall(samples_path: str, out_cells: str, out_layers: str) -> None:
    """Attention recall (study key ``recall: true``) per cell next to its accuracy, and per layer.

    ``out_cells``: one row per (model, task, length, method, ratio) of a single method (dense included):
    n, mean score and its standard error, mean realized density, mean recall and oracle recall of the
    sparsified phase (dense: 1) and their standard errors. ``out_layers``: per cell and layer, the mean recall
    and oracle recall (over samples; each sample's figure is already a mean over heads and rows / steps)."""
    import pandas as pd

    keys = ["model", "task", "length", "method", "ratio"]
    s = _single_method_rows(pd.read_parquet(samples_path))
    if "recall" not in s.columns:
        raise ValueError(f"{samples_path} has no recall columns: set `recall: true` in the study")
    s = s.assign(phase=_recall_phase(s))

    def se(x):
        return x.std(ddof=1) / len(x) ** 0.5 if len(x) > 1 else 0.0

    cells = (s.groupby(keys, dropna=False)
             .agg(phase=("phase", "first"), n=("score", "size"), mean=("score", "mean"), se=("score", se),
                  density=("density", "mean"), recall=("recall", "mean"), recall_se=("recall", se),
                  oracle_recall=("oracle_recall", "mean"), oracle_recall_se=("oracle_recall", se))
             .reset_index())
    rows = []
    for rec in s[s["phase"].notna()].to_dict("records"):
        r, o = rec[f"{rec['phase']}_recall_by_layer"], rec[f"{rec['phase']}_oracle_recall_by_layer"]
        if r is None or o is None:
            continue
        for layer, (x, y) in enumerate(zip(r, o)):
            rows.append({**{k: rec[k] for k in keys}, "phase": rec["phase"], "layer": layer, "recall": x,
                         "oracle_recall": y})
    layers = pd.DataFrame(rows, columns=keys + ["phase", "layer", "recall", "oracle_recall"])
    if not layers.empty:
        layers = layers.groupby(keys + ["phase", "layer"]).mean().reset_index()
    _write(cells, out_cells)
    _write(layers, out_layers)
