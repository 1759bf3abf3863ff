# Task samples per (tokenizer, task, length, prompt mode): generated once, shared by every model that uses
# the tokenizer and by every method and ratio.


@rulefunc
def _tokenizer_input(wildcards):
    model = next(n for n in STUDY.models if STUDY.tokenizer_key(n) == wildcards.tokenizer)
    return STUDY.tokenizer_path(model)


rule task_data:
    input:
        tokenizer=_tokenizer_input,
    output:
        DATA,
    params:
        spec=rulefunc(lambda w: STUDY.data_params(w.tokenizer, w.task, int(w.length), w.mode)),
    log:
        sfc.LOG_DATA,
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{PY} workflow_scripts.make_data --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"
