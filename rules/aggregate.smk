# DuckDB aggregation of every per-cell score file of the current study into the samples and summary tables (parquet);
# the study's database file, with these and the analysis tables, is written after the analyses (rules/database.smk).

# Every cell's prediction and score file is a target of `all` (Snakefile): Snakemake rebuilds a missing file only
# when something that needs to run asks for it, so without this a prediction or score removed by hand, by a failed
# --forcerun or by a killed group job is never rebuilt while the aggregate downstream exists ("Nothing to be done",
# stale summary). As targets, a missing one is rebuilt, and its score, the aggregate and the charts after it.
CELL_RESULTS = [p for c in STUDY.cells() for p in STUDY.pred_paths(c)] + STUDY.score_paths()


rule aggregate:
    input:
        STUDY.score_paths(),
    output:
        samples=AGG_SAMPLES,
        summary=AGG_SUMMARY,
    log:
        "results/logs/aggregate.log",
    resources:
        mem_mb=4000,
        runtime=30,
    run:
        from workflow_scripts.aggregate import aggregate

        logged(log[0], aggregate, list(input), output.samples, output.summary)
