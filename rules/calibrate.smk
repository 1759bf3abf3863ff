# Automatic budget calibration of Vertical-Slash and FlexPrefill (methods.<name>.calibrate, default true):
# calibration samples (ids offset by 10**6, disjoint from evaluation samples) per (tokenizer, task, length, mode),
# then one job per (model, length, prefill method + hyperparameters): one model load, one pass of estimation
# statistics, and for every prefill ratio the study runs the method at, the budget whose realized density hits
# 1/ratio, all in one JSON. Inference cells of that method read their ratio's budget from it (rules/infer.smk).


rule calibration_data:
    input:
        tokenizer=_tokenizer_input,
    output:
        sfc.CALIB_DATA,
    params:
        spec=rulefunc(lambda w: STUDY.calibration_data_params(w.tokenizer, w.task, int(w.length), w.mode)),
    log:
        sfc.LOG_CALIB_DATA,
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{PY} workflow_scripts.calibrate data --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


@rulefunc
def _calibrate_inputs(w):
    return {
        "data": [STUDY.calibration_data_path(w.model, t, w.length) for t in STUDY.cfg["tasks"]],
        "model": STUDY.model_dir(w.model),
    }


@rulefunc
def _calibrate_gpus(w):
    return 1 if STUDY.models[w.model]["device"] == "cuda" else 0


rule calibrate:
    input:
        unpack(_calibrate_inputs),
    output:
        sfc.CALIB,
    params:
        spec=rulefunc(lambda w: STUDY.calibration_params(w.model, int(w.length), w.method, w.phash)),
    log:
        sfc.LOG_CALIB,
    wildcard_constraints:
        method="|".join(sfc.CALIBRATABLE),
        phash="[0-9a-f]{8}",
    threads: 1
    resources:
        gpu=_calibrate_gpus,
        mem_mb=8000,
        runtime=60,
    shell:
        "{PY} workflow_scripts.calibrate solve --spec {params.spec:q} --out {output:q} {input.data:q}"
        " > {log:q} 2>&1"
