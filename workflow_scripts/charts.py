"""Altair charts from the aggregated tables, saved as offline HTML (inline Vega) and PNG (vl-convert)."""

from __future__ import annotations


def save_chart(chart, html_path: str, png_path: str | None = None) -> None:
    from .io import atomic_path

    with atomic_path(html_path) as tmp:
        chart.save(str(tmp), format="html", inline=True)
    if png_path:
        with atomic_path(png_path) as tmp:
            chart.save(str(tmp), format="png", scale_factor=2)


def with_dense_anchor(df):
    """Each sparse method's rows plus a copy of the dense row of the same (model, task, length) at ratio 1, so
    every method's line starts at the dense score it degrades from (dense keeps its own point)."""
    import pandas as pd

    keys = ["model", "task", "length"]
    cells = df.loc[df["method"] != "dense", keys + ["method"]].drop_duplicates()
    anchors = cells.merge(df[df["method"] == "dense"].drop(columns="method"), on=keys)
    return pd.concat([df, anchors[df.columns]], ignore_index=True)


# One colour per method in every chart (the same method, the same colour from figure to figure), dark enough to
# read on white (no pale yellow); methods registered outside the project take the spare colours in name order.
METHOD_COLORS = {"dense": "#4e79a7", "vertical_slash": "#f28e2b", "flexprefill": "#e15759",
                 "block_sparse": "#9c755f", "snapkv": "#59a14f", "ada_snapkv": "#b07aa1", "quest": "#2a9d8f"}
SPARE_COLORS = ["#d4a017", "#ff6f91", "#6b6b6b", "#1f77b4", "#8c564b", "#17becf"]


def method_scale(methods):
    """The colour scale of a chart whose colour is the method: ``methods`` in the order given, each in its
    colour (METHOD_COLORS)."""
    import altair as alt

    methods = list(dict.fromkeys(methods))
    others = sorted(m for m in methods if m not in METHOD_COLORS)
    spare = {m: SPARE_COLORS[i % len(SPARE_COLORS)] for i, m in enumerate(others)}
    return alt.Scale(domain=methods, range=[METHOD_COLORS.get(m) or spare[m] for m in methods])


def ratio_scale(*largest):
    """(scale, axis) of a compression-ratio axis: log, from 1 to the largest of ``largest`` (NaN ignored; at least
    2), ticks at 1, the powers of two below and the end."""
    import math

    import altair as alt

    top = float(max([2.0, *(float(x) for x in largest if x is not None and not math.isnan(float(x)))]))
    ticks = sorted({1.0, top} | {float(2**k) for k in range(1, 8) if 2**k < top})
    return alt.Scale(type="log", domain=[1, top], nice=False), alt.Axis(values=ticks, format="~g")


def score_vs_ratio(summary_path: str, html_path: str, png_path: str) -> None:
    """Paper Fig. 4 analogue: per task and length, score against compression for each method, one model per row
    block; standard-error bands; the dense score as a dashed grey reference line; a log ratio
    axis from 1 to the study's largest ratio."""
    import altair as alt
    import pandas as pd

    raw = pd.read_parquet(summary_path)
    raw = raw[~raw["method"].str.contains("+", regex=False)]       # combined methods have two ratios
    df = with_dense_anchor(raw)
    df["lo"] = (df["mean"] - df["se"].fillna(0)).clip(lower=0)
    df["hi"] = (df["mean"] + df["se"].fillna(0)).clip(upper=1)
    scale, axis = ratio_scale(df["ratio"].max())
    x = alt.X("ratio:Q", title="compression ratio (×, log)", axis=axis, scale=scale)
    methods = sorted(m for m in df["method"].unique() if m != "dense")
    color = alt.Color("method:N", title="method", scale=method_scale(methods),
                      legend=alt.Legend(symbolType="stroke", symbolOpacity=1, symbolStrokeWidth=3))
    blocks = []
    for model in sorted(raw["model"].unique()):
        d = df[df["model"] == model]
        sparse = d[d["method"] != "dense"]
        dense = raw[(raw["model"] == model) & (raw["method"] == "dense")]
        data = pd.concat([sparse.assign(kind="sparse"), dense.assign(kind="dense")], ignore_index=True)
        base = alt.Chart(data)
        band = base.transform_filter("datum.kind == 'sparse'").mark_area(opacity=0.15).encode(
            x=x, y=alt.Y("lo:Q", title="mean score (± SE)", scale=alt.Scale(domain=[0, 1])), y2="hi:Q", color=color)
        lines = base.transform_filter("datum.kind == 'sparse'").mark_line(point=True).encode(
            x=x, y=alt.Y("mean:Q", title="mean score (± SE)", scale=alt.Scale(domain=[0, 1])), color=color,
            tooltip=["model", "task", "length", "method", "ratio", "n", alt.Tooltip("mean:Q", format=".3f"),
                     alt.Tooltip("se:Q", format=".3f")])
        ref = base.transform_filter("datum.kind == 'dense'").mark_rule(color="grey", strokeDash=[5, 3]).encode(
            y=alt.Y("mean:Q", title="mean score (± SE)", scale=alt.Scale(domain=[0, 1])))
        blocks.append(alt.layer(band, ref, lines).properties(width=200, height=130).facet(
            column=alt.Column("length:O", title=None, header=alt.Header(labelExpr="datum.value + ' tokens'")),
            row=alt.Row("task:N", title=None),
        ).properties(title=f"model {model}"))
    if not blocks:
        return _empty_chart("score vs ratio: no results", html_path, png_path)
    n = int(raw["n"].min()) if len(raw) else 0
    chart = alt.vconcat(*blocks).properties(title=alt.Title(
        "Score vs compression ratio per task (mean ± standard error)",
        subtitle=f"dashed grey: the model's dense score; n = {n} or more samples per point"))
    save_chart(chart, html_path, png_path)


