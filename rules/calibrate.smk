# Automatic budget calibration of Vertical-Slash and FlexPrefill (methods.<name>.calibrate, default true):
# calibration samples (ids offset by 10**6, disjoint from evaluation samples) per (tokenizer, task, length, mode),
# then one job per (model, length, prefill method + hyperparameters): one model load, one pass of estimation
# statistics, and for every prefill ratio the study runs the method at, the budget whose realized density hits
# 1/ratio, all in one JSON. Inference cells of that method read their ratio's budget from it (rules/infer.smk).


# lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
rule calibration_data:
    input:
        tokenizer=_tokenizer_input,
    output:
        sfc.CALIB_DATA,
    log:
        sfc.LOG_CALIB_DATA,
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=rulefunc(lambda w: STUDY.calibration_data_params(w.tokenizer, w.task, int(w.length), w.mode)),
    shell:
        "{PY} workflow_scripts.calibrate data --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


# lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
rule calibrate:
    input:
        unpack(_calibrate_inputs),
    output:
        sfc.CALIB,
    log:
        sfc.LOG_CALIB,
    wildcard_constraints:
        method="|".join(sfc.calibratable()),
        phash="[0-9a-f]{8}",
    threads: 1
    resources:
        gpu=_calibrate_gpus,
        mem_mb=8000,
        runtime=60,
    params:
        spec=rulefunc(lambda w: STUDY.calibration_params(w.model, int(w.length), w.method, w.phash)),
    shell:
        "{PY} workflow_scripts.calibrate solve --spec {params.spec:q} --out {output:q} {input.data:q}" " > {log:q} 2>&1"
