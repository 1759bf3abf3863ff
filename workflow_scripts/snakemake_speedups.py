"""Faster Snakemake internals for large grids, same results (import-light; applied by rules/common.smk).

Profiling ``snakemake -n`` on grids of 5,000+ cells (bench/bench_dryrun.py) showed Snakemake itself spending the
time, not this workflow's code (under 1 s), much of it on work it repeats. Each patch below replaces one such spot
with code that gives exactly what the original gives (seconds: bench/bench_dryrun.py's paper-shaped grid, 6,400 to
6,700 jobs, on the 2-core development machine):

* ``group_readiness`` (``DAG._ready``, ``DAG.update_ready``): whether a group job is ready is one predicate of the
  whole group, which Snakemake recomputes for every member that a finished job touches (twice: once more for a
  debug message that is built even when not shown), comparing groups by their job sets each time. With model loads
  as service groups that is O(cells^2) per finished task-data or calibration job: 10 of the 45 s of the dry run
  with GPU models (``--device cuda``: loads of up to 200 cells). Here it is computed once per group and update,
  and groups are compared by identity first (``g is group or g == group`` equals ``g == group``).
* ``group_check`` (``DAG._check_groups``): Snakemake's check that no path leaves a group and re-enters it iterates
  the ``job -> group`` map's values, so it checks every group once per member: 8 s of that dry run. Here: the same
  check, each group once.
* ``resource_signature`` (``Resource.evaluate``): Snakemake calls ``inspect.signature`` on this method for every
  resource of every job (30,000 calls); its parameters never change, so they are given once through
  ``overwrite_function_params``, Snakemake's own hook (rules/common.smk's ``rulefunc`` uses it too): ~1-2 s.
* ``static_resources`` (``Rule.apply_input_function``): a resource given as a value (``mem_mb=0``) goes through
  the machinery for functions of wildcards (a ``Wildcards`` object per call) only for ``Resource.evaluate`` to
  return it unchanged; here it is returned directly: ~1 s.
* ``shellcmd_once`` (``Job.log_info``): every printed job formats its shell command three times, even when it is
  not shown; here once per ``log_info`` call: ~1-2 s.
* ``gc`` (CPython's garbage collector): building the DAG allocates millions of long-lived objects; full
  collections, each time the heap has grown by a quarter (~10 in that dry run), and the one at interpreter exit
  scan all of them, to find a few hundred: 4-6 s. A full collection here follows 1,000 rather than 10 gen1
  collections (young objects are collected as before), and the objects still alive at exit are frozen
  (``gc.freeze``) so that the exit skips that scan; CPython does not promise finalizers of objects alive at exit.

Each patch applies only when the Snakemake code it replaces or relies on is the code it was written against
(SHA-1 of the functions' source, :data:`FINGERPRINTS`); with another Snakemake version the workflow runs
unpatched, only slower, and tests/test_snakemake_speedups.py fails so that the patches get checked again.
``SFW_SNAKEMAKE_SPEEDUPS=0`` turns all of them off (to compare, or to rule them out when debugging).
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import inspect
import os
import threading

# patch -> {Snakemake function it replaces or relies on: SHA-1 of its source} (Snakemake 9.27.1)
FINGERPRINTS = {
    "group_readiness": {"DAG._ready": "eadd6f27845b69f829b9e770ad4e3819d9896223",
                        "DAG.update_ready": "6843390a6ec76666981fd5ceb6c00bdadbeda9e4"},
    "group_check": {"DAG._check_groups": "7e9984989cf7d644197ed2e7cfd22e5564a98589"},
    "resource_signature": {"Resource.evaluate": "64875ceb31b8f6979a018e878f64f8de1bdf63a9",
                           "get_function_params": "7bad8fc8521dc63048665171f0e3ee12dc660607",
                           "get_input_function_aux_params": "fa753359eaccbd7296d147d29fd991b8cdfe7a92"},
    "static_resources": {"Rule.apply_input_function": "59fd7be894a52286c44460beae2f9423c9d0bc9a",
                         "Resource.evaluate": "64875ceb31b8f6979a018e878f64f8de1bdf63a9"},
    "shellcmd_once": {"Job.log_info": "e35654503a2e6609bf99e68728b9612dbed9efff",
                      "Job.shellcmd": "53cbef11b27b0e64568b261a3027ca18aff1ac2e"},
}
GC_FULL_AFTER = 1000   # gen1 collections per full collection (CPython's default: 10)

_applied: dict[str, bool] = {}


def _snakemake():
    """The Snakemake classes and functions the patches touch, by the names used in FINGERPRINTS."""
    import snakemake.api  # noqa: F401  (first: importing snakemake.dag or .workflow alone is a circular import)
    from snakemake.common import get_function_params, get_input_function_aux_params
    from snakemake.dag import DAG
    from snakemake.jobs import Job
    from snakemake.resources import Resource
    from snakemake.rules import Rule

    return {
        "DAG": DAG, "Job": Job, "Resource": Resource, "Rule": Rule,
        "DAG._ready": DAG._ready, "DAG.update_ready": DAG.update_ready, "DAG._check_groups": DAG._check_groups,
        "Resource.evaluate": Resource.evaluate, "get_function_params": get_function_params,
        "get_input_function_aux_params": get_input_function_aux_params,
        "Rule.apply_input_function": Rule.apply_input_function,
        "Job.log_info": Job.log_info, "Job.shellcmd": Job.shellcmd.fget,
    }


def fingerprint(func) -> str:
    return hashlib.sha1(inspect.getsource(func).encode()).hexdigest()


def matching(name: str, sm: dict | None = None) -> bool:
    """Whether the Snakemake functions that patch ``name`` touches are those it was written against."""
    sm = sm or _snakemake()
    return all(fingerprint(sm[f]) == sha for f, sha in FINGERPRINTS[name].items())


# ---------------------------------------------------------------------------------------------- group readiness
def group_ready(dag, group) -> bool:
    """Snakemake's readiness of a group job: each member waits for no job outside its group."""
    n_until_ready, group_of, dependencies = dag._n_until_ready, dag._group.get, dag._dependencies
    for job in group:
        internal = 0
        for dep in dependencies[job]:
            g = group_of(dep)
            if g is group or (g is not None and g == group):
                internal += 1
        if n_until_ready[job] != internal:
            return False
    return True