METRICS = {
    # chart name -> (metric per phase, title, axis titles per phase)
    "isoflops": ({"prefill": "flops", "decode": "flops"}, "isoFLOPS (paper v1): score vs FLOPs, batch 1",
                 {"prefill": "prefill FLOPs (log)", "decode": "decode FLOPs per token (log)"}),
    "isocost": ({"prefill": "flops", "decode": "memory"}, "isoCost (paper v3): score vs FLOPs / memory transfers",
                {"prefill": "prefill FLOPs (log)", "decode": "decode memory / token, elements (log)"}),
    "isotime": ({"prefill": "time", "decode": "time"}, "isoTime: score vs measured wall-clock",
                {"prefill": "prefill time, ms (log)", "decode": "decode time per token, ms (log)"}),
}


def iso_chart(points_path: str, kind: str, html_path: str, png_path: str, runtime: str | None = None) -> None:
    """Paper Fig. 2 analogue. One panel per (phase, length): per model and method a line from the dense point
    through the method's ratios (colour = method, shape = model, ratio written beside each point), ± standard
    error bars, the Pareto frontier dashed; log cost axes fitted to the data."""
    import altair as alt
    import pandas as pd

    metric_of, title, x_titles = METRICS[kind]
    pts = pd.read_parquet(points_path)
    # one colour scale for both phases' panels (concatenated charts share it: one domain, one range)
    color = alt.Color("method:N", title="method",
                      scale=method_scale(["dense", *sorted(m for m in pts["method"].unique() if m != "dense")]))
    panels = []
    for phase in ("prefill", "decode"):
        df = pts[(pts["phase"] == phase) & (pts["metric"] == metric_of[phase])].copy()
        df = df[df["cost"] > 0]
        if df.empty:
            continue
        methods = sorted(m for m in df["method"].unique() if m != "dense")
        dense = df[df["method"] == "dense"]
        # each method's series starts at its model's dense point (ratio 1)
        series = pd.concat([df[df["method"] != "dense"]] + [dense.assign(method=m) for m in methods])
        lo, hi = float(df["cost"].min()), float(df["cost"].max())
        x = alt.X("cost:Q", title=x_titles[phase], axis=alt.Axis(format="~s", tickCount=5),
                  scale=alt.Scale(type="log", domain=[lo / 1.3, hi * 1.3], nice=False))
        y = alt.Y("score:Q", title="mean score over tasks (± SE)", scale=alt.Scale(domain=[0, 1]))
        # one data set for every layer (faceting needs it): the points, and the series drawn as lines / labels
        data = pd.concat([df.assign(kind="point", label=""), series.assign(kind="series")], ignore_index=True)
        base = alt.Chart(data)
        lines = base.transform_filter("datum.kind == 'series'").mark_line(opacity=0.6).encode(
            x=x, y=y, color=color, detail="model:N", order="ratio:Q")
        err = base.transform_filter("datum.kind == 'point'").transform_calculate(
            lo="max(0, datum.score - datum.se)", hi="min(1, datum.score + datum.se)",
        ).mark_rule(opacity=0.5).encode(x=x, y=alt.Y("lo:Q", title="mean score over tasks (± SE)"), y2="hi:Q",
                                        color=color)
        points = base.transform_filter("datum.kind == 'point'").mark_point(filled=True, size=60).encode(
            x=x, y=y, color=color, shape=alt.Shape("model:N", title="model"),
            tooltip=["model", "method", "ratio", "length", alt.Tooltip("score:Q", format=".3f"),
                     alt.Tooltip("se:Q", format=".3f"), alt.Tooltip("cost:Q", format=".3g"), "on_frontier"])
        labels = base.transform_filter("datum.kind == 'point' && datum.method != 'dense'").transform_calculate(
            text="format(datum.ratio, '~g') + '×'",
        ).mark_text(dx=8, dy=-6, fontSize=8).encode(x=x, y=y, text="text:N", color=color)
        frontier = base.transform_filter("datum.kind == 'point' && datum.on_frontier").mark_line(
            color="black", strokeDash=[4, 2], strokeWidth=1).encode(x=x, y=y, order="cost:Q")
        panels.append(alt.layer(lines, err, points, labels, frontier).properties(width=250, height=190).facet(
            column=alt.Column("length:O", title=f"{phase} — prompt length (tokens)")))
    if not panels:
        return _empty_chart(f"{title}: no sparse method in this study", html_path, png_path)
    subtitle = ["dashed: Pareto frontier; each line runs from its model's dense point (1×) through the method's "
                "ratios"]
    if kind == "isotime":
        where = runtime or "the device and executor in each cell's metadata"
        subtitle.append(f"wall clock per sample of this study's runs on {where} (prefill: its batch's time / batch size)")
    chart = alt.vconcat(*panels).properties(title=alt.Title(title, subtitle=subtitle)).resolve_scale(x="independent")
    save_chart(chart, html_path, png_path)


