# Per-cell scores: the task's metric applied to every prediction of the cell (all shards).


@rulefunc
def _score_inputs(w):
    return {
        "preds": STUDY.pred_paths(sfc.Cell(w.model, w.task, int(w.length), w.method, w.ratio)),
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
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY} workflow_scripts.score --spec {params.spec:q} --data {input.data:q} --out {output:q} {input.preds:q}"
