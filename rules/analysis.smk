# The paper's analyses as rules: cost model, isoFLOPS / isoCost / isoTime Pareto charts, maximum compression
# with statistically guaranteed retention, scaling-law fits, sequence-length analysis. Each writes parquet;
# charts are Altair (offline HTML + PNG) and go into `snakemake --report`.

ANALYSIS = "results/analysis"
CHART = "results/charts"
ISO_KINDS = ["isoflops", "isocost", "isotime"]

ANALYSIS_CHARTS = expand(CHART + "/{name}.png", name=ISO_KINDS + ["max_ratio", "relative_error"])
ANALYSIS_TABLES = [ANALYSIS + "/scaling.md", ANALYSIS + "/max_ratio_detail.parquet"]
if config.get("recall"):  # attention recall (study key `recall: true`)
    ANALYSIS_CHARTS = ANALYSIS_CHARTS + [CHART + "/recall.png"]
    ANALYSIS_TABLES = ANALYSIS_TABLES + [ANALYSIS + "/recall.parquet"]


rule model_info:
    input:
        [STUDY.model_dir(m) for m in STUDY.models],
    output:
        ANALYSIS + "/models.parquet",
    params:
        models={m: STUDY.model_dir(m) for m in STUDY.models},
    run:
        from workflow_scripts.analyze import model_table

        model_table(params.models, output[0])


rule isocost:
    input:
        summary=AGG_SUMMARY,
        models=ANALYSIS + "/models.parquet",
    output:
        ANALYSIS + "/isocost_points.parquet",
    params:
        analysis=config.get("analysis", {}),
    run:
        from workflow_scripts.analyze import isocost

        isocost(input.summary, input.models, {"analysis": params.analysis}, output[0])


rule chart_iso:
    input:
        ANALYSIS + "/isocost_points.parquet",
    output:
        html=CHART + "/{kind}.html",
        png=report(CHART + "/{kind}.png", caption="report/iso.rst", category="1. Pareto frontiers",
                   labels={"chart": "{kind}"}),
    wildcard_constraints:
        kind="|".join(ISO_KINDS),
    run:
        from workflow_scripts.charts import iso_chart

        iso_chart(input[0], wildcards.kind, output.html, output.png)


rule significance:
    input:
        AGG_SAMPLES,
    output:
        detail=ANALYSIS + "/max_ratio_detail.parquet",
        summary=ANALYSIS + "/max_ratio.parquet",
    params:
        analysis=config.get("analysis", {}),
    run:
        from workflow_scripts.analyze import significance

        significance(input[0], {"analysis": params.analysis}, output.detail, output.summary)


rule chart_max_ratio:
    input:
        ANALYSIS + "/max_ratio.parquet",
    output:
        html=CHART + "/max_ratio.html",
        png=report(CHART + "/max_ratio.png", caption="report/max_ratio.rst", category="2. Retention",
                   labels={"chart": "max_ratio"}),
    run:
        from workflow_scripts.charts import max_ratio_chart

        max_ratio_chart(input[0], output.html, output.png)


rule scaling:
    input:
        summary=AGG_SUMMARY,
        models=ANALYSIS + "/models.parquet",
    output:
        table3=ANALYSIS + "/scaling_table3.parquet",
        table4=ANALYSIS + "/scaling_table4.parquet",
        table7=ANALYSIS + "/scaling_table7.parquet",
        md=report(ANALYSIS + "/scaling.md", caption="report/scaling.rst", category="3. Scaling laws",
                  labels={"table": "scaling"}),
    run:
        from workflow_scripts.analyze import scaling

        scaling(input.summary, input.models, output.table3, output.table4, output.table7, output.md)


rule relative_error:
    input:
        AGG_SUMMARY,
    output:
        ANALYSIS + "/relative_error.parquet",
    params:
        analysis=config.get("analysis", {}),
    run:
        from workflow_scripts.analyze import relative_error

        relative_error(input[0], {"analysis": params.analysis}, output[0])


rule chart_relative_error:
    input:
        ANALYSIS + "/relative_error.parquet",
    output:
        html=CHART + "/relative_error.html",
        png=report(CHART + "/relative_error.png", caption="report/relative_error.rst",
                   category="4. Sequence length", labels={"chart": "relative_error"}),
    run:
        from workflow_scripts.charts import relative_error_chart

        relative_error_chart(input[0], output.html, output.png)


rule recall:
    input:
        AGG_SAMPLES,
    output:
        cells=ANALYSIS + "/recall.parquet",
        layers=ANALYSIS + "/recall_by_layer.parquet",
    run:
        from workflow_scripts.analyze import recall

        recall(input[0], output.cells, output.layers)


rule chart_recall:
    input:
        cells=ANALYSIS + "/recall.parquet",
        layers=ANALYSIS + "/recall_by_layer.parquet",
    output:
        html=CHART + "/recall.html",
        png=report(
            CHART + "/recall.png",
            caption="report/recall.rst",
            category="6. Attention recall",
            labels={"chart": "recall"},
        ),
    params:
        cell=config.get("analysis", {}).get("recall_cell"),
    run:
        from workflow_scripts.charts import recall_chart

        recall_chart(
            input.cells, input.layers, output.html, output.png, params.cell
        )
