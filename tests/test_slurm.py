"""The SLURM profile on a live single-node SLURM cluster (.ci/slurm/cluster.sh; CI starts it in .ci/run).

Runs a small study through ``snakemake --profile <profiles/slurm with the test node's site settings>``:

1. every job is a real SLURM job (sbatch job ids in Snakemake's output, COMPLETED in ``squeue --states=all``,
   one kept SLURM log per job); inference runs as one SLURM job per model load (a model-server job and the
   cells it serves, one Snakemake group job: ``rules/infer.smk``), so 2 loads serve the 4 cell shards; the
   per-cell predictions and the aggregated summary equal a local run of the same study (timings excepted);
2. one model's dtype changes: only its load (its 2 inference cells), its score group and the aggregation are
   submitted. One of its cells fails once (``SFW_FAULT=fail_once:...``, which reaches the job through
   ``sbatch --export=ALL``): SLURM shows the load's job FAILED with the attempt-1 memory and its resubmission
   COMPLETED with the attempt-2 memory (``mem_mb: "<n> * attempt"`` in the profile), where the cell that had
   finished is restored from the server's salvage instead of recomputed; afterwards nothing is left to do;
3. alongside step 2, in its own directory: a ``device: cuda`` model's load is submitted with the profile's GPU
   request (``--gpus=1`` and ``--cpus-per-gpu``; the test node advertises one fake GPU, see
   .ci/slurm/cluster.sh): SLURM schedules it on the GPU and its cell fails there for want of CUDA, as it should
   on a CPU machine, with the server's traceback in the cell's log.

Evidence lines (job ids, states, memory per attempt, GPU TRES) are printed with a ``[slurm]`` prefix.
Skips with the reason when SLURM or the local test cluster is not available; fails instead when
SFW_REQUIRE_SLURM=1 (CI sets it once SLURM is installed).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from workflow_scripts.io import read_metadata

ROOT = Path(__file__).resolve().parent.parent
SITE_PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
CLUSTER_BASE = Path(os.environ.get("SFW_SLURM_BASE", "/var/tmp/sfw-slurm"))

PRED = "results/predictions/model={m}/task=ruler_niah/length=1024/method=dense/ratio=1/shard={s}/part.parquet"
INFER_LOG = "results/logs/infer/model={m}/task=ruler_niah/length=1024/method=dense/ratio=1/shard={s}.log"
SERVER_LOG = "results/logs/model_server/model={m}.log"
DATA = "results/data/tokenizer=tiny/task=ruler_niah/length=1024/mode=direct/samples.parquet"
SUMMARY = "results/aggregate/summary.parquet"
PRED_COLUMNS = ["sample_id", "prediction", "input_tokens", "output_tokens", "stop_reason", "sparsity", "density"]
TIMING_COLUMNS = {"mean_prefill_ms", "mean_decode_ms_per_token", "max_peak_mem_mb"}
# test node memory per job (MB at attempt 1); the site profile's values are for real cluster nodes. A load's SLURM
# job requests its model server's memory (the cells it serves request none).
TEST_MEM = {"model_server": 1000}
TEST_MEM_DEFAULT = 500
SUBMITTED = re.compile(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
# the comment of a load's SLURM job: its Snakemake group (rules/infer.smk: load_<load id>) and the group's rules
LOAD = "load_model-{m}_infer_model_server"
SQUEUE_FIELDS = ["JobID", "State", "MinMemory", "tres-per-job", "cpus-per-tres", "Comment"]


def study(model: str) -> dict:
    """The local end-to-end test's study (tests/test_workflow.py): 2 models x 1 length x dense, 2 shards each."""
    entry = {"path": model, "dtype": "float32", "device": "cpu"}
    return {"seed": 43, "samples": 4, "shard_size": 2, "prompt_mode": "direct", "max_new_tokens": 4,
            "models": {"tiny-a": dict(entry), "tiny-b": dict(entry)},
            "tasks": ["ruler_niah"], "lengths": [1024], "methods": {"dense": {}}}


# ---------------------------------------------------------------------------------------------- cluster


