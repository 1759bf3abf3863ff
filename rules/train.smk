# Retraining the project's reference model family (needs a CUDA GPU; not part of `all`):
#   snakemake train_reference --cores 16 [--profile profiles/slurm]
# The recipe is studies/train_reference.yaml; the result is results/train_reference/models/<size>/ (weights,
# tokenizer, model card). Copy a size to models/ to ship it. See docs/reference_models.md.


rule train_reference:
    input:
        recipe="studies/train_reference.yaml",
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
        "{PY} workflow_scripts.train_reference --config {input.recipe:q} --work results/train_reference"
        " > {log:q} 2>&1"
