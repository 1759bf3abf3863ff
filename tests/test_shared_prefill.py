"""The shared dense prefill of decode-side cells (``generate.shared_prefill`` + ``greedy_generate(record=...)``)
against each session's own prefill, on the tiny random Qwen2 (fp32, CPU, reference and torch executors):
identical greedy tokens, logits, stop reasons and per-row statistics for dense, SnapKV, Ada-SnapKV and Quest, on
a left-padded batch and one prompt, on the regular and the static (fast) decode path; one record serves every
session in turn and is left unchanged by them. The workflow-level test (cells through Snakemake, with and
without sharing) is in tests/test_workflow.py."""

from __future__ import annotations

import pytest
import torch

from conftest import RUN_COLUMNS
from sparse_kernels.hf.generate import greedy_generate, shared_prefill
from sparse_kernels.hf.session import SparseSession
from tests.test_fast_decode import _prompts, _session, model  # noqa: F401 - fixture

DECODE_SIDE = ("dense", "quest", "quest_shared", "snapkv", "ada_snapkv")


def _same(a, b):
    assert a.tokens == b.tokens
    assert a.stop == b.stop
    assert a.decode_steps == b.decode_steps
    assert a.extras["stats"] == b.extras["stats"]
    assert len(a.extras["logits"]) == len(b.extras["logits"])
    for x, y in zip(a.extras["logits"], b.extras["logits"]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("executor", ["reference", "torch"])
@pytest.mark.parametrize("fast", ["off", "eager"])
@pytest.mark.parametrize("lengths", [(70, 96, 51), (96,)])
def test_shared_prefill_equals_own_prefill(model, executor, fast, lengths):   # noqa: F811
    prompts = _prompts(lengths, seed=4)
    new = 9
    record = shared_prefill(model, prompts, 3, new, SparseSession(executor=executor), q_tail=16, return_logits=True)
    kept = {layer: [t.clone() for t in entry[:3]] for layer, entry in record.layers.items()}
    for name in DECODE_SIDE:
        own = greedy_generate(model, prompts, new, set(), 3, session=_session(name, executor), return_logits=True,
                              fast_decode=fast)
        shared = greedy_generate(model, prompts, new, set(), 3, session=_session(name, executor), return_logits=True,
                                 fast_decode=fast, record=record)
        _same(own, shared)
        assert shared.prefill_s == record.prefill_s
    for layer, tensors in kept.items():        # no session wrote into the shared prompt cache
        for a, b in zip(tensors, record.layers[layer][:3]):
            assert torch.equal(a, b)


def test_shared_prefill_refuses_what_it_cannot_serve(model):   # noqa: F811
    prompts = _prompts((40, 33))
    record = shared_prefill(model, prompts, 3, 4, SparseSession(executor="reference"), q_tail=8)
    with pytest.raises(RuntimeError, match="window queries"):        # SnapKV scores with 16 > 8 recorded queries
        greedy_generate(model, prompts, 4, set(), 3, session=_session("snapkv", "reference"), record=record)
    with pytest.raises(RuntimeError, match="computes its own prefill"):
        greedy_generate(model, prompts, 4, set(), 3, session=_session("vs+quest", "reference"), record=record)
    with pytest.raises(ValueError, match="prompt record holds"):
        greedy_generate(model, prompts[:1], 4, set(), 3, session=_session("dense", "reference"), record=record)
    with pytest.raises(ValueError, match="dense"):
        shared_prefill(model, prompts, 3, 4, _session("quest", "reference"))


# ---------------------------------------------------------------------------------------------- through Snakemake
PRED = "results/predictions/model=tiny/task=ruler_niah/length=1024/method={m}/ratio={r}/shard=0/part.parquet"
DECODE_CELLS = [("dense", 1), ("snapkv", 2), ("ada_snapkv", 2), ("quest", 2)]
CELLS = DECODE_CELLS + [("block_sparse", 2)]


def _study(model: str, share: bool) -> dict:
    # 3 samples in batches of 2: a left-padded batch of 2, then a batch of 1
    return {"seed": 43, "samples": 3, "shard_size": 3, "batch_size": 2, "prompt_mode": "direct",
            "max_new_tokens": 6, "executor": "reference",
            "models": {"tiny": {"path": model, "dtype": "float32", "device": "cpu"}},
            "tasks": ["ruler_niah"], "lengths": [1024], "model_server": {"share_prefill": share},
            "methods": {"dense": {}, "snapkv": {"ratios": [2]}, "ada_snapkv": {"ratios": [2]},
                        "quest": {"ratios": [2]}, "block_sparse": {"ratios": [2]}}}


def _table(path):
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [{k: v for k, v in r.items() if k not in RUN_COLUMNS} for r in rows], [r["prefill_shared_by"] for r in rows]


def _jobs(proc) -> dict[str, int]:
    from conftest import parse_job_stats

    return parse_job_stats(proc.stdout + proc.stderr)


def test_workflow_shared_prefill_changes_no_result(tmp_path, tiny_model):
    """Every decode-side cell's predictions, token counts and sparsity columns are identical with the shared
    prefill (model_server.share_prefill, the default) and without it; only the rows' prefill_shared_by differs.
    Then two of the four cells are removed and rerun: only they run, sharing their prefill between them."""
    from conftest import Workflow

    runs = {}
    for share in (True, False):
        wf = runs[share] = Workflow(tmp_path / f"share-{share}")
        wf.write_config(_study(str(tiny_model), share))
        wf.run(*[PRED.format(m=m, r=r) for m, r in CELLS])
    for m, r in CELLS:
        with_share, shared_by = _table(runs[True].path(PRED.format(m=m, r=r)))
        without, alone = _table(runs[False].path(PRED.format(m=m, r=r)))
        assert with_share == without, (m, r)
        assert [row["sample_id"] for row in with_share] == [0, 1, 2]
        assert alone == [1, 1, 1]
        assert shared_by == ([len(DECODE_CELLS)] * 3 if (m, r) in DECODE_CELLS else [1, 1, 1]), (m, r)
    log = runs[True].path("results/logs/model_server/model=tiny.log").read_text()
    assert log.count("loaded model") == 1, log

    wf = runs[True]
    rerun = [PRED.format(m=m, r=r) for m, r in (("snapkv", 2), ("quest", 2))]
    for p in rerun:
        wf.path(p).unlink()
    assert _jobs(wf.run(*[PRED.format(m=m, r=r) for m, r in CELLS])) == {"model_server": 1, "infer": 2}
    for p in rerun:
        got, shared_by = _table(wf.path(p))
        assert got == _table(runs[False].path(p))[0], p
        assert shared_by == [2, 2, 2], p
