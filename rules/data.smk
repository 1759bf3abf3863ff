# Task samples per (tokenizer, task, length, prompt mode): generated once, shared by every model that uses
# the tokenizer and by every method and ratio.


@rulefunc
def _tokenizer_input(wildcards):
    model = next(n for n in STUDY.models if STUDY.tokenizer_key(n) == wildcards.tokenizer)
    return STUDY.data_tokenizer_path(model)


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


# Data card per tokenizer (paper Table 2): question + instruction tokens per task, from the generated samples.
DATA_CARDS = expand("results/data_cards/tokenizer={tok}.md", tok=sorted(set(STUDY.tokenizer_keys.values())))


@rulefunc
def _data_card_inputs(wildcards):
    models = [m for m in STUDY.models if STUDY.tokenizer_key(m) == wildcards.tokenizer]
    return sorted({STUDY.data_path(m, t, L) for m in models for t in config["tasks"] for L in config["lengths"]})


rule data_card:
    input:
        _data_card_inputs,
    output:
        md="results/data_cards/tokenizer={tokenizer}.md",
        parquet="results/data_cards/tokenizer={tokenizer}.parquet",
    params:
        tokenizer=rulefunc(_tokenizer_input),
    run:
        from workflow_scripts.data_card import data_card

        data_card(list(input), params.tokenizer, output.md, output.parquet)
