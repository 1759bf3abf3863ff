"""Amortised model loading through the real workflow (rules/infer.smk, workflow_scripts/server*.py), and the
GPU-count estimate of models larger than one GPU (workflow_scripts/server_plan.py).

One tiny study (1 model x 1 length x dense + SnapKV + Quest, 2 shards each = 6 cell shards, 1 load group):

1. one model-server job serves every cell: one model load for 6 cells (server log and each parquet's load id),
   and the predictions equal those of the per-cell path (``workflow_scripts.infer.run`` loading the model itself
   for each cell), timings excepted; no process is left behind;
2. regrouping cells (``model_server.group``) is not a rerun trigger;
3. changing one method's setting replans only its 2 cells (+ their server); one of them fails once
   (``SFW_FAULT=fail_once``): the run fails, that cell's log holds the server's traceback, the other cell of the
   group finishes first; the rerun restores the finished cell from the server's salvage (no recompute) and
   computes the failed one, with one model load;
4. a server killed mid-cell (``SFW_FAULT=mid_write``) fails its cells at once with the server's log, no hang, no
   orphan process.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import RUN_COLUMNS
from workflow_scripts.io import read_metadata

ROOT = Path(__file__).resolve().parent.parent
PRED = "results/predictions/model=tiny/task=ruler_niah/length=1024/method={m}/ratio={r}/shard={s}/part.parquet"
LOG = "results/logs/infer/model=tiny/task=ruler_niah/length=1024/method={m}/ratio={r}/shard={s}.log"
SERVER_LOG = "results/logs/model_server/model=tiny.log"
CELLS = [("dense", 1), ("snapkv", 2), ("quest", 2)]
TIMING = RUN_COLUMNS


def study(model: str) -> dict:
    return {"seed": 43, "samples": 4, "shard_size": 2, "prompt_mode": "direct", "max_new_tokens": 4,
            "models": {"tiny": {"path": model, "dtype": "float32", "device": "cpu"}},
            "tasks": ["ruler_niah"], "lengths": [1024],
            "methods": {"dense": {}, "snapkv": {"ratios": [2]}, "quest": {"ratios": [2]}}}


def targets(cells=CELLS) -> list[str]:
    return [PRED.format(m=m, r=r, s=s) for m, r in cells for s in (0, 1)]


def jobs(proc) -> dict[str, int]:
    """Job counts per rule of a run (the table Snakemake prints before running)."""
    from conftest import parse_job_stats

    return parse_job_stats(proc.stdout + proc.stderr)


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in pq.read_table(path).to_pylist()]


def load_ids(wf, cells=CELLS) -> set[str]:
    return {read_metadata(wf.path(p))["model_server"]["load_id"] for p in targets(cells)}


def server_loads(wf) -> int:
    return wf.path(SERVER_LOG).read_text().count("loaded model ")


def our_processes(workdir: Path) -> list[str]:
    """Live model servers / clients whose working directory is ``workdir`` (none may outlive a run)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "workflow_scripts.server" in cmd and Path(os.readlink(f"/proc/{pid}/cwd")) == workdir:
                found.append(f"{pid}: {cmd[:120]}")
        except OSError:
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")
def test_one_model_load_serves_many_cells(workflow, tiny_model, tmp_path):
    cfg = study(str(tiny_model))
    workflow.write_config(cfg)

    # --- 1. one load for 6 cells; outputs equal the per-cell path -------------------------------------------------
    assert jobs(workflow.run(*targets())) == {"task_data": 1, "model_server": 1, "infer": 6}
    assert server_loads(workflow) == 1
    assert len(load_ids(workflow)) == 1 < len(targets())
    for m, r in CELLS:
        log = workflow.path(LOG.format(m=m, r=r, s=0)).read_text()
        assert "loaded once" in log and "done: " in log, log[-2000:]
    assert our_processes(workflow.workdir) == []
    assert not list(workflow.path("results/model_server/salvage").glob("*")), "salvage released after success"

    # the per-cell path: workflow_scripts.infer.run with its own model load, for each cell's recorded spec
    ref = tmp_path / "ref"
    specs = [{"cell": read_metadata(workflow.path(p))["cell"], "out": str(ref / p)} for p in targets()]
    data = workflow.path("results/data/tokenizer=tiny/task=ruler_niah/length=1024/mode=direct/samples.parquet")
    script = ("import json, sys\nfrom workflow_scripts.infer import run\n"
              "for s in json.loads(sys.argv[1]):\n    run(s['cell'], sys.argv[2], s['out'], 1)\n")
    subprocess.run([sys.executable, "-c", script, json.dumps(specs), str(data)], check=True, cwd=ROOT,
                   capture_output=True, timeout=600)
    for p in targets():
        assert rows(workflow.path(p)) == rows(ref / p), p
        assert "model_server" not in read_metadata(ref / p)
        # the three decode-side cells of a shard shared one dense prefill per sample in the server, not alone
        assert {r["prefill_shared_by"] for r in pq.read_table(workflow.path(p)).to_pylist()} == {3}, p
        assert {r["prefill_shared_by"] for r in pq.read_table(ref / p).to_pylist()} == {1}, p

    # --- 2. regrouping is not a rerun trigger ----------------------------------------------------------------------
    regrouped = copy.deepcopy(cfg)
    regrouped["model_server"] = {"group": ["model", "task", "length", "method", "ratio", "shard"]}
    workflow.write_config(regrouped)
    assert workflow.planned_jobs(*targets()) == {}

    # --- 3. one method's setting changes; one of its cells fails once --------------------------------------------
    changed = copy.deepcopy(cfg)
    changed["methods"]["quest"]["params"] = {"share_pages": True}
    workflow.write_config(changed)
    before = {p: workflow.path(p).stat().st_mtime_ns for p in targets(CELLS[:2])}
    failing = PRED.format(m="quest", r=2, s=1)
    env = {"SFW_FAULT": f"fail_once:{failing}", "SFW_FAULT_DIR": str(tmp_path / "faults")}
    t0 = time.monotonic()
    proc = workflow.run(*targets(), check=False, env=env, timeout=300)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert jobs(proc) == {"model_server": 1, "infer": 2}
    assert time.monotonic() - t0 < 240
    log = workflow.path(LOG.format(m="quest", r=2, s=1)).read_text()
    assert "cell failed in the model server" in log and "Traceback" in log and "SFW_FAULT fail_once" in log, log
    other = workflow.path(LOG.format(m="quest", r=2, s=0)).read_text()
    assert "done: " in other, other           # the group's other cell finished before the failure was reported
    assert not workflow.path(PRED.format(m="quest", r=2, s=0)).exists()      # Snakemake fails the group as a unit
    assert {p: workflow.path(p).stat().st_mtime_ns for p in targets(CELLS[:2])} == before
    assert our_processes(workflow.workdir) == []

    # the fault fired once: the rerun succeeds
    assert jobs(workflow.run(*targets(), env=env)) == {"model_server": 1, "infer": 2}
    server_log = workflow.path(SERVER_LOG).read_text()
    assert server_log.count("restored from salvage") == 1 and server_loads(workflow) == 1, server_log
    assert "restored" in workflow.path(LOG.format(m="quest", r=2, s=0)).read_text()
    for s in (0, 1):
        meta = read_metadata(workflow.path(PRED.format(m="quest", r=2, s=s)))
        assert meta["cell"]["method_params"]["quest"]["share_pages"] is True
    assert workflow.planned_jobs(*targets()) == {}
    assert our_processes(workflow.workdir) == []

    # --- 4. the server is killed mid-cell: its cells fail at once, nothing hangs or survives ----------------------
    killed = copy.deepcopy(changed)
    killed["methods"]["snapkv"]["params"] = {"kernel_size": 7}
    workflow.write_config(killed)
    t0 = time.monotonic()
    proc = workflow.run(*targets(), check=False, env={"SFW_FAULT": "mid_write:method=snapkv"}, timeout=300)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 240
    logs = [workflow.path(LOG.format(m="snapkv", r=2, s=s)).read_text() for s in (0, 1)]
    assert any("server closed the connection" in t and "last lines of the server log" in t for t in logs), logs
    assert our_processes(workflow.workdir) == []
    assert not any(workflow.path(PRED.format(m="snapkv", r=2, s=s)).exists() for s in (0, 1))


