# Models the workflow builds itself (`build:` in a model entry). User checkpoints are used in place.

BUILD_TARGETS = STUDY.build_targets()

if BUILD_TARGETS:

    # lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
    rule build_tiny_model:
        output:
            directory("{model_dir}"),
        log:
            "results/logs/build_model/{model_dir}.log",
        wildcard_constraints:
            model_dir="|".join(re.escape(p) for p, b in BUILD_TARGETS.items() if b == "tiny_random"),
        shell:
            "{PY} workflow_scripts.tiny_model {output:q} > {log:q} 2>&1"
