# Inference: one job per (cell, shard). A shard is a contiguous range of sample ids of the cell.


@rulefunc
def _infer_inputs(w):
    inputs = {"data": STUDY.data_path(w.model, w.task, w.length), "model": STUDY.model_dir(w.model)}
    calibration = STUDY.calibration_path(w.model, w.length, w.method, w.ratio)
    if calibration:  # calibrated Vertical-Slash / FlexPrefill budget (rules/calibrate.smk)
        inputs["calibration"] = calibration
    return inputs


@rulefunc
def _infer_params(w):
    return STUDY.cell_params(w.model, w.task, int(w.length), w.method, w.ratio, int(w.shard))


@rulefunc
def _infer_gpus(w):
    return 1 if STUDY.models[w.model]["device"] == "cuda" else 0


rule infer:
    input:
        unpack(_infer_inputs),
    output:
        PRED,
    params:
        cell=_infer_params,
    log:
        sfc.LOG_INFER,
    threads: 1
    resources:
        gpu=_infer_gpus,
        mem_mb=8000,
        runtime=60,
    shell:
        "{PY} workflow_scripts.infer --cell {params.cell:q} --data {input.data:q} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"
