# The study's DuckDB database: every table of the study in one file, written after the analyses. The aggregate
# (rules/aggregate.smk) and the analyses write parquet; this rule gathers those files, so nothing reads and writes
# the same file (no cycle) and a rerun rewrites the whole database atomically from them (nothing appended).
# Each table and column carries its description from workflow_scripts/schemas/tables.yaml (an input: an edited
# description rebuilds the database).

from workflow_scripts.aggregate import TABLE_DOCS

DB_TABLES = {
    "samples": AGG_SAMPLES,
    "summary": AGG_SUMMARY,
    "models": "results/analysis/models.parquet",
    "isocost_points": "results/analysis/isocost_points.parquet",
    "max_ratio": "results/analysis/max_ratio.parquet",
    "max_ratio_detail": "results/analysis/max_ratio_detail.parquet",
    "scaling_table3": "results/analysis/scaling_table3.parquet",
    "scaling_table4": "results/analysis/scaling_table4.parquet",
    "scaling_table7": "results/analysis/scaling_table7.parquet",
    "relative_error": "results/analysis/relative_error.parquet",
    "data_card": [p.removesuffix(".md") + ".parquet" for p in DATA_CARDS],
}
if config.get("recall"):
    DB_TABLES["recall"] = "results/analysis/recall.parquet"
    DB_TABLES["recall_by_layer"] = "results/analysis/recall_by_layer.parquet"


rule database:
    input:
        **DB_TABLES,
        docs=TABLE_DOCS,
    output:
        AGG_DB,
    log:
        "results/logs/database.log",
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        tables=DB_TABLES,
    run:
        from workflow_scripts.aggregate import write_database

        logged(log[0], write_database, params.tables, output[0])
