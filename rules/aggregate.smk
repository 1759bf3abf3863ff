# DuckDB aggregation of every per-cell score file of the current study into one database + parquet tables.


rule aggregate:
    input:
        STUDY.score_paths(),
    output:
        db=AGG_DB,
        samples=AGG_SAMPLES,
        summary=AGG_SUMMARY,
    log:
        "results/logs/aggregate.log",
    resources:
        mem_mb=4000,
        runtime=30,
    run:
        from workflow_scripts.aggregate import aggregate

        logged(log[0], aggregate, list(input), output.db, output.samples, output.summary)
