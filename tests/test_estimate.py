"""The GPU-hour estimate (workflow_scripts/estimate.py) against hand-computed prices."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from workflow_scripts.estimate import estimate

# a measured report as bench/bench_workflow_gpu.py writes it (only what the estimate reads): round device rates,
# every method at efficiency 2 on prefill and 1.5 on decode at 32K, 1 and 1 at 128K
DEVICE = {"device": "test GPU", "gemm_tflops": 800.0, "sdpa_tflops": {"32768": 500.0, "128000": 500.0},
          "hbm_gbps": 3000.0}
METHODS = ["dense", "vertical_slash", "flexprefill", "block_sparse", "snapkv", "ada_snapkv", "quest"]


def measured(load_s_per_gb=1.0, calibration_dense_samples=0.0):
    cells = {}
    for L, (pe, de) in ((32768, (2.0, 1.5)), (128000, (1.0, 1.0))):
        for m in METHODS:
            cells[f"{L}/{m}"] = {"method": m, "length": L, "density": 1.0, "prefill_s": pe, "decode_ms_per_token": de,
                                 "limit": {"prefill_s": 1.0, "decode_ms_per_token": 1.0}}
    return {"device": DEVICE, "cells": cells, "phases_s": {}, "load_s_per_gb": load_s_per_gb,
            "calibration_dense_samples": calibration_dense_samples}


def qwen7b_study(path, methods, lengths=(32768,), samples=10, new_tokens=33):
    return {"samples": samples, "shard_size": samples, "max_new_tokens": new_tokens, "tasks": ["ruler_niah"],
            "lengths": list(lengths), "models": {"q": {"path": path, "dtype": "bfloat16", "device": "cuda"}},
            "methods": methods}


def test_dense_cell_priced_by_hand():
    # Qwen2.5-7B from the paper's table (the path does not exist): 28 layers, d = 28 x 128, 4 kv heads,
    # 7.61e9 parameters of which 152064 x 3584 are the input embedding
    est = estimate(qwen7b_study("/nowhere/Qwen2.5-7B-Instruct", {"dense": {}}), measured(load_s_per_gb=0.0))
    L, P, emb = 32768, 7.61e9, 152064 * 3584
    prefill = (2 * (P - emb) * L / 800e12 + 4 * 28 * 3584 * L * L / 2 / 500e12) * 2.0
    kv_token = 2 * 28 * 4 * 128 * 2
    step = ((P - emb) * 2 + kv_token * (L + 33 / 2)) / 3000e9 * 1.5     # decode reads all weights but the embedding
    row = est["rows_gpu_s"]["q"]
    assert row["prefill"] == pytest.approx(10 * prefill, rel=1e-9)
    assert row["decode"] == pytest.approx(10 * 32 * step, rel=1e-9)
    assert row["gpus"] == 1 and row["load"] == 0 and row["calibration"] == 0
    assert est["cells"] == 1 and est["loads"] == 1


def test_sparse_cells_cost_their_density_and_calibration_counts():
    methods = {"dense": {}, "vertical_slash": {"ratios": [10]}, "quest": {"ratios": [10]}}
    est = estimate(qwen7b_study("/nowhere/Qwen2.5-7B-Instruct", methods, lengths=(128000,), samples=1),
                   measured(load_s_per_gb=2.0, calibration_dense_samples=3.0))
    row = est["rows_gpu_s"]["q"]
    dense = estimate(qwen7b_study("/nowhere/Qwen2.5-7B-Instruct", {"dense": {}}, lengths=(128000,), samples=1),
                     measured(load_s_per_gb=2.0))["rows_gpu_s"]["q"]
    L, P, emb = 128000, 7.61e9, 152064 * 3584
    lin, attn = 2 * (P - emb) * L / 800e12, 4 * 28 * 3584 * L * L / 2 / 500e12
    # dense and quest share one dense prefill per sample (priced once), V-S computes a tenth of the attention
    assert row["prefill"] == pytest.approx((lin + attn) + lin + attn / 10, rel=1e-9)
    assert est["prefills_per_sample"] == {"without_sharing": 3, "with_sharing": 2}
    alone = qwen7b_study("/nowhere/Qwen2.5-7B-Instruct", methods, lengths=(128000,), samples=1)
    alone["model_server"] = {"share_prefill": False}
    unshared = estimate(alone, measured(load_s_per_gb=2.0, calibration_dense_samples=3.0))
    assert unshared["rows_gpu_s"]["q"]["prefill"] == pytest.approx(2 * (lin + attn) + lin + attn / 10, rel=1e-9)
    assert unshared["prefills_per_sample"] == {"without_sharing": 3, "with_sharing": 3}
    assert row["decode"] < 3 * dense["decode"] and row["decode"] > 2 * dense["decode"]
    # one V-S calibration: a load (2 s/GB x 15.22 GB) and three dense samples
    assert row["calibration"] == pytest.approx(2.0 * P * 2 / 1e9 + 3.0 * (lin + attn), rel=1e-9)
    assert row["load"] == pytest.approx(2.0 * P * 2 / 1e9)


def test_paper_study_estimate_from_its_placeholder_paths(tmp_path):
    """studies/paper.yaml as shipped (checkpoint paths not filled in): every model sized from its name, the 72B
    on several GPUs; printed as a table by the command line."""
    cfg = yaml.safe_load((ROOT / "studies" / "paper.yaml").read_text())
    est = estimate(cfg, measured())
    rows = est["rows_gpu_s"]
    assert list(rows) == ["qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"]
    assert est["cells"] == 31_680
    assert rows["qwen2.5-7b"]["gpus"] == 1 and rows["qwen2.5-72b"]["gpus"] >= 2
    totals = [rows[m]["total"] for m in rows]
    assert totals == sorted(totals)
    path = tmp_path / "m.json"
    import json

    path.write_text(json.dumps(measured()))
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.estimate", "--configfile",
                           str(ROOT / "studies" / "paper.yaml"), "--measured", str(path)],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    assert "| qwen2.5-72b |" in proc.stdout and "31,680 cell shards" in proc.stdout
