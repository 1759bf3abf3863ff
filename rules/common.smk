# Config validation, the study grid, wildcard constraints, and the input / params / resource functions of the
# rules (kept here, apart from the rules, so each rules/*.smk file reads as its rules). Runs when the Snakefile
# loads, before any job.
#
# `snakemake --lint` findings that stay, each on purpose (tests/test_lint_format.py allows only these):
# - "Specify a conda environment or container for each rule": the rules that run a process run this workflow's
#   own Python environment (requirements.txt; PY below is its interpreter), the one that runs Snakemake, so that
#   a job and the DAG it was planned in see the same code and package versions. No conda/container is offered.
# - "Environment variable PYTHONPATH used but not asserted with envvars": set here, not read: the jobs' processes
#   import workflow_scripts from the workflow's folder whatever --directory is. `envvars:` would instead require
#   the user to set it.
# - "Shell command directly uses variable PY": the interpreter string (owned by issue 23).
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
# lint: PYTHONPATH is set for the jobs, not read (see above)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [workflow.basedir, os.environ.get("PYTHONPATH", "")] if p)

from workflow_scripts import config as sfc  # noqa: E402
from workflow_scripts import snakemake_fixes, snakemake_speedups  # noqa: E402
from workflow_scripts.io import logged  # noqa: E402  (the log of each rule that runs in-process)

# Drop-in replacements for Snakemake internals that repeat work per job (group readiness and checks, resource
# evaluation, shell commands, garbage collection): the same jobs, groups and resources, a dry run of the paper grid
# with 1.4-1.6x less CPU, of 6,000-job grids 2-2.6x (docs/snakemake_patches.md; SFW_SNAKEMAKE_SPEEDUPS=0 turns them
# off). Only for the Snakemake code they were checked against: on another version, a warning names those skipped.
_skipped = [name for name, ok in snakemake_speedups.apply().items() if not ok]
if _skipped:
    from snakemake import __version__ as _sm_version
    from snakemake.logging import logger

    logger.warning(
        f"Snakemake {_sm_version}: running without the patches {', '.join(_skipped)} of"
        " workflow_scripts/snakemake_speedups.py (checked against Snakemake 9.27.1); dry runs of large grids are"
        " slower (docs/snakemake_patches.md)"
    )

# A Snakemake planning defect fixed (workflow_scripts/snakemake_fixes.py): without it a cell behind an `ancient` input
# (its calibration file) whose producer has to run is never checked, and a missing cell is not rebuilt.
if not snakemake_fixes.apply():
    from snakemake.logging import logger

    logger.warning(
        "snakemake_fixes: this Snakemake's DAG.update_needrun is not the one the fix was written for; a study that"
        " adds a ratio to a calibrated method may need a second `snakemake` run to plan the new cells"
    )

# Before the schema: duplicate keys and alias bombs in the study files; --config values read as YAML; the size.
_errors = [e for f in workflow.configfiles for e in sfc.yaml_file_errors(f)]
if not _errors:
    sfc.coerce_overrides(config, dict(workflow.config_settings.config))
_errors = _errors or [e for e in [sfc.config_size_error(config)] if e] or sfc.schema_errors(config)
if _errors:
    raise WorkflowError("Invalid configuration:\n  " + "\n  ".join(_errors))
validate(config, sfc.SCHEMA_PATH)  # fills schema defaults
try:
    sfc.load_method_modules(config)  # methods registered outside sparse_kernels (docs/extending.md)
    STUDY = sfc.Study(config)
except sfc.ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None

# The interpreter, quoted for the shell: a venv under a path with a space (or any shell syntax) must work as is.
# lint: shell commands use this global on purpose (snakemake --lint flags it): jobs run in the interpreter of the
# Snakemake that plans them; as a rule's params it would make every change of environment path a rerun trigger.
PY = f"{shlex.quote(sys.executable)} -m"


