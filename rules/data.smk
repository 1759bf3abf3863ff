# Task samples per (tokenizer, task, length, prompt mode): generated once, shared by every model that uses
# the tokenizer and by every method and ratio.


# lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
rule task_data:
    input:
        tokenizer=_tokenizer_input,
    output:
        DATA,
    log:
        sfc.LOG_DATA,
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=rulefunc(lambda w: STUDY.data_params(w.tokenizer, w.task, int(w.length), w.mode)),
    shell:
        "{PY} workflow_scripts.make_data --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


# Data card per tokenizer (paper Table 2): question + instruction tokens per task, from the generated samples.
DATA_CARDS = expand("results/data_cards/tokenizer={tok}.md", tok=sorted(set(STUDY.tokenizer_keys.values())))


rule data_card:
    input:
        _data_card_inputs,
    output:
        md=report(
            "results/data_cards/tokenizer={tokenizer}.md",
            caption="report/data_card.rst",
            category="0. Study",
            labels={"data card": "{tokenizer}"},
        ),
        parquet="results/data_cards/tokenizer={tokenizer}.parquet",
    log:
        "results/logs/data_card/tokenizer={tokenizer}.log",
    params:
        tokenizer=rulefunc(_tokenizer_input),
    run:
        from workflow_scripts.data_card import data_card

        logged(log[0], data_card, list(input), params.tokenizer, output.md, output.parquet)
