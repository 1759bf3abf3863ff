# Scores per (model, task, length): the task's metric applied to every prediction of every cell of the group
# (all methods, ratios and shards). Scoring takes seconds, so regrouping keeps the DAG small; a changed cell
# reruns its inference job and this cheap group job.
#
# Every group has the same methods, ratios and shards, so the prediction files are wildcard patterns rather than
# an input function (Snakemake evaluates an input function once per job: 10,000s of calls in a large dry run);
# so is the task data when all models share it (one tokenizer and prompt mode), else a function picks it.

_SCORE_DATA = STUDY.shared_data_pattern()


# lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
rule score:
    input:
        preds=STUDY.group_pred_patterns(),
        data=_SCORE_DATA or _score_data,
    output:
        SCORE,
    log:
        sfc.LOG_SCORE,
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        spec=rulefunc(lambda w: STUDY.score_params(w.task)),
    shell:
        "{PY} workflow_scripts.score --spec {params.spec:q} --data {input.data:q} --out {output:q} {input.preds:q}"
        " > {log:q} 2>&1"
