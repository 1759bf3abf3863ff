# Charts from the aggregated tables: Altair, saved as offline HTML (inline Vega) and PNG.

CHARTS = expand("results/charts/score_vs_ratio.{ext}", ext=["html", "png"])


rule chart_score_vs_ratio:
    input:
        AGG_SUMMARY,
    output:
        html="results/charts/score_vs_ratio.html",
        png=report(
            "results/charts/score_vs_ratio.png",
            caption="report/score_vs_ratio.rst",
            category="5. Per-task comparison",
            labels={"chart": "score_vs_ratio"},
        ),
    log:
        "results/logs/charts/score_vs_ratio.log",
    run:
        from workflow_scripts.charts import score_vs_ratio

        logged(log[0], score_vs_ratio, input[0], output.html, output.png)
