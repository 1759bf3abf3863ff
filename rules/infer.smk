# Inference: one job per (cell, shard). A shard is a contiguous range of sample ids of the cell.


rule infer:
    input:
        data=lambda w: STUDY.data_path(w.model, w.task, w.length),
        model=lambda w: STUDY.model_dir(w.model),
    output:
        PRED,
    params:
        cell=lambda w: STUDY.cell_params(w.model, w.task, int(w.length), w.method, w.ratio, int(w.shard)),
    log:
        sfc.LOG_INFER,
    threads: 1
    resources:
        gpu=lambda w: 1 if STUDY.models[w.model]["device"] == "cuda" else 0,
        mem_mb=lambda w, attempt: 8000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    shell:
        "{PY} workflow_scripts.infer --cell {params.cell:q} --data {input.data:q} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"
