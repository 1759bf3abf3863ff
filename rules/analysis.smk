# The paper's analyses as rules: cost model, isoFLOPS / isoCost / isoTime Pareto charts, maximum compression
# with statistically guaranteed retention, scaling-law fits, sequence-length analysis. Each writes parquet
# under results/analysis; charts are Altair (offline HTML + PNG under results/charts) and go into
# `snakemake --report`.

ISO_KINDS = ["isoflops", "isocost", "isotime"]

ANALYSIS_CHARTS = expand("results/charts/{name}.png", name=ISO_KINDS + ["max_ratio", "relative_error"])
ANALYSIS_TABLES = ["results/analysis/scaling.md", "results/analysis/max_ratio_detail.parquet"]
if config.get("recall"):  # attention recall (study key `recall: true`)
    ANALYSIS_CHARTS = ANALYSIS_CHARTS + ["results/charts/recall.png"]
    ANALYSIS_TABLES = ANALYSIS_TABLES + ["results/analysis/recall.parquet"]


rule model_info:
    input:
        [STUDY.model_dir(m) for m in STUDY.models],
    output:
        "results/analysis/models.parquet",
    log:
        "results/logs/analysis/model_info.log",
    params:
        models={m: STUDY.model_dir(m) for m in STUDY.models},
    run:
        from workflow_scripts.analyze import model_table

        logged(log[0], model_table, params.models, output[0])


rule isocost:
    input:
        summary=AGG_SUMMARY,
        models="results/analysis/models.parquet",
    output:
        "results/analysis/isocost_points.parquet",
    log:
        "results/logs/analysis/isocost.log",
    params:
        analysis=config.get("analysis", {}),
    run:
        from workflow_scripts.analyze import isocost

        logged(log[0], isocost, input.summary, input.models, {"analysis": params.analysis}, output[0])


rule chart_iso:
    input:
        "results/analysis/isocost_points.parquet",
    output:
        html="results/charts/{kind}.html",
        png=report(
            "results/charts/{kind}.png",
            caption="report/iso.rst",
            category="1. Pareto frontiers",
            labels={"chart": "{kind}"},
        ),
    log:
        "results/logs/charts/{kind}.log",
    wildcard_constraints:
        kind="|".join(ISO_KINDS),
    params:
        runtime=STUDY.runtime_label(),
    run:
        from workflow_scripts.charts import iso_chart

        logged(log[0], iso_chart, input[0], wildcards.kind, output.html, output.png, params.runtime)


rule significance:
    input:
        AGG_SAMPLES,
    output:
        detail="results/analysis/max_ratio_detail.parquet",
        summary="results/analysis/max_ratio.parquet",
    log:
        "results/logs/analysis/significance.log",
    params:
        analysis=config.get("analysis", {}),
    run:
        from workflow_scripts.analyze import significance

        logged(log[0], significance, input[0], {"analysis": params.analysis}, output.detail, output.summary)


rule chart_max_ratio:
    input:
        "results/analysis/max_ratio.parquet",
    output:
        html="results/charts/max_ratio.html",
        png=report(
            "results/charts/max_ratio.png",
            caption="report/max_ratio.rst",
            category="2. Retention",
            labels={"chart": "max_ratio"},
        ),
    log:
        "results/logs/charts/max_ratio.log",
    run:
        from workflow_scripts.charts import max_ratio_chart

        logged(log[0], max_ratio_chart, input[0], output.html, output.png)


rule scaling:
    input:
        summary=AGG_SUMMARY,
        models="results/analysis/models.parquet",
    output:
        table3="results/analysis/scaling_table3.parquet",
        table4="results/analysis/scaling_table4.parquet",
        table7="results/analysis/scaling_table7.parquet",
        md=report(
            "results/analysis/scaling.md",
            caption="report/scaling.rst",
            category="3. Scaling laws",
            labels={"table": "scaling"},
        ),
    log:
        "results/logs/analysis/scaling.log",
    run:
        from workflow_scripts.analyze import scaling

        logged(log[0], scaling, input.summary, input.models, output.table3, output.table4, output.table7, output.md)


rule relative_error:
    input:
        AGG_SUMMARY,
    output:
        "results/analysis/relative_error.parquet",
    log:
        "results/logs/analysis/relative_error.log",
    params:
        analysis=config.get("analysis", {}),
    run:
        from workflow_scripts.analyze import relative_error

        logged(log[0], relative_error, input[0], {"analysis": params.analysis}, output[0])


rule chart_relative_error:
    input:
        "results/analysis/relative_error.parquet",
    output:
        html="results/charts/relative_error.html",
        png=report(
            "results/charts/relative_error.png",
            caption="report/relative_error.rst",
            category="4. Sequence length",
            labels={"chart": "relative_error"},
        ),
    log:
        "results/logs/charts/relative_error.log",
    run:
        from workflow_scripts.charts import relative_error_chart

        logged(log[0], relative_error_chart, input[0], output.html, output.png)


rule recall:
    input:
        AGG_SAMPLES,
    output:
        cells="results/analysis/recall.parquet",
        layers="results/analysis/recall_by_layer.parquet",
    log:
        "results/logs/analysis/recall.log",
    run:
        from workflow_scripts.analyze import recall

        logged(log[0], recall, input[0], output.cells, output.layers)


rule chart_recall:
    input:
        cells="results/analysis/recall.parquet",
        layers="results/analysis/recall_by_layer.parquet",
    output:
        html="results/charts/recall.html",
        png=report(
            "results/charts/recall.png",
            caption="report/recall.rst",
            category="6. Attention recall",
            labels={"chart": "recall"},
        ),
    log:
        "results/logs/charts/recall.log",
    params:
        cell=config.get("analysis", {}).get("recall_cell"),
    run:
        from workflow_scripts.charts import recall_chart

        logged(log[0], recall_chart, input.cells, input.layers, output.html, output.png, params.cell)
