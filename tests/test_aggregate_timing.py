"""Timing columns of the aggregate and the isoTime label: a row's prefill_ms is its batch's prefill (every row of
the batch carries it), so the per-cell mean is per sample; the isoTime chart names where the study ran."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts.aggregate import aggregate
from workflow_scripts.config import Study


def _score_file(path, batches):
    rows = []
    for ms, size in batches:
        rows += [{"sample_id": len(rows) + i, "method": "dense", "ratio": 1.0, "prefill_ratio": 1.0,
                  "decode_ratio": 1.0, "score": 1.0, "sparsity": 0.0, "density": 1.0, "input_tokens": 100,
                  "output_tokens": 5, "prefill_ms": ms, "decode_ms_per_token": 2.0, "peak_mem_mb": 10.0,
                  "batch_size": size} for i in range(size)]
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_mean_prefill_ms_is_per_sample(tmp_path):
    f = tmp_path / "scores/model=m/task=t/length=1024/part.parquet"
    _score_file(f, [(800.0, 8), (300.0, 2)])     # 10 samples: 8 in a batch of 800 ms, 2 in one of 300 ms
    o = tmp_path / "agg"
    aggregate([str(f)], str(o / "samples.parquet"), str(o / "summary.parquet"))
    ((mean,),) = duckdb.sql(f"SELECT mean_prefill_ms FROM '{o / 'summary.parquet'}'").fetchall()
    assert mean == pytest.approx((8 * 100.0 + 2 * 150.0) / 10)      # 110 ms per sample, not the batch mean 700


def test_runtime_label_names_device_and_executor():
    base = {"samples": 2, "shard_size": 2, "tasks": ["ruler_niah"], "lengths": [1024], "methods": {"dense": {}}}
    from snakemake.utils import validate

    from workflow_scripts.config import SCHEMA_PATH

    def label(models, executor):
        cfg = {**base, "executor": executor,
               "models": {n: {"path": f"/nowhere/{n}", "dtype": "float32", "device": d} for n, d in models}}
        validate(cfg, SCHEMA_PATH)
        return Study(cfg, check_paths=False).runtime_label()

    assert label([("a", "cpu"), ("b", "cpu")], "torch") == "cpu, torch executor"
    assert label([("a", "cuda"), ("b", "cpu")], "auto") == "cuda, triton executor; cpu, torch executor"
    assert label([("a", "cuda")], "reference") == "cuda, reference executor"
