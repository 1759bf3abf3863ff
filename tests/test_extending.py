"""docs/extending.md's toy method, registered from a study's `method_modules` file, through a real Snakemake study.

1. One cell (tiny model, ruler_niah, 1024 tokens, recent_blocks at 4x, 2 samples in one shard) runs through
   Snakemake up to the isoFLOPS / isoCost points (the full study plans the charts too): its prediction file has the
   Block-Sparse budget rule's sparsity (the toy inherits it) and a measured density near 1/4, the analyses put it
   in the prefill phase, and its isoFLOPS cost is the cost model's dense prefill FLOPs at density 1/4 plus the index
   term the file registered (recomputed here from the model's dimensions, not through method_cost);
2. the registry, the analyses and the cost model see a method registered in this process (and forget it after);
3. a study that gives the toy an unknown hyperparameter, or names a module that fails to load, stops before any job
   with the offending key.
"""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from conftest import ROOT

DOC = ROOT / "docs" / "extending.md"


def toy_module_source() -> str:
    """The ```python block of docs/extending.md that starts with `# my_methods.py`."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (src,) = [b for b in blocks if b.startswith("# my_methods.py")]
    return src


def study(model: str, **extra) -> dict:
    return {"seed": 43, "samples": 2, "shard_size": 2, "prompt_mode": "direct", "max_new_tokens": 2,
            "models": {"tiny": {"path": model, "dtype": "float32", "device": "cpu"}},
            "tasks": ["ruler_niah"], "lengths": [1024], "method_modules": ["my_methods.py"],
            "methods": {"recent_blocks": {"ratios": [4]}}, **extra}


def test_toy_method_runs_through_a_one_cell_study(workflow, tiny_model):
    from sparse_kernels.budgets import block_sparse_density, block_sparse_top_k
    from workflow_scripts.analysis.cost import ModelDims, prefill_flops

    (workflow.workdir / "my_methods.py").write_text(toy_module_source())
    workflow.write_config(study(str(tiny_model)))
    jobs = workflow.planned_jobs()
    assert jobs["infer"] == 1 and jobs["score"] == 1 and "calibrate" not in jobs and jobs["chart_iso"] == 3
    workflow.run("results/analysis/isocost_points.parquet")   # the cell and the analysis, no chart rendering

    pred = workflow.path("results/predictions/model=tiny/task=ruler_niah/length=1024/method=recent_blocks/ratio=4"
                         "/shard=0/part.parquet")
    rows = pq.read_table(pred).to_pylist()
    assert [r["sample_id"] for r in rows] == [0, 1]
    k = block_sparse_top_k(1024, 4)   # the toy keeps Block-Sparse's k (its budget rule) in every row
    for r in rows:
        n_blocks = -(-r["input_tokens"] // 16)
        assert r["sparsity"] == pytest.approx(1 - block_sparse_density(k, n_blocks))
        assert 0.2 < r["density"] < 0.3    # measured over tokens: about a quarter of the causal pairs

    points = pq.read_table(workflow.path("results/analysis/isocost_points.parquet")).to_pandas()
    toy = points[(points["method"] == "recent_blocks") & (points["metric"] == "flops")]
    assert set(toy["phase"]) == {"prefill"} and len(toy) == 1
    rec = pq.read_table(workflow.path("results/analysis/models.parquet")).to_pylist()[0]
    dims = ModelDims(name="tiny", n_params=float(rec["n_params"]),
                     **{k: int(rec[k]) for k in ("n_layers", "n_heads", "n_kv_heads", "hidden_size",
                                                 "intermediate_size", "vocab_size", "head_dim")},
                     **{k: bool(rec[k]) for k in ("tie_word_embeddings", "qkv_bias") if k in rec})
    n_blocks = 1024 // 16
    index = dims.n_layers * dims.n_heads * n_blocks * n_blocks
    assert toy["cost"].iloc[0] == pytest.approx(prefill_flops(dims, 1024, 0.25).total + index)


def test_registered_method_is_seen_by_registry_analyses_and_cost_model(tmp_path):
    from sparse_kernels import registry
    from sparse_kernels.hf.build import build_methods
    from workflow_scripts.analysis import decode_methods, method_phase, prefill_methods
    from workflow_scripts.analysis.cost import PAPER_MODELS, method_cost

    path = tmp_path / "my_methods.py"
    path.write_text(toy_module_source())
    assert "recent_blocks" not in registry.METHODS
    try:
        registry.load_module(str(path))
        registry.load_module(str(path))          # a second load of the same file registers nothing again
        assert registry.METHOD_PHASES["recent_blocks"] == "prefill"
        assert "recent_blocks" in prefill_methods() and "recent_blocks" not in decode_methods()
        assert method_phase("recent_blocks") == "prefill"
        assert registry.split_method("recent_blocks+quest") == ("recent_blocks", "quest")
        pre, dec = build_methods("recent_blocks", 4, {"block_size": 32}, nominal_length=4096)
        assert type(pre).__name__ == "RecentBlocks" and dec is None and pre.block_size == 32
        # Block-Sparse's budget rule: the k whose causal block density over 4096 / 32 = 128 blocks is nearest 1/4
        n = 128
        density = [(k * (k + 1) / 2 + (n - k) * k) / (n * (n + 1) / 2) for k in range(n + 1)]
        assert pre.top_chunks == min(range(3, n + 1), key=lambda k: abs(density[k] - 0.25)) == 17
        dims = next(iter(PAPER_MODELS.values()))
        cost = method_cost(dims, "recent_blocks", 16384, 4)
        assert cost["prefill_index_flops"] == dims.n_layers * dims.n_heads * 1024 * 1024
        assert cost["decode_index_memory"] == 0 and cost["phase"] == "prefill"
        with pytest.raises(ValueError, match="already registered"):
            registry.register(registry.Method("recent_blocks", "decode", object))
    finally:
        registry.unregister("recent_blocks")
    assert "recent_blocks" not in prefill_methods()


@pytest.mark.parametrize("extra, module, message", [
    ({"methods": {"recent_blocks": {"ratios": [4], "params": {"window": 8}}}}, None,
     "methods.recent_blocks.params.window: unknown hyperparameter 'window' of recent_blocks; known: block_size"),
    ({}, "import torch\nraise RuntimeError('broken on purpose')\n",
     "method_modules[0]: cannot load 'my_methods.py': RuntimeError: broken on purpose"),
])
def test_bad_method_module_or_params_stop_before_any_job(workflow, tiny_model, extra, module, message):
    (workflow.workdir / "my_methods.py").write_text(module or toy_module_source())
    workflow.write_config(study(str(tiny_model), **extra))
    proc = workflow.run("-n", check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert not workflow.path("results").exists()