def max_ratio_chart(summary_path: str, html_path: str, png_path: str) -> None:
    """Paper Fig. 3: max compression with statistically guaranteed retention; a point per task, mean and range, on a
    log axis from 1 (no compression certified) to the largest ratio the study tested. When no cell is certified
    above 1x, the title says so in words."""
    import altair as alt
    import pandas as pd

    df = pd.read_parquet(summary_path)
    if df.empty:
        return _empty_chart("max retained compression: no sparse method in this study", html_path, png_path)
    scale, axis = ratio_scale(df["max_ratio"].max(), df["first_failed_ratio"].max(skipna=True))
    title = "certified ratio (×, log)"
    y = alt.Y("max_ratio:Q", title=title, scale=scale, axis=axis)
    base = alt.Chart(df).encode(x=alt.X("model:N", title=None))
    points = base.mark_circle(size=50, opacity=0.75).encode(
        y=y, color=alt.Color("task:N", title="task"), xOffset=alt.XOffset("task:N"),
        tooltip=["model", "task", "length", "method", "max_ratio", "first_failed_ratio"],
    )
    mean = base.mark_tick(color="black", thickness=2, size=24).encode(
        y=alt.Y("mean(max_ratio):Q", title=title, scale=scale, axis=axis))
    spread = base.mark_rule(color="black").encode(                 # min .. max over tasks (never below 1)
        y=alt.Y("min(max_ratio):Q", title=title, scale=scale, axis=axis), y2="max(max_ratio):Q")
    alpha, eps = float(df["alpha"].iloc[0]), float(df["eps"].iloc[0])
    certified = int((df["max_ratio"] > 1).sum())
    subtitle = ("tick = mean over tasks, bar = range over tasks; "
                + (f"{certified} of {len(df)} (model, task, length, method) cells certified above 1×" if certified
                   else f"no cell is certified above 1× (none of the {len(df)} cells passes the test at its first "
                        "ratio: too few samples or too large a drop)"))
    chart = alt.layer(points, spread, mean).properties(width=110, height=150).facet(
        column=alt.Column("method:N", title=None, header=alt.Header(labelFontWeight="bold")),
        row=alt.Row("length:O", title=None, header=alt.Header(labelExpr="datum.value + ' tokens'")),
    ).properties(title=alt.Title(f"Maximum compression with guaranteed retention (α={alpha}, ε={eps})",
                                 subtitle=subtitle))
    save_chart(chart, html_path, png_path)


def relative_error_chart(path: str, html_path: str, png_path: str) -> None:
    """Paper v3 Fig. 3: relative error of sparse vs dense at a fixed compression, by prompt length."""
    import altair as alt
    import pandas as pd

    df = pd.read_parquet(path)
    if df.empty:
        return _empty_chart("relative error vs length: no sparse method in this study", html_path, png_path)
    ratio = df["ratio"].iloc[0]
    chart = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("length:Q", scale=alt.Scale(type="log", base=2), title="prompt length (tokens, log)",
                axis=alt.Axis(values=sorted(int(v) for v in df["length"].unique()), format="d")),  # the study's
        y=alt.Y("relative_error:Q", title="(dense − sparse) / dense"),
        color=alt.Color("method:N", title="method", scale=method_scale(sorted(df["method"].unique()))),
        tooltip=["length", "method", alt.Tooltip("relative_error:Q", format=".3f")],
    ).properties(width=360, height=220,
                 title=f"Relative error at {ratio:g}× compression vs prompt length (pooled over models and tasks)")
    save_chart(chart, html_path, png_path)


