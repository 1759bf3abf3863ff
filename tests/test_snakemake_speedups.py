"""workflow_scripts/snakemake_speedups.py: the patches apply to the pinned Snakemake, and give what Snakemake gives.

1. every patch's Snakemake code is the code it was written against (fails after a Snakemake upgrade: check the
   patches against the new code, then update FINGERPRINTS);
2. group readiness (``DAG._ready``, ``DAG.update_ready``) equals Snakemake's on random job graphs with groups,
   including distinct but equal group objects;
3. the group check finds the same invalid group as Snakemake's, and passes the same valid ones;
4. a dry run of a study with several model loads per model, calibrated methods and shards plans the same jobs,
   groups, resources, reasons and shell commands with and without the patches (SFW_SNAKEMAKE_SPEEDUPS=0), also
   through the SLURM profile.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path

from workflow_scripts import snakemake_speedups as sp

ROOT = Path(__file__).resolve().parent.parent
SM = sp._snakemake()
DAG = SM["DAG"]


def test_patches_match_the_pinned_snakemake():
    assert {name: sp.matching(name, SM) for name in sp.FINGERPRINTS} == dict.fromkeys(sp.FINGERPRINTS, True)


# ---------------------------------------------------------------------------------------------- stub DAGs
class Rule:
    def __init__(self, name):
        self.name, self.lineno, self.snakefile = name, 1, "Snakefile"


class Job:
    def __init__(self, i, group):
        self.i, self.group, self.output, self.rule = i, group, [f"out{i}"], Rule(f"rule{i % 3}")

    def has_unfinished_queue_input(self):
        return False

    def __repr__(self):
        return f"job{self.i}"


class Group:
    """Equality and hash by job set, like snakemake.jobs.GroupJob."""

    def __init__(self, groupid, jobs):
        self.groupid, self.jobs = groupid, frozenset(jobs)

    def __iter__(self):
        return iter(self.jobs)

    def __contains__(self, job):
        return job in self.jobs

    def __hash__(self):
        return hash(self.jobs)

    def __eq__(self, other):
        return isinstance(other, Group) and self.jobs == other.jobs


class StubDAG:
    """The attributes DAG._ready, DAG.update_ready and DAG._check_groups read."""

    _ready = DAG._ready   # Snakemake's, called by Snakemake's update_ready

    def __init__(self, rng: random.Random, n: int = 40):
        groupids = [None, None, "a", "b", "c"]
        self.jobs = [Job(i, rng.choice(groupids)) for i in range(n)]
        members = defaultdict(list)
        for job in self.jobs:
            if job.group:
                members[job.group].append(job)
        groups = {g: Group(g, js) for g, js in members.items()}
        # some members map to a distinct object with the same jobs (== but not `is`)
        self._group = {job: (Group(job.group, members[job.group]) if rng.random() < 0.2 else groups[job.group])
                       for job in self.jobs if job.group}
        self._dependencies = {job: {} for job in self.jobs}
        for i, job in enumerate(self.jobs):      # edges to earlier jobs only: a DAG
            for dep in rng.sample(self.jobs[:i], min(i, rng.randint(0, 4))):
                self._dependencies[job][dep] = set()
        # jobs waiting for their group's jobs only (ready if the whole group is), or for some more
        self._n_until_ready = {job: sum(self._group.get(d) == self._group.get(job) is not None
                                        for d in self._dependencies[job]) + rng.choice([0, 0, 0, 1])
                               for job in self.jobs}
        self._ready_jobs, self._running = set(), set()
        self._finished = set(rng.sample(self.jobs, 3))

    def finished(self, job):
        return job in self._finished

    def needrun_jobs(self):
        return list(self.jobs)


def test_group_readiness_equals_snakemake():
    ready_groups = 0
    for seed in range(60):
        dag = StubDAG(random.Random(seed))
        assert [sp.ready(dag, job) for job in dag.jobs] == [DAG._ready(dag, job) for job in dag.jobs], seed
        for jobs in (random.Random(seed).sample(dag.jobs, 15), None):
            dag._ready_jobs = set()
            theirs = DAG.update_ready(dag, jobs), set(dag._ready_jobs)
            dag._ready_jobs = set()
            ours = sp.update_ready(dag, jobs), set(dag._ready_jobs)
            assert ours == theirs, seed
            ready_groups += sum(isinstance(j, Group) for j in ours[1])
    assert ready_groups > 20     # the graphs do have ready groups


def test_group_check_checks_each_group_once_with_the_same_verdict():
    from snakemake.exceptions import WorkflowError

    class Checked(StubDAG):
        _check_groups = DAG._check_groups

    class Ours(Checked):
        pass

    sp._patch_group_check(Ours)
    for seed in range(30):
        verdicts = []
        for cls in (Checked, Ours):
            dag = cls(random.Random(seed))
            for job, deps in dag._dependencies.items():     # valid groups: no job depends on another group's jobs
                for dep in [d for d in deps if d.group and d.group != job.group]:
                    del deps[dep]
            if seed % 2:                                    # but a path that leaves group "a" and re-enters it
                a = [job for job in dag.jobs if job.group == "a"]
                outside = next(job for job in dag.jobs if job.group is None)
                dag._dependencies[a[-1]][outside] = set()
                dag._dependencies[outside] = {a[0]: set()}
            before = dict(dag._group)
            try:
                dag._check_groups()
                verdicts.append("valid")
            except WorkflowError as e:
                verdicts.append(str(e).split(".")[0])
            assert dag._group == before
        assert verdicts[0] == verdicts[1] == ("valid" if seed % 2 == 0 else "Group a depends on itself"), seed


# ---------------------------------------------------------------------------------------------- dry runs
def unordered(text: str) -> str:
    """``head: a, c, b`` -> ``head: a, b, c`` (also without a head)."""
    head, _, items = text.rpartition(": ")
    return (head + ": " if head else "") + ", ".join(sorted(items.split(", ")))


def canonical_dry_run(text: str):
    """Planned jobs as a multiset of (group id, rule, fields) with the job ids and timestamps left out, file lists
    sorted (Snakemake prints jobs and some file sets in no fixed order)."""
    jobs, group, job = [], None, None
    for line in text.splitlines():
        if m := re.match(r"^\[.*\] Group job (\S+) ", line):
            group, job = m.group(1), None
        elif m := re.match(r"^(\s*)(local)?rule (\S+):$", line):
            job = {"group": group if m.group(1) else "", "rule": m.group(3)}
            jobs.append(job)
        elif job is not None and (m := re.match(r"^\s+(\w[\w ]*): (.*)$", line)) and m.group(1) != "jobid":
            job[m.group(1)] = "; ".join(sorted(unordered(part) for part in m.group(2).split("; ")))
        elif job is not None and (m := re.match(r"^\s*Shell command: (.*)$", line)):
            job["shell"] = m.group(1)
        elif not line.startswith(" "):
            job = None
    return sorted(tuple(sorted(j.items())) for j in jobs)


def test_dry_run_is_the_same_without_the_patches(workflow, tiny_model):
    entry = {"path": str(tiny_model), "dtype": "float32", "device": "cpu"}
    workflow.write_config({
        "seed": 43, "samples": 4, "shard_size": 2, "prompt_mode": "direct", "max_new_tokens": 4,
        "models": {"tiny-a": dict(entry), "tiny-b": {**entry, "device": "cuda"}},
        "tasks": ["ruler_niah", "story_retrieval"], "lengths": [1024, 2048],
        "methods": {"dense": {}, "vertical_slash": {"ratios": [2, 4]}, "snapkv": {"ratios": [2]}},
        "model_server": {"max_cells": 5}})
    for profile in ([], ["--profile", str(ROOT / "profiles" / "slurm"), "--executor", "slurm", "--jobs", "10"]):
        ours = workflow.run("-n", "-p", *profile)
        theirs = workflow.run("-n", "-p", *profile, env={"SFW_SNAKEMAKE_SPEEDUPS": "0"})
        planned = canonical_dry_run(ours.stdout + ours.stderr)
        assert len(planned) > 50 and sum(bool(dict(j)["group"]) for j in planned) > 20
        assert sum("workflow_scripts.server_client" in dict(j).get("shell", "") for j in planned) == 2 * 2 * 2 * 4 * 2
        assert planned == canonical_dry_run(theirs.stdout + theirs.stderr)
