"""The real workflow, end to end through Snakemake, on a tiny random-weight model.

Checks the per-cell parquet contents, the DuckDB aggregate and the chart, then that config edits replan
exactly the changed cells (plus the aggregation downstream), and that a job killed mid-write leaves no
output Snakemake would take as complete.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import resource
import subprocess
import sys
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, parse_job_stats
from workflow_scripts.io import read_metadata

PRED = "results/predictions/model={m}/task=ruler_niah/length={L}/method=dense/ratio=1/shard={s}/part.parquet"


def study(model: str) -> dict:
    entry = {"path": model, "dtype": "float32", "device": "cpu"}
    return {"seed": 43, "samples": 4, "shard_size": 2, "prompt_mode": "direct", "max_new_tokens": 4,
            "models": {"tiny-a": dict(entry), "tiny-b": dict(entry)},
            "tasks": ["ruler_niah"], "lengths": [1024], "methods": {"dense": {}}}


# everything downstream of the per-cell scores: aggregation, analyses, charts, the database
DOWNSTREAM = {"aggregate": 1, "chart_score_vs_ratio": 1, "isocost": 1, "chart_iso": 3, "significance": 1,
              "chart_max_ratio": 1, "scaling": 1, "relative_error": 1, "chart_relative_error": 1, "database": 1,
              "all": 1}


def test_end_to_end_and_exact_incremental_reruns(workflow, tiny_model):
    cfg = study(str(tiny_model))
    workflow.write_config(cfg)
    # both models share the tokenizer path -> one task-data job; one model load (model_server) per model
    assert workflow.planned_jobs() == {"task_data": 1, "model_server": 2, "infer": 4, "score": 2, "model_info": 1,
                                       "data_card": 1, **DOWNSTREAM}
    workflow.run()

    data = pq.read_table(workflow.path(
        "results/data/tokenizer=tiny/task=ruler_niah/length=1024/mode=direct/samples.parquet")).to_pylist()
    assert [r["sample_id"] for r in data] == [0, 1, 2, 3]
    assert all(972 <= r["input_tokens"] <= 1024 for r in data)

    for m in ("tiny-a", "tiny-b"):
        for shard, ids in ((0, [0, 1]), (1, [2, 3])):
            path = workflow.path(PRED.format(m=m, L=1024, s=shard))
            rows = pq.read_table(path).to_pylist()
            assert [r["sample_id"] for r in rows] == ids
            for r in rows:
                assert r["input_tokens"] == data[r["sample_id"]]["input_tokens"]
                assert 0 <= r["output_tokens"] <= 4 and r["stop_reason"] in ("eos", "length")
                assert r["sparsity"] == 0.0 and r["density"] == 1.0
                assert r["prefill_ms"] > 0 and r["peak_mem_mb"] > 0
            meta = read_metadata(path)
            assert meta["cell"]["model"] == m and meta["cell"]["method"] == "dense"
            assert meta["cell"]["samples"] == ids[:1] + [ids[-1] + 1]
            assert meta["provenance"]["versions"]["torch"].startswith("2.")
            assert len(meta["provenance"]["code"]) == 12

    con = duckdb.connect(str(workflow.path("results/aggregate/study.duckdb")), read_only=True)
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'summary'").fetchall())
    assert types["length"] == "BIGINT" and types["ratio"] == "DOUBLE"
    samples = con.execute("SELECT model, sample_id, score FROM samples ORDER BY model, sample_id").fetchall()
    assert [(m, i) for m, i, _ in samples] == [(m, i) for m in ("tiny-a", "tiny-b") for i in range(4)]
    summary = con.execute("SELECT model, n, mean, se FROM summary ORDER BY model").fetchall()
    for m, n, mean, se in summary:
        scores = [s for mm, _, s in samples if mm == m]
        assert n == 4 and mean == pytest.approx(sum(scores) / 4)
    assert pq.read_table(workflow.path("results/aggregate/summary.parquet")).num_rows == 2
    # every scored sample carries its id and gold answer, so a score can be audited from the database alone
    audit = con.execute("SELECT sample_id, gold_answer FROM samples WHERE model = 'tiny-a' "
                        "ORDER BY sample_id").fetchall()
    assert audit == [(r["sample_id"], r["answer"]) for r in data]

    html = workflow.path("results/charts/score_vs_ratio.html").read_text()
    assert "vega-embed" in html.lower() and "cdn.jsdelivr" not in html      # offline: Vega inlined
    assert workflow.path("results/charts/score_vs_ratio.png").read_bytes()[:4] == b"\x89PNG"

    # the report carries the study configuration (schema defaults filled in) and the data card
    workflow.run("--report", "report.html")
    report = workflow.path("report.html").read_text()
    assert "Study configuration" in report and "ERROR/" not in report
    for line in ("samples: 4", "shard_size: 2", "max_new_tokens: 4", 'prompt_mode: &quot;direct&quot;',
                 "lengths: [1024]", "batch_size: 1"):                     # batch_size: a schema default
        assert "\\n" + line + "\\n" in report, line
    assert "tokenizer=tiny.md" in report and "0. Study" in report

    # nothing to do on an unchanged config
    assert workflow.planned_jobs() == {}

    # one model's setting changed -> exactly its cells (2 shards, their model load, 1 score) + aggregation downstream
    changed = copy.deepcopy(cfg)
    changed["models"]["tiny-b"]["dtype"] = "bfloat16"
    workflow.write_config(changed)
    assert workflow.planned_jobs() == {"model_server": 1, "infer": 2, "score": 1, **DOWNSTREAM}

    # a new length -> its task data and its cells only
    grown = copy.deepcopy(cfg)
    grown["lengths"] = [1024, 2048]
    workflow.write_config(grown)
    assert workflow.planned_jobs() == {"task_data": 1, "model_server": 2, "infer": 4, "score": 2, "data_card": 1,
                                       **DOWNSTREAM}

    # a new model sharing the tokenizer reuses the task data
    more = copy.deepcopy(cfg)
    more["models"]["tiny-c"] = dict(cfg["models"]["tiny-a"])
    workflow.write_config(more)
    assert workflow.planned_jobs() == {"model_server": 1, "infer": 2, "score": 1, "model_info": 1, **DOWNSTREAM}


def test_killed_job_leaves_no_complete_output(workflow, tiny_model):
    cfg = study(str(tiny_model))
    cfg["models"] = {"tiny-a": cfg["models"]["tiny-a"]}
    workflow.write_config(cfg)
    # the model server SIGKILLs itself while writing shard 1's temporary file, before the rename; the cells of its
    # load (both shards) fail as one group job, so neither output is kept (shard 0, if it was already written,
    # is restored from the server's salvage on the rerun instead of recomputed: tests/test_model_server.py)
    proc = workflow.run("--keep-going", check=False, env={"SFW_FAULT": "mid_write:shard=1"})
    assert proc.returncode != 0
    killed = workflow.path(PRED.format(m="tiny-a", L=1024, s=1))
    assert not workflow.path(PRED.format(m="tiny-a", L=1024, s=0)).exists()
    assert not killed.exists()
    leftovers = list(killed.parent.glob(".part.parquet.*.tmp")) if killed.parent.exists() else []
    assert len(leftovers) <= 1          # the dead process's temp file, never taken as output
    assert workflow.planned_jobs("--rerun-incomplete") == {"model_server": 1, "infer": 2, "score": 1, **DOWNSTREAM}
    workflow.run("--rerun-incomplete")
    assert [r["sample_id"] for r in pq.read_table(killed).to_pylist()] == [2, 3]
    assert not list(killed.parent.glob(".part.parquet.*.tmp")), "stale temp file is cleaned on rewrite"
    assert json.loads(json.dumps(read_metadata(killed)["cell"]))["shard"] == 1


# The dry run of a big grid may take at most this many times the CPU time that Snakemake alone needs for a bare
# Snakefile of trivial jobs in the same DAG shape (bench/bench_dryrun.py's floor, timed in the same test, so a
# slow or loaded machine slows both). Measured on the 2-core dev machine: 1.4 (1.6 without the Snakemake patches of
# workflow_scripts/snakemake_speedups.py, which the floor's bare Snakefile does not load).
DRY_RUN_FLOOR_FACTOR = 2.0


def _timed(fn):
    """(result, wall seconds, CPU seconds of the child processes) of fn()."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = fn()
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    return result, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _dry_run_floor(tmp_path, models: int, tasks: int, lengths: int, cells_per_group: int):
    spec = importlib.util.spec_from_file_location("bench_dryrun", ROOT / "bench" / "bench_dryrun.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    floor = tmp_path / "floor"
    floor.mkdir()
    (floor / "Snakefile").write_text(bench.floor_snakefile(models, tasks, lengths, cells_per_group))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "2", "--workflow-profile", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=floor)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sum(parse_job_stats(proc.stdout + proc.stderr).values())


