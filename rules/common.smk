# Config validation, the study grid and wildcard constraints. Runs when the Snakefile loads, before any job.
import os
import re
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [workflow.basedir, os.environ.get("PYTHONPATH", "")] if p
)

from workflow_scripts import config as sfc  # noqa: E402

validate(config, sfc.SCHEMA_PATH)
try:
    STUDY = sfc.Study(config)
except sfc.ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None

PY = f"{sys.executable} -m"
DATA, PRED, SCORE = sfc.DATA, sfc.PRED, sfc.SCORE
AGG_DB, AGG_SAMPLES, AGG_SUMMARY = sfc.AGG_DB, sfc.AGG_SAMPLES, sfc.AGG_SUMMARY


wildcard_constraints:
    **sfc.wildcard_patterns(STUDY),
