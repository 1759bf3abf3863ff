# Retraining the project's reference model family (needs a CUDA GPU; not part of `all`):
#   snakemake train_reference --cores 16 [--profile profiles/slurm]
# Two stages of 9.1 minutes per size: studies/train_reference.yaml from random weights
# (results/train_reference_stage1/), then studies/train_reference_continue.yaml over it, which continues every size
# from its stage-1 weights (results/train_reference/models/<size>/: weights, tokenizer, model card, recipes).
# Copy a size to models/ to ship it. See docs/reference_models.md.


# lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
rule train_reference_stage1:
    input:
        recipe="studies/train_reference.yaml",
    output:
        tokenizer=directory("results/train_reference_stage1/tokenizer"),
        models=directory("results/train_reference_stage1/models"),
    log:
        "results/logs/train_reference_stage1.log",
    threads: 16
    resources:
        gpu=1,
        mem_mb=64000,
        runtime=60,
    shell:
        "{PY} workflow_scripts.train_reference --config {input.recipe:q} --work results/train_reference_stage1"
        " > {log:q} 2>&1"


# lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
rule train_reference:
    input:
        recipe="studies/train_reference.yaml",
        stage2="studies/train_reference_continue.yaml",
        tokenizer=rules.train_reference_stage1.output.tokenizer,
        models=rules.train_reference_stage1.output.models,
    output:
        directory("results/train_reference/models"),
    log:
        "results/logs/train_reference.log",
    threads: 16
    resources:
        gpu=1,
        mem_mb=64000,
        runtime=60,
    shell:
        "{PY} workflow_scripts.train_reference --config {input.recipe:q} --config {input.stage2:q}"
        " --work results/train_reference > {log:q} 2>&1"