# ---------------------------------------------------------------------------------------------- GPUs per model

QWEN72B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 8192,
           "intermediate_size": 29568, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
           "vocab_size": 152064, "tie_word_embeddings": False, "max_position_embeddings": 32768,
           # YaRN to 128K, as Qwen2.5's model cards set it for long contexts
           "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
QWEN7B = {**QWEN72B, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
          "num_attention_heads": 28, "num_key_value_heads": 4}


def fake_checkpoint(path: Path, cfg: dict, tokenizer_from: Path) -> Path:
    """config.json of a real architecture + a real tokenizer, padded with one added token to the config's
    vocabulary size (the study checks that they match), + a safetensors file without tensors (the study checks
    that weights are there; the estimate reads only the config)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    for f in tokenizer_from.glob("tokenizer*"):
        (path / f.name).write_bytes(f.read_bytes())
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": cfg["vocab_size"] - 1, "content": "<|fake_pad|>", "single_word": False,
                                "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (path / "tokenizer.json").write_text(json.dumps(tok))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_gpu_count_estimate(tmp_path, tiny_model):
    from workflow_scripts.infer import gpu_max_memory
    from workflow_scripts.server_plan import GIB, gpus_needed, memory_need, model_shape

    big = model_shape(str(fake_checkpoint(tmp_path / "q72", QWEN72B, tiny_model)))
    small = model_shape(str(fake_checkpoint(tmp_path / "q7", QWEN7B, tiny_model)))
    assert abs(big.params / 72.7e9 - 1) < 0.01 and abs(small.params / 7.62e9 - 1) < 0.01   # Qwen2.5 sizes
    need = {L: memory_need(big, "bfloat16", L, 1024, 1) for L in (16384, 128000)}
    assert need[16384]["weights"] == need[128000]["weights"] == big.params * 2
    assert need[128000]["kv_cache"] > 7 * need[16384]["kv_cache"]
    assert [gpus_needed(need[L], 80) for L in (16384, 128000)] == [3, 4]       # 72B: more GPUs at 128K
    assert gpus_needed(memory_need(small, "bfloat16", 128000, 1024, 1), 80) == 1
    assert gpus_needed(need[16384], 141) == 2                                   # bigger GPUs, fewer of them
    # weights budget per visible GPU for device_map="auto": memory less a share of KV cache + activations
    budget = gpu_max_memory([80 * GIB] * 4, reserve_bytes=40 * GIB)
    assert list(budget) == [0, 1, 2, 3] and all(b == int(0.9 * 80 * GIB - 10 * GIB - 2 * GIB)
                                                 for b in budget.values())


def test_gpu_resources_reach_the_server_jobs(workflow, tiny_model, tmp_path):
    """Dry run through profiles/slurm: each model_server job requests the GPUs of its model x length (explicit
    `gpus` wins), its cells none, and the cells of one model x length share one load."""
    ckpt = fake_checkpoint(tmp_path / "ckpt72", QWEN72B, tiny_model)
    cfg = study(str(tiny_model))
    tiny_long = json.loads((tiny_model / "config.json").read_text())
    tiny_long["rope_scaling"] = QWEN72B["rope_scaling"]
    cfg["models"] = {"big": {"path": str(ckpt), "dtype": "bfloat16", "device": "cuda"},
                     "big4": {"path": str(ckpt), "dtype": "bfloat16", "device": "cuda", "gpus": 5},
                     "tiny": {"path": str(fake_checkpoint(tmp_path / "tiny128k", tiny_long, tiny_model)),
                              "dtype": "float32", "device": "cpu"}}
    cfg["lengths"] = [16384, 128000]
    cfg["model_server"] = {"group": ["model", "length"]}
    workflow.write_config(cfg)
    proc = workflow.run("-n", "--profile", str(ROOT / "profiles" / "slurm"), "--executor", "slurm", "--jobs", "10",
                        "results/aggregate/summary.parquet")
    out = proc.stdout + proc.stderr
    resources = {}
    for block in out.split("rule model_server:")[1:]:
        server = block.split("wildcards: server=", 1)[1].split()[0]
        res = block.split("resources: ", 1)[1].splitlines()[0]
        resources[server] = dict(kv.split("=", 1) for kv in res.split(", "))
    gpus = {s: int(r["gpu"]) for s, r in resources.items()}
    assert gpus == {"model=big/length=16384": 3, "model=big/length=128000": 4, "model=big4/length=16384": 5,
                    "model=big4/length=128000": 5, "model=tiny/length=16384": 0, "model=tiny/length=128000": 0}
    assert {r["slurm_partition"] for r in resources.values()} == {"gpu"}
    assert all(int(r["cpus_per_gpu"]) == 8 for r in resources.values())
    for block in out.split("rule infer:")[1:]:
        res = dict(kv.split("=", 1) for kv in block.split("resources: ", 1)[1].splitlines()[0].split(", "))
        assert (res["gpu"], res["mem_mb"], res["slurm_partition"]) == ("0", "0", "gpu")
