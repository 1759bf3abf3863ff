# Charts from the aggregated tables: Altair, saved as offline HTML (inline Vega) and PNG.

CHARTS = expand("results/charts/score_vs_ratio.{ext}", ext=["html", "png"])


rule chart_score_vs_ratio:
    input:
        AGG_SUMMARY,
    output:
        html="results/charts/score_vs_ratio.html",
        png="results/charts/score_vs_ratio.png",
    run:
        from workflow_scripts.charts import score_vs_ratio

        score_vs_ratio(input[0], output.html, output.png)