def test_dry_run_of_a_5000_cell_study(workflow, tiny_model, tmp_path):
    """A generated grid of 5,000 cells plans every job, at most DRY_RUN_FLOOR_FACTOR x Snakemake's own floor.

    500 models x 10 lengths x dense: 5,000 cells that are also 5,000 score groups, the most jobs a 5,000-cell
    grid can have. The issue's target (< 20 s on the 2-core machine) is not asserted as such: Snakemake alone
    needs 19-27 s there for this many jobs (the floor, depending on the machine's load); both times are printed
    (pytest -s)."""
    cfg = study(str(tiny_model))
    entry = cfg["models"]["tiny-a"]
    cfg["models"] = {f"m{i:03d}": dict(entry) for i in range(500)}
    cfg["lengths"] = [1024 * (k + 1) for k in range(10)]
    cfg["samples"], cfg["shard_size"] = 2, 2
    workflow.write_config(cfg)
    planned, wall, cpu = _timed(lambda: workflow.planned_jobs("--quiet", "rules"))
    floor_jobs, floor_wall, floor_cpu = _timed(lambda: _dry_run_floor(tmp_path, 500, 1, 10, 1))
    print(f"\ndry run: {sum(planned.values())} jobs in {wall:.1f} s (CPU {cpu:.1f} s); floor, a bare Snakefile of "
          f"{floor_jobs} trivial jobs in the same shape: {floor_wall:.1f} s (CPU {floor_cpu:.1f} s); "
          f"ratio {cpu / floor_cpu:.2f} (CPU), limit {DRY_RUN_FLOOR_FACTOR}")
    assert planned == {
        "task_data": 10, "model_server": 500, "infer": 5000, "score": 5000, "model_info": 1, "data_card": 1,
        **DOWNSTREAM}
    assert cpu <= DRY_RUN_FLOOR_FACTOR * floor_cpu
