# Per-cell scores: the task's metric applied to every prediction of the cell (all shards).


rule score:
    input:
        preds=lambda w: STUDY.pred_paths(sfc.Cell(w.model, w.task, int(w.length), w.method, w.ratio)),
        data=lambda w: STUDY.data_path(w.model, w.task, w.length),
    output:
        SCORE,
    params:
        spec=lambda w: STUDY.score_params(w.task),
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY} workflow_scripts.score --spec {params.spec:q} --data {input.data:q} --out {output:q} {input.preds:q}"
