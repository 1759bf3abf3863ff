# Scores per (model, task, length): the task's metric applied to every prediction of every cell of the group
# (all methods, ratios and shards). Scoring takes seconds, so regrouping keeps the DAG small; a changed cell
# reruns its inference job and this cheap group job.


@rulefunc
def _score_inputs(w):
    return {
        "preds": STUDY.group_pred_paths(w.model, w.task, w.length),
        "data": STUDY.data_path(w.model, w.task, w.length),
    }


rule score:
    input:
        unpack(_score_inputs),
    output:
        SCORE,
    params:
        spec=rulefunc(lambda w: STUDY.score_params(w.task)),
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "{PY} workflow_scripts.score --spec {params.spec:q} --data {input.data:q} --out {output:q} {input.preds:q}"