def _empty_chart(message: str, html_path: str, png_path: str) -> None:
    import altair as alt
    import pandas as pd

    chart = alt.Chart(pd.DataFrame({"msg": [message]})).mark_text(size=14).encode(text="msg:N").properties(
        width=500, height=60, title=message)
    save_chart(chart, html_path, png_path)


def pick_recall_cell(layers, choice: dict | None = None) -> dict | None:
    """The (model, task, length, ratio) whose per-layer recall the recall chart draws: ``choice`` (the study's
    ``analysis.recall_cell``, any subset of those keys) narrows the cells; then the longest length, the first
    model and task, and the ratio most methods share (the largest on ties)."""
    df = layers
    for key, value in (choice or {}).items():
        df = df[df[key] == value]
    if df.empty:
        return None
    df = df[df["length"] == df["length"].max()]
    df = df[df["model"] == sorted(df["model"].unique())[0]]
    df = df[df["task"] == sorted(df["task"].unique())[0]]
    counts = df.groupby("ratio")["method"].nunique().reset_index()
    best = counts.sort_values(["method", "ratio"], ascending=False).iloc[0]
    row = df.iloc[0]
    return {"model": row["model"], "task": row["task"], "length": int(row["length"]), "ratio": float(best["ratio"])}


def recall_chart(cells_path: str, layers_path: str, html_path: str, png_path: str, choice: dict | None = None) -> None:
    """Attention recall next to accuracy: per (model, task, length) a panel of recall (solid) and oracle recall
    of equal budget (dashed) vs compression per method, the mean score beside it; below, recall per layer for
    one cell (:func:`pick_recall_cell`)."""
    import altair as alt
    import pandas as pd

    cells = pd.read_parquet(cells_path)
    layers = pd.read_parquet(layers_path)
    if cells.empty or cells["method"].eq("dense").all():
        return _empty_chart("attention recall: no sparse method in this study", html_path, png_path)
    cells = with_dense_anchor(cells)
    cells["cell"] = cells["model"] + " · " + cells["task"] + " · " + cells["length"].astype(str)
    long = pd.concat([cells.assign(measure="method", value=cells["recall"]),
                      cells.assign(measure="oracle (equal budget)", value=cells["oracle_recall"])])
    x = alt.X("ratio:Q", scale=alt.Scale(type="log"), title="compression ratio (log)")
    color = alt.Color("method:N", title="method", scale=method_scale(sorted(cells["method"].unique())))
    # (the dash needs no legend: the chart title says solid = method, dashed = oracle)
    dash = alt.StrokeDash("measure:N", legend=None,
                          scale=alt.Scale(domain=["method", "oracle (equal budget)"], range=[[1, 0], [5, 3]]))
    rows = []
    for cell in sorted(cells["cell"].unique()):
        rec = alt.Chart(long[long["cell"] == cell]).mark_line(point=True).encode(
            x=x, y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title="dense mass kept"), color=color,
            strokeDash=dash, tooltip=["method", "ratio", "measure", alt.Tooltip("value:Q", format=".3f")],
        ).properties(width=220, height=140, title=f"{cell}: attention recall")
        acc = alt.Chart(cells[cells["cell"] == cell]).mark_line(point=True).encode(
            x=x, y=alt.Y("mean:Q", scale=alt.Scale(domain=[0, 1]), title="mean score"), color=color,
            tooltip=["method", "ratio", "n", alt.Tooltip("mean:Q", format=".3f")],
        ).properties(width=220, height=140, title=f"{cell}: accuracy")
        rows.append(alt.hconcat(rec, acc))
    top = alt.vconcat(*rows)
    pick = pick_recall_cell(layers, choice)
    if pick is None:
        return save_chart(top.properties(title="Attention recall vs compression, next to accuracy"), html_path,
                          png_path)
    one = layers[(layers["model"] == pick["model"]) & (layers["task"] == pick["task"])
                 & (layers["length"] == pick["length"]) & ((layers["ratio"] - pick["ratio"]).abs() < 1e-9)]
    one_long = pd.concat([one.assign(measure="method", value=one["recall"]),
                          one.assign(measure="oracle (equal budget)", value=one["oracle_recall"])])
    per_layer = alt.Chart(one_long).mark_line(point=True).encode(
        x=alt.X("layer:O", title="layer"),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title="attention recall"), color=color, strokeDash=dash,
        tooltip=["method", "layer", "measure", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=460, height=180, title=f"per layer: {pick['model']} · {pick['task']} · {pick['length']} "
                                               f"tokens · {pick['ratio']:g}×")
    chart = alt.vconcat(top, per_layer).properties(
        title="Attention recall (solid: the method's selection; dashed: oracle of equal budget) next to accuracy")
    save_chart(chart, html_path, png_path)
