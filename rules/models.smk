# Models the workflow builds itself (`build:` or `gguf:` in a model entry). User checkpoints are used in place.
import json

BUILD_TARGETS = STUDY.build_targets()
TINY_TARGETS = [p for p, b in BUILD_TARGETS.items() if b == "tiny_random"]
GGUF_TARGETS = [p for p, b in BUILD_TARGETS.items() if b == "gguf"]

if TINY_TARGETS:

    # lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
    rule build_tiny_model:
        output:
            directory("{model_dir}"),
        log:
            "results/logs/build_model/{model_dir}.log",
        wildcard_constraints:
            model_dir="|".join(re.escape(p) for p in TINY_TARGETS),
        shell:
            "{PY} workflow_scripts.tiny_model {output:q} > {log:q} 2>&1"


if GGUF_TARGETS:

    # lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
    rule convert_gguf:
        output:
            directory("{model_dir}"),
        log:
            "results/logs/convert_gguf/{model_dir}.log",
        wildcard_constraints:
            model_dir="|".join(re.escape(p) for p in GGUF_TARGETS),
        params:
            spec=lambda w: json.dumps(STUDY.gguf_spec(w.model_dir)),
        shell:
            "{PY} workflow_scripts.gguf_model {output:q} --spec {params.spec:q} > {log:q} 2>&1"