def _unavailable(reason: str):
    if os.environ.get("SFW_REQUIRE_SLURM") == "1":
        pytest.fail(f"SFW_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    """How to reach the local test cluster: env (SLURM_CONF, PATH with the srun wrapper), partition, node."""
    if os.environ.get("SFW_SLURM_SKIP_REASON"):
        _unavailable(f"SLURM unavailable: {os.environ['SFW_SLURM_SKIP_REASON']}")
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        _unavailable("SLURM is not installed (no sinfo/sbatch on PATH; install: .ci/slurm/install.sh)")
    env_file = CLUSTER_BASE / "env"
    if not env_file.exists():
        _unavailable(f"the local SLURM test cluster is not running (no {env_file}; "
                     "start it: .ci/slurm/cluster.sh start)")
    info = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    env = {"SLURM_CONF": info["SLURM_CONF"],
           "PATH": os.pathsep.join([info["SFW_SLURM_BIN"], os.environ.get("PATH", "")])}
    proc = subprocess.run(["sinfo", "-h", "-p", info["SFW_SLURM_PARTITION"], "-o", "%T"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **env})
    state = proc.stdout.strip()
    if proc.returncode != 0 or not re.match(r"(idle|mix|alloc|completing)", state):
        _unavailable(f"the local SLURM test cluster is not up (sinfo: rc={proc.returncode} {state!r} "
                     f"{proc.stderr.strip()[:300]}); restart: .ci/slurm/cluster.sh stop; .ci/slurm/cluster.sh start")
    return {"env": env, "partition": info["SFW_SLURM_PARTITION"], "cpus": int(info["SFW_SLURM_CPUS"]),
            "gpus": int(info.get("SFW_SLURM_FAKE_GPUS", "0"))}


def squeue(slurm, job_ids) -> dict[str, dict]:
    """State, requested memory, GPU TRES and rule comment of jobs (finished ones stay for MinJobAge=600 s)."""
    fmt = ",".join(f"{f}:|" for f in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:300"
    proc = subprocess.run(["squeue", "--states=all", "-h", "-j", ",".join(job_ids), "-O", fmt],
                          capture_output=True, text=True, timeout=30, env={**os.environ, **slurm["env"]}, check=True)
    jobs = {}
    for line in proc.stdout.splitlines():
        jid, state, mem, tres, cpus_tres, comment = line.split("|", 5)
        jobs[jid.strip()] = {"state": state, "mem": mem, "gpus": tres, "cpus_per_gpu": cpus_tres,
                             "rule": job_key(comment.strip())}
    missing = set(job_ids) - set(jobs)
    assert not missing, f"squeue --states=all does not list jobs {missing}"
    return jobs


def job_key(comment: str) -> str:
    """'rule_score_wildcards_tiny-b_ruler_niah_1024' -> 'score tiny-b_ruler_niah_1024'; a group job's comment
    names its group and rules: 'rule_load_model-tiny-b_infer_model_server' -> 'load_model-tiny-b_infer_model_server'."""
    m = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.+))?", comment)
    assert m, comment
    return f"{m.group(1)} {m.group(2) or ''}".strip()


# ---------------------------------------------------------------------------------------------- profile


def _mem_expr(value, mb: int) -> str:
    assert isinstance(value, str) and re.fullmatch(r"\s*\d+\s*\*\s*attempt\s*", value), \
        f"site profile memory should be attempt-scaled ('<mb> * attempt'), got {value!r}"
    return f"{mb} * attempt"


def make_test_profile(dst: Path, slurm: dict, cpus_per_gpu: int | None = None) -> dict:
    """profiles/slurm/config.yaml with only the site settings replaced: partition, memory and CPUs per GPU
    (the test node is small), and a short first status check."""
    prof = yaml.safe_load(SITE_PROFILE.read_text())
    assert prof["executor"] == "slurm" and prof["retries"] >= 1
    assert prof["slurm-status-command"] in ("squeue", "sacct")
    assert prof["set-resources"]["model_server"].get("cpus_per_gpu"), "GPU jobs should request CPUs per GPU"
    assert prof["set-resources"]["infer"]["slurm_partition"] == prof["set-resources"]["model_server"][
        "slurm_partition"], "a load's cells and its server must name the same partition"
    assert not any("slurm_extra" in r for r in prof["set-resources"].values()), "no --gres/--gpus in slurm_extra"
    prof["default-resources"]["slurm_partition"] = slurm["partition"]
    prof["default-resources"]["mem_mb"] = _mem_expr(prof["default-resources"]["mem_mb"], TEST_MEM_DEFAULT)
    for rule, res in prof["set-resources"].items():
        if "slurm_partition" in res:
            res["slurm_partition"] = slurm["partition"]
        if "mem_mb" in res:
            res["mem_mb"] = _mem_expr(res["mem_mb"], TEST_MEM.get(rule, TEST_MEM_DEFAULT))
        if "cpus_per_gpu" in res:
            res["cpus_per_gpu"] = min(res["cpus_per_gpu"], cpus_per_gpu or slurm["cpus"])
    prof["slurm-init-seconds-before-status-checks"] = 2
    prof["slurm-status-command"] = "squeue"         # the test cluster has no accounting database
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return prof


class SlurmWorkflow:
    """The project's Snakefile through `snakemake --profile <dir>`, started in the working directory as users
    do (the plugin's logs and `sbatch -D` go there); the workflow profile (profiles/default) loads as for users."""

    def __init__(self, workdir: Path, slurm: dict, cpus_per_gpu: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "study.yaml"
        self.profile_dir = self.workdir / "slurm-profile"
        self.slurm = slurm
        self.profile = make_test_profile(self.profile_dir, slurm, cpus_per_gpu)

    def write_config(self, config: dict) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def run(self, *args: str, env: dict | None = None, check: bool = True, timeout: int = 900):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(self.workdir),
               "--configfile", str(self.config_path), "--profile", str(self.profile_dir), *args]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
                              env={**os.environ, **self.slurm["env"], **(env or {})})
        out = proc.stdout + proc.stderr
        (self.workdir / f"snakemake-{time.strftime('%H%M%S')}.log").write_text(out)
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake --profile slurm failed ({proc.returncode}):\n{out[-12000:]}")
        return proc.returncode, out, time.monotonic() - t0

    def planned_jobs(self, *args: str) -> dict[str, int]:
        from conftest import parse_job_stats

        return parse_job_stats(self.run("-n", *args)[1])

    def path(self, rel: str) -> Path:
        return self.workdir / rel


def submitted(output: str) -> list[str]:
    ids = [m.group(1) for m in SUBMITTED.finditer(output)]
    assert ids, f"no SLURM submissions in snakemake's output:\n{output[-4000:]}"
    return ids


def pred_rows(wf, model: str, shard: int) -> list[dict]:
    return pq.read_table(wf.path(PRED.format(m=model, s=shard)), columns=PRED_COLUMNS).to_pylist()


def summary_rows(wf) -> list[dict]:
    rows = pq.read_table(wf.path(SUMMARY)).to_pylist()
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def gpu_request_run(workdir: Path, slurm: dict, tiny_model: Path, done: SlurmWorkflow):
    """A study of one `device: cuda` model, its shard-0 inference cell only, no retries. Task data is copied from
    `done` (no metadata: Snakemake takes it as up to date), so the one SLURM job is the GPU load's job."""
    gpu_wf = SlurmWorkflow(workdir, slurm, cpus_per_gpu=1)   # 1 CPU: leaves the other to the run alongside
    shutil.copytree(done.path("results/data"), gpu_wf.path("results/data"))
    cfg = study(str(tiny_model))
    cfg["models"] = {"tiny-gpu": {"path": str(tiny_model), "dtype": "float32", "device": "cuda"}}
    gpu_wf.write_config(cfg)
    rc, out, secs = gpu_wf.run(PRED.format(m="tiny-gpu", s=0), "--retries", "0", check=False)
    return rc, out, secs, gpu_wf


# ---------------------------------------------------------------------------------------------- the test


def test_study_on_live_slurm_cluster(slurm, tiny_model, workflow, tmp_path, capsys):
    t_start = time.monotonic()

    def say(line: str) -> None:
        with capsys.disabled():
            print(f"[slurm] {line}", flush=True)

    def show(ids: list[str], jobs: dict) -> None:
        for jid in ids:
            j = jobs[jid]
            gpu = f" gpus={j['gpus']} cpus-per-gpu={j['cpus_per_gpu']}" if j["gpus"] not in ("N/A", "") else ""
            say(f"  job {jid:>4}: {j['state']:<9} mem={j['mem']:<6}{gpu} {j['rule']}")

    cfg = study(str(tiny_model))
    targets = [SUMMARY]
    say(f"cluster: partition {slurm['partition']}, {slurm['cpus']} CPUs, {slurm['gpus']} fake GPU(s); "
        f"SLURM_CONF={slurm['env']['SLURM_CONF']}")

    # --- 1. the study through the SLURM profile; the same study locally as the reference --------------------
    # (the local run goes alongside: the SLURM run mostly waits between job status polls)
    workflow.write_config(cfg)
    wf = SlurmWorkflow(tmp_path / "slurm", slurm)
    wf.write_config(cfg)

    def timed_local_run() -> float:
        t0 = time.monotonic()
        workflow.run(*targets, "--cores", "1")
        return time.monotonic() - t0

    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(timed_local_run)
        _, out, secs = wf.run(*targets)
        say(f"local reference run (alongside run 1): {local.result():.0f} s")
    ids = submitted(out)
    jobs = squeue(slurm, ids)
    say(f"run 1 (study: 2 models x 1 length x dense, 2 shards each): {len(ids)} SLURM jobs in {secs:.0f} s")
    show(ids, jobs)
    # aggregation and charts are local rules: they run in the submitting Snakemake, never as SLURM jobs
    # inference: one SLURM job per model load (server + its 2 cell shards), not one per cell
    assert Counter(j["rule"].split()[0] for j in jobs.values()) == Counter(
        {"task_data": 1, LOAD.format(m="tiny-a"): 1, LOAD.format(m="tiny-b"): 1, "score": 2})
    assert wf.path(SUMMARY).exists()
    assert all(j["state"] == "COMPLETED" for j in jobs.values()), jobs
    assert {j["mem"] for j in jobs.values() if j["rule"].startswith("load_")} == {f"{TEST_MEM['model_server']}M"}
    loads = {read_metadata(wf.path(PRED.format(m=m, s=s)))["model_server"]["load_id"]
             for m in ("tiny-a", "tiny-b") for s in (0, 1)}
    assert sum(wf.path(SERVER_LOG.format(m=m)).read_text().count("loaded model ") for m in ("tiny-a", "tiny-b")) \
        == len(loads) == 2
    say(f"model loads: {len(loads)} for 4 cell shards (one SLURM job per load)")
    logs = sorted(wf.path("results/logs/slurm").rglob("*.log"))      # one per job, kept after success
    assert sorted(p.stem for p in logs) == sorted(ids), logs

    assert pq.read_table(wf.path(DATA)).to_pylist() == pq.read_table(workflow.path(DATA)).to_pylist()
    for m in ("tiny-a", "tiny-b"):
        for s in (0, 1):
            rows = pred_rows(wf, m, s)
            assert rows == pred_rows(workflow, m, s), (m, s)
            assert [r["sample_id"] for r in rows] == [2 * s, 2 * s + 1]
    assert summary_rows(wf) == summary_rows(workflow)
    say("predictions (text, token counts, stop reasons of 8 samples) and summary (2 cells) equal the local run")

    # --- 2. one model's dtype changes; one of its jobs fails once and is retried with more memory ----------
    # --- 3. alongside, in its own directory: a CUDA model's inference job requests a GPU through the profile
    untouched = {s: wf.path(PRED.format(m="tiny-a", s=s)).stat().st_mtime_ns for s in (0, 1)}
    changed = copy.deepcopy(cfg)
    changed["models"]["tiny-b"]["dtype"] = "bfloat16"
    wf.write_config(changed)
    fail_shard = PRED.format(m="tiny-b", s=1).rsplit("/", 1)[0]          # .../shard=1
    fault_dir = tmp_path / "faults"
    with ThreadPoolExecutor(1) as pool:
        gpu_run = pool.submit(gpu_request_run, tmp_path / "gpu", slurm, tiny_model, wf) if slurm["gpus"] else None
        _, out, secs = wf.run(*targets, env={"SFW_FAULT": f"fail_once:{fail_shard}",
                                             "SFW_FAULT_DIR": str(fault_dir)})
        gpu_result = gpu_run.result() if gpu_run else None
    ids = submitted(out)
    jobs = squeue(slurm, ids)
    say(f"run 2 (tiny-b dtype float32 -> bfloat16; SFW_FAULT=fail_once on tiny-b shard 1): "
        f"{len(ids)} SLURM jobs in {secs:.0f} s")
    show(ids, jobs)
    failing = LOAD.format(m="tiny-b")     # the load job of tiny-b's cells, one of which fails once
    assert Counter(j["rule"] for j in jobs.values()) == Counter({failing: 2, "score tiny-b_ruler_niah_1024": 1})
    attempts = [jobs[j] for j in ids if jobs[j]["rule"] == failing]
    assert [(a["state"], a["mem"]) for a in attempts] == [
        ("FAILED", f"{TEST_MEM['model_server']}M"), ("COMPLETED", f"{2 * TEST_MEM['model_server']}M")], attempts
    assert all(j["state"] == "COMPLETED" for j in jobs.values() if j["rule"] != failing)
    assert list(fault_dir.glob("fail_once-*")), "the fault fired inside the SLURM job"
    server_log = wf.path(SERVER_LOG.format(m="tiny-b")).read_text()           # attempt 2's
    assert server_log.count("restored from salvage") == 1 and server_log.count("loaded model ") == 1, server_log
    say(f"retry: {failing}: attempt 1 {attempts[0]['state']} with mem={attempts[0]['mem']}, "
        f"attempt 2 {attempts[1]['state']} with mem={attempts[1]['mem']} (shard 0 restored from the server's "
        "salvage, shard 1 computed)")

    assert {s: wf.path(PRED.format(m="tiny-a", s=s)).stat().st_mtime_ns for s in (0, 1)} == untouched
    for s in (0, 1):
        assert read_metadata(wf.path(PRED.format(m="tiny-b", s=s)))["cell"]["dtype"] == "bfloat16"
        assert [r["sample_id"] for r in pred_rows(wf, "tiny-b", s)] == [2 * s, 2 * s + 1]
    assert [r["model"] for r in summary_rows(wf)] == ["tiny-a", "tiny-b"]
    assert wf.planned_jobs(*targets) == {}
    say("after run 2 a dry run through the profile plans nothing")

    # --- 3. the GPU request ---------------------------------------------------------------------------------
    if gpu_result is None:
        say("no GPU on the test node (SFW_SLURM_FAKE_GPUS=0): GPU request not checked")
    else:
        rc, out, secs, gpu_wf = gpu_result
        ids = submitted(out)
        jobs = squeue(slurm, ids)
        say(f"run 3 (alongside run 2; a device: cuda model, --retries 0): {len(ids)} SLURM job in {secs:.0f} s, "
            f"snakemake rc={rc}")
        show(ids, jobs)
        assert rc != 0 and len(ids) == 1
        job = jobs[ids[0]]
        cpus_per_gpu = gpu_wf.profile["set-resources"]["model_server"]["cpus_per_gpu"]
        assert (job["rule"], job["gpus"], job["cpus_per_gpu"], job["state"]) == (
            LOAD.format(m="tiny-gpu"), "gres:gpu:1", f"gres:gpu:{cpus_per_gpu}", "FAILED")
        log = gpu_wf.path(INFER_LOG.format(m="tiny-gpu", s=0)).read_text()
        assert "no CUDA device is available" in log and "cell failed in the model server" in log, log[-2000:]
        say("GPU job: scheduled with gres:gpu:1 and failed inside SLURM with 'no CUDA device is available' "
            "(CPU-only torch), the server's traceback in the cell's log")

    say(f"SLURM test total: {time.monotonic() - t_start:.0f} s")
