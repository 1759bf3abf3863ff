"""A fix for a Snakemake planning defect this workflow depends on (import-light; applied by rules/common.smk).

The defect (Snakemake 9.27.1, ``DAG.update_needrun``): jobs downstream of a job that must run are *masked*, i.e.
not checked for their own reasons to run, on the assumption that the breadth-first pass that follows marks them
anyway. That pass deliberately skips a dependent whose files from the running job are all ``ancient`` and exist.
A dependent reached only through such edges is therefore never checked at all: its missing output is not rebuilt.
Here that is every inference cell that reads its calibration file (``ancient``: the file holds the budgets of
all ratios of a method and is rewritten when a study adds one): adding a ratio reran the calibration job but
planned no cell of the new ratio ("Nothing to be done" after it).

The fix masks only through edges that are not all-ancient, so the jobs behind ancient edges get their own check.
It replaces ``DAG.update_needrun`` with its own source, one line changed, only when that source is the one it was
written against (:data:`FINGERPRINT`); otherwise :func:`apply` returns False and changes nothing (the rule file
then warns). tests/test_hf_workflow.py checks the property (a new ratio plans its cell, old cells stay).
"""

from __future__ import annotations

import inspect
import textwrap
from collections import deque

FINGERPRINT = "50b034b3523e04fe8a72b0afd4ecc9d749ff4f21"   # SHA-1 of DAG.update_needrun's source (9.27.1)
OLD = "masked.update(self.bfs(self.depending, job))"
NEW = "masked.update(_sfw_mask_downstream(self, job))"


def _sfw_mask_downstream(dag, job):
    """Jobs downstream of ``job`` through edges that carry at least one file that is not ancient."""
    queue, seen = deque([job]), {job}
    while queue:
        j = queue.popleft()
        yield j
        for dep, files in dag.depending[j].items():
            if dep not in seen and not all(f.is_ancient for f in files):
                seen.add(dep)
                queue.append(dep)


def apply() -> bool:
    """Install the fix; False (nothing changed) on a Snakemake whose ``update_needrun`` differs."""
    import snakemake.dag as dag_module

    func = dag_module.DAG.update_needrun
    if getattr(func, "_sfw_fixed", False):
        return True
    from .snakemake_speedups import fingerprint

    src = inspect.getsource(func)
    if fingerprint(func) != FINGERPRINT or src.count(OLD) != 1:
        return False
    ns = dict(vars(dag_module))
    ns["_sfw_mask_downstream"] = _sfw_mask_downstream
    exec(compile(textwrap.dedent(src).replace(OLD, NEW), dag_module.__file__, "exec"), ns)
    fixed = ns["update_needrun"]
    fixed._sfw_fixed = True
    fixed.__doc__ = func.__doc__
    dag_module.DAG.update_needrun = fixed
    return True
