"""Altair charts from the aggregated tables, saved as offline HTML (inline Vega) and PNG (vl-convert)."""

from __future__ import annotations


def save_chart(chart, html_path: str, png_path: str | None = None) -> None:
    from .io import atomic_path

    with atomic_path(html_path) as tmp:
        chart.save(str(tmp), format="html", inline=True)
    if png_path:
        with atomic_path(png_path) as tmp:
            chart.save(str(tmp), format="png", scale_factor=2)


def score_vs_ratio(summary_path: str, html_path: str, png_path: str) -> None:
    import altair as alt
    import pandas as pd

    df = pd.read_parquet(summary_path)
    df["lo"] = (df["mean"] - df["se"]).clip(lower=0)
    df["hi"] = (df["mean"] + df["se"]).clip(upper=1)
    df["length"] = df["length"].astype(str)
    base = alt.Chart(df).encode(
        x=alt.X("ratio:Q", scale=alt.Scale(type="log"), title="compression ratio (1 / density, log scale)"),
        color=alt.Color("method:N", title="method"),
    )
    lines = base.mark_line(point=True).encode(
        y=alt.Y("mean:Q", scale=alt.Scale(domain=[0, 1]), title="mean score"),
        strokeDash=alt.StrokeDash("model:N", title="model"),
        tooltip=["model", "task", "length", "method", "ratio", "n", alt.Tooltip("mean:Q", format=".3f"),
                 alt.Tooltip("se:Q", format=".3f")],
    )
    bands = base.mark_errorbar().encode(y=alt.Y("lo:Q", title="mean score"), y2="hi:Q")
    chart = (lines + bands).properties(width=220, height=160).facet(
        row=alt.Row("task:N", title="task"), column=alt.Column("length:N", title="prompt length (tokens)"),
    ).properties(title="Score vs compression ratio (mean ± standard error)")
    save_chart(chart, html_path, png_path)
