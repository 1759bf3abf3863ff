# Config validation, the study grid and wildcard constraints. Runs when the Snakefile loads, before any job.
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [workflow.basedir, os.environ.get("PYTHONPATH", "")] if p
)

from workflow_scripts import config as sfc  # noqa: E402
from workflow_scripts import snakemake_speedups  # noqa: E402

# Drop-in replacements for Snakemake internals that repeat work per job (group readiness and checks, resource
# evaluation, shell commands, garbage collection): the same jobs, groups and resources, a dry run of a 6,000-job grid
# in about half the time (see the module; SFW_SNAKEMAKE_SPEEDUPS=0 turns them off).
snakemake_speedups.apply()

# Before the schema: duplicate keys and alias bombs in the study files; --config values read as YAML; the size.
_errors = [e for f in workflow.configfiles for e in sfc.yaml_file_errors(f)]
if not _errors:
    sfc.coerce_overrides(config, dict(workflow.config_settings.config))
_errors = _errors or [e for e in [sfc.config_size_error(config)] if e] or sfc.schema_errors(config)
if _errors:
    raise WorkflowError("Invalid configuration:\n  " + "\n  ".join(_errors))
validate(config, sfc.SCHEMA_PATH)  # fills schema defaults
try:
    STUDY = sfc.Study(config)
except sfc.ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None

# The interpreter, quoted for the shell: a venv under a path with a space (or any shell syntax) must work as is.
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