def rulefunc(func):
    """Mark an input/params/resources function for Snakemake with its signature precomputed.

    Snakemake inspects every such function once per job (inspect.signature); on a 10,000-job grid that was a
    third of the dry-run time. `overwrite_function_params` is Snakemake's own hook for giving the parameters.
    """
    import inspect

    from snakemake.common import overwrite_function_params

    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


DATA, PRED, SCORE = sfc.DATA, sfc.PRED, sfc.SCORE
AGG_DB, AGG_SAMPLES, AGG_SUMMARY = sfc.AGG_DB, sfc.AGG_SAMPLES, sfc.AGG_SUMMARY


wildcard_constraints:
    **sfc.wildcard_patterns(STUDY),


# ------------------------------------------------------------------------------------------ rules/data.smk
@rulefunc
def _tokenizer_input(wildcards):
    model = next(n for n in STUDY.models if STUDY.tokenizer_key(n) == wildcards.tokenizer)
    return STUDY.data_tokenizer_path(model)


@rulefunc
def _data_card_inputs(wildcards):
    models = [m for m in STUDY.models if STUDY.tokenizer_key(m) == wildcards.tokenizer]
    return sorted({STUDY.data_path(m, t, L) for m in models for t in config["tasks"] for L in config["lengths"]})


# ------------------------------------------------------------------------------------------ rules/calibrate.smk
@rulefunc
def _calibrate_inputs(w):
    return {
        "data": [STUDY.calibration_data_path(w.model, t, w.length) for t in STUDY.cfg["tasks"]],
        "model": STUDY.model_dir(w.model),
    }


@rulefunc
def _calibrate_gpus(w):
    return 1 if STUDY.models[w.model]["device"] == "cuda" else 0


# ------------------------------------------------------------------------------------------ rules/infer.smk
# LOADS, the plan of model loads, is made in rules/infer.smk; these run only once the DAG is built.
def _cell_server(w):
    return LOADS.server(w.model, w.task, w.length, w.method, w.ratio, w.shard)


@rulefunc
def _infer_inputs(w):
    inputs = {
        "data": STUDY.data_path(w.model, w.task, w.length),
        "model": STUDY.model_dir(w.model),
        "server": service(ancient(LOADS.address(_cell_server(w)))),
    }
    calibration = STUDY.calibration_path(w.model, w.length, w.method, w.ratio)
    if calibration:  # calibrated Vertical-Slash / FlexPrefill budget (rules/calibrate.smk)
        # `ancient`: the file holds the budgets of every ratio of the method, so a study that adds a ratio rewrites
        # it (same budgets for the old ratios); what the cell's budget depends on is in its params instead
        # (calibration_identity), so a changed calibration setting still reruns the cell
        inputs["calibration"] = ancient(calibration)
    return inputs


@rulefunc
def _infer_params(w):
    return STUDY.cell_params(w.model, w.task, int(w.length), w.method, w.ratio, int(w.shard))


@rulefunc
def _infer_group(w):
    return LOADS.loads[_cell_server(w)].group


@rulefunc
def _server_gpus(w):
    return LOADS.loads[w.server].gpus


@rulefunc
def _server_runtime(w, attempt):
    return LOADS.runtime(w.server, attempt)


@rulefunc
def _server_mem_mb(w, attempt):
    return LOADS.mem_mb(w.server, attempt)


@rulefunc
def _server_group(w):
    return LOADS.loads[w.server].group


@rulefunc
def _server_threads(w):
    # Local runs: the cores shared among the loads (at least one each), so that several loads run at once when
    # there are more loads than cores (the torch threads of a server: its cells run on them); the local executor's
    # thread pool is widened to hold every cell of the loads that can run at once (rules/infer.smk). Cluster runs:
    # one group per job; GPU jobs get their CPUs from cpus_per_gpu (profiles/slurm).
    return LOADS.local_threads(workflow.cores) if workflow.local_exec else 1


# ------------------------------------------------------------------------------------------ rules/score.smk
@rulefunc
def _score_data(w):
    return STUDY.data_path(w.model, w.task, w.length)
