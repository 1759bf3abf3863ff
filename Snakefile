# sparse-frontier workflow: task data -> inference per cell -> scores -> DuckDB aggregate -> analyses, charts ->
# the study database.
#
#   snakemake                                   # default study (config.yaml), local profile profiles/default
#   snakemake -n                                # dry run: what would run and why
#   snakemake --configfile studies/gpu.yaml     # another study: that file alone defines it
#   snakemake --profile profiles/slurm          # on a SLURM cluster
#
# Every cell (model, task, length, method, ratio) has its own output files and gets all its settings as
# plain `params`, so editing one cell's settings reruns exactly that cell and the aggregation downstream.
# Rules call `python -m workflow_scripts.<step>` through `shell:`; editing library code does NOT mark
# results stale (see README "Reruns after code changes").

from snakemake.utils import min_version

min_version("9.0")


# The study: the --configfile(s) given on the command line, on their own (several are merged in order, --config
# on top); config.yaml, the default study, only when none is given. Nothing of the default study leaks into
# another study: keys a study leaves out take the schema's defaults (workflow_scripts/schemas/config.schema.yaml).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/calibrate.smk"
include: "rules/infer.smk"
include: "rules/score.smk"
include: "rules/aggregate.smk"
include: "rules/charts.smk"
include: "rules/analysis.smk"
include: "rules/database.smk"
include: "rules/train.smk"


# Cheap post-processing runs inside the main Snakemake process, never as cluster jobs.
localrules:
    all,
    aggregate,
    database,
    chart_score_vs_ratio,
    model_info,
    isocost,
    chart_iso,
    significance,
    chart_max_ratio,
    scaling,
    relative_error,
    chart_relative_error,
    recall,
    chart_recall,
    data_card,


rule all:
    default_target: True
    input:
        AGG_DB,
        AGG_SUMMARY,
        CELL_RESULTS,
        CHARTS,
        ANALYSIS_CHARTS,
        ANALYSIS_TABLES,
        DATA_CARDS,