def ready(self, job):
    """Return whether the given job is ready to execute."""
    group = self._group.get(job, None)
    if group is None:
        return self._n_until_ready[job] == 0
    return group_ready(self, group)


def update_ready(self, jobs=None):
    """Update information whether a job is ready to execute (given jobs must be needrun jobs)."""
    from snakemake.logging import logger

    if jobs is None:
        jobs = self.needrun_jobs()
    memo = {}   # group -> ready; nothing in this call changes what readiness depends on

    def is_ready(job):
        group = self._group.get(job, None)
        if group is None:
            return self._n_until_ready[job] == 0
        if group not in memo:
            memo[group] = group_ready(self, group)
        return memo[group]

    potential_new_ready_jobs = False
    candidate_groups = set()
    for job in jobs:
        if job in self._ready_jobs or job in self._running:
            continue
        job_ready = is_ready(job)
        logger.debug(f"{job.output}: {job_ready} {self._n_until_ready[job]}")
        if not self.finished(job) and job_ready and not job.has_unfinished_queue_input():
            potential_new_ready_jobs = True
            if job.group is None:
                self._ready_jobs.add(job)
            else:
                group = self._group[job]
                if group not in self._running:
                    candidate_groups.add(group)
    self._ready_jobs.update(group for group in candidate_groups if all(is_ready(job) for job in group))
    return potential_new_ready_jobs


# ---------------------------------------------------------------------------------------------- group check
def _patch_group_check(DAG) -> None:
    check = DAG._check_groups

    def _check_groups(self):
        """Snakemake's check of the groups, each group once: it reads only ``self._group.values()`` (and the
        dependencies), so it runs on a job -> group map with one job per group."""
        every = self._group
        one_each = {}
        for job, group in every.items():
            one_each.setdefault(group, job)
        self._group = {job: group for group, job in one_each.items()}
        try:
            check(self)
        finally:
            self._group = every

    DAG._check_groups = _check_groups


# ---------------------------------------------------------------------------------------------- static resources
def _patch_static_resources(Rule, Resource) -> None:
    apply_input_function, evaluate = Rule.apply_input_function, Resource.evaluate

    def apply_input_function_static(self, func, wildcards, *args, **kwargs):
        resource = getattr(func, "__self__", None)
        if type(resource) is Resource and resource._evaluator is None and func.__func__ is evaluate:
            return resource, False    # what Resource.evaluate returns for a value; not an incomplete checkpoint
        return apply_input_function(self, func, wildcards, *args, **kwargs)

    apply_input_function_static.__doc__ = apply_input_function.__doc__
    Rule.apply_input_function = apply_input_function_static


# ---------------------------------------------------------------------------------------------- shell command
_log = threading.local()
_UNSET = object()


def _patch_shellcmd_once(Job) -> None:
    log_info, shellcmd = Job.log_info, Job.shellcmd.fget

    def log_info_once(self, *args, **kwargs):
        outer = getattr(_log, "job", None), getattr(_log, "cmd", _UNSET)
        _log.job, _log.cmd = self, _UNSET
        try:
            return log_info(self, *args, **kwargs)
        finally:
            _log.job, _log.cmd = outer

    def shellcmd_once(self):
        if getattr(_log, "job", None) is not self:
            return shellcmd(self)
        if _log.cmd is _UNSET:
            _log.cmd = shellcmd(self)
        return _log.cmd

    log_info_once.__doc__, shellcmd_once.__doc__ = log_info.__doc__, shellcmd.__doc__
    Job.log_info, Job.shellcmd = log_info_once, property(shellcmd_once)


# ---------------------------------------------------------------------------------------------- apply
def apply() -> dict[str, bool]:
    """Apply every patch whose Snakemake code matches, once per process; returns patch -> applied."""
    if _applied or os.environ.get("SFW_SNAKEMAKE_SPEEDUPS", "1") == "0":
        return dict(_applied)
    from snakemake.common import overwrite_function_params

    sm = _snakemake()
    _applied.update({name: matching(name, sm) for name in FINGERPRINTS})
    DAG, Job, Resource, Rule = sm["DAG"], sm["Job"], sm["Resource"], sm["Rule"]
    if _applied["group_readiness"]:
        DAG._ready, DAG.update_ready = ready, update_ready
    if _applied["group_check"]:
        _patch_group_check(DAG)
    if _applied["resource_signature"]:
        # the bound method's parameters: what inspect.signature gives Snakemake for it
        overwrite_function_params(Resource.evaluate, inspect.signature(Resource("_", 0).evaluate).parameters)
    if _applied["static_resources"]:
        _patch_static_resources(Rule, Resource)
    if _applied["shellcmd_once"]:
        _patch_shellcmd_once(Job)
    g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(g0, g1, max(g2, GC_FULL_AFTER))
    atexit.register(gc.freeze)   # runs before the atexit handlers registered earlier (logging's flush, ...)
    _applied["gc"] = True
    return dict(_applied)
