"""Attention recall (sparse_kernels/recall.py).

* hand-built attention matrices: logits are log-probabilities written here (q one-hot, k holding the logit
  columns, scale 1), so the dense attention is known exactly and recall / oracle recall are hand-computed;
* every method's selection on random inputs: the oracle of equal budget keeps at least the method's mass, the
  selection is not trivially complete, and ratio 1 gives recall 1;
* the session hook inside a tiny random HF model: every method at ratio 1 gives recall 1 in its phase; at a
  higher ratio recall < 1 <= ... and oracle >= recall per layer; a left-padded batch gives each row the figures
  it gets alone.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse_kernels.methods import build_method
from sparse_kernels.recall import RecallRecorder, decode_recall, kept_and_oracle, prefill_recall, row_windows
from sparse_kernels.selection import BlockSelection

# causal row-stochastic attention matrix (row i attends keys 0..i)
A = [[1.0],
     [0.25, 0.75],
     [0.5, 0.1, 0.4],
     [0.1, 0.2, 0.3, 0.4]]


def _qk_from_probs(rows: list[list[float]], length: int):
    """q [1, 1, len(rows), D], k [1, 1, length, D] with q_i . k_j = log rows[i][j] (D = number of rows)."""
    n = len(rows)
    q = torch.eye(n).view(1, 1, n, n)
    k = torch.full((length, n), -30.0)
    for i, r in enumerate(rows):
        for j, a in enumerate(r):
            k[j, i] = math.log(a)
    return q, k.view(1, 1, length, n)


def test_prefill_recall_of_hand_built_attention():
    q, k = _qk_from_probs(A, 4)
    # block size 2: query block 0 keeps key block 0, query block 1 keeps only key block 1
    sel = BlockSelection(block_size=2, indices=torch.tensor([[[[0], [1]]]]), counts=torch.tensor([[[1, 1]]]),
                         seq_lens=torch.tensor([4]), pad_offsets=torch.tensor([0]), length=4)
    rec, orc = prefill_recall(q, k, sel, scale=1.0)
    # rows: 1, 1, A[2][2] = 0.4, A[3][2] + A[3][3] = 0.7; oracle: same key counts (1, 2, 1, 2) -> 1, 1, 0.5, 0.7
    assert float(rec) == pytest.approx((1 + 1 + 0.4 + 0.7) / 4, abs=1e-6)
    assert float(orc) == pytest.approx((1 + 1 + 0.5 + 0.7) / 4, abs=1e-6)
    # the same matrix left padded by 3 positions in a batch of two: row 0 unchanged
    qp = torch.cat([torch.zeros(1, 1, 3, 4), q], 2)
    kp = torch.cat([torch.zeros(1, 1, 3, 4), k], 2)
    selp = BlockSelection(block_size=2, indices=torch.tensor([[[[0], [1], [-1], [-1]]]] * 2).view(2, 1, 4, 1),
                          counts=torch.tensor([[[1, 1, 0, 0]]] * 2).view(2, 1, 4),
                          seq_lens=torch.tensor([4, 4]), pad_offsets=torch.tensor([3, 0]), length=7)
    rec2, _ = prefill_recall(torch.cat([qp, torch.cat([q, torch.zeros(1, 1, 3, 4)], 2)]),
                             torch.cat([kp, torch.cat([k, torch.zeros(1, 1, 3, 4)], 2)]), selp, scale=1.0)
    assert rec2.flatten().tolist() == pytest.approx([0.775, 0.775], abs=1e-6)


def test_row_windows_sample_evenly_and_measure_only_those_rows():
    assert row_windows(500, 512) == [(0, 500)]
    w = row_windows(1000, 512, 64)
    assert len(w) == 8 and w[0] == (0, 64) and w[-1] == (936, 1000)
    assert all(b - a == 64 for a, b in w) and all(w[i][1] <= w[i + 1][0] for i in range(7))
    # the sampled figure is the mean over exactly those rows: each row alone, averaged by hand
    q, k = _random_qkv(L=300, H=2, G=1)
    sel = build_method("block_sparse", top_chunks=4).select(q, k, None, 0.25)
    rec, orc = prefill_recall(q, k, sel, 0.25, max_rows=128)
    rows = [r for a, b in row_windows(300, 128) for r in range(a, b)]
    p = torch.softmax((q[0] @ k[0].transpose(-1, -2) * 0.25).masked_fill(
        torch.ones(300, 300, dtype=torch.bool).triu(1), float("-inf")), -1)[:, rows]
    m = sel.to_mask()[0][:, rows]
    torch.testing.assert_close(rec[0].float(), (p * m).sum(-1).mean(-1), atol=1e-5, rtol=0)
    assert bool((orc >= rec - 1e-6).all())


def test_decode_recall_tokens_and_pages_hand_built():
    probs = [0.05, 0.3, 0.1, 0.1, 0.25, 0.2]
    q, k = _qk_from_probs([probs], 6)
    valid = torch.ones(1, 1, 6, dtype=torch.bool)
    keep = torch.tensor([[[False, False, True, True, True, True]]])      # pages 1 and 2 of size 2
    rec, orc = decode_recall(q, k, valid, keep, 1.0)
    assert float(rec) == pytest.approx(0.65, abs=1e-6)
    assert float(orc) == pytest.approx(0.3 + 0.25 + 0.2 + 0.1, abs=1e-6)    # the 4 largest tokens
    rec, orc = decode_recall(q, k, valid, keep, 1.0, page_size=2)
    assert float(rec) == pytest.approx(0.65, abs=1e-6)
    assert float(orc) == pytest.approx(0.35 + 0.45, abs=1e-6)             # the 2 heaviest pages (0 and 2)
    # an evicted key (not valid) leaves the dense distribution: renormalised over the rest
    valid2 = valid.clone()
    valid2[..., 1] = False
    rec, _ = decode_recall(q, k, valid2, keep, 1.0)
    assert float(rec) == pytest.approx(0.65 / 0.7, abs=1e-6)


def test_kept_and_oracle_full_selection_is_one():
    p = torch.softmax(torch.randn(3, 5, 40), -1)
    rec, orc = kept_and_oracle(p, torch.ones(3, 5, 40, dtype=torch.bool))
    torch.testing.assert_close(rec, torch.ones(3, 5))
    torch.testing.assert_close(orc, torch.ones(3, 5))


# ------------------------------------------------------------------------------------------ methods, random inputs
PREFILL = {"vertical_slash": {"vertical_size": 24, "slash_size": 24, "last_q": 64, "n_local": 16},
           "flexprefill": {"alpha": 0.2, "min_budget": 16, "block_size": 16, "last_q": 64, "n_local": 16},
           "block_sparse": {"top_chunks": 4}}


def _random_qkv(L=300, H=4, G=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, L, D, generator=g) * 2
    k = torch.randn(1, G, L, D, generator=g) * 2
    return q, k


@pytest.mark.parametrize("name", sorted(PREFILL))
def test_prefill_oracle_at_least_method_and_full_budget_is_one(name):
    q, k = _random_qkv()
    sel = build_method(name, **PREFILL[name]).select(q, k, None, 0.25)
    rec, orc = prefill_recall(q, k, sel, 0.25)
    assert bool((orc >= rec - 1e-6).all())
    assert float(rec.mean()) < 0.99 and float((orc - rec).max()) > 1e-3     # sparse, and not already optimal
    full = build_method(name, ratio=1).select(q, k, None, 0.25)
    rec1, orc1 = prefill_recall(q, k, full, 0.25)
    torch.testing.assert_close(rec1, torch.ones_like(rec1), atol=1e-5, rtol=0)
    torch.testing.assert_close(orc1, torch.ones_like(orc1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["snapkv", "ada_snapkv"])
def test_kv_compression_oracle_at_least_method(name):
    q, k = _random_qkv(L=400)
    sel = build_method(name, token_capacity=150, window=32, local_window=16).compress(q, k, None, 0.25)
    qd = torch.randn(1, 4, 1, 16, generator=torch.Generator().manual_seed(1)) * 2
    keep = sel.to_mask(4, 1, 400)[:, :, 0]
    rec, orc = decode_recall(qd, k, torch.ones(1, 1, 400, dtype=torch.bool), keep, 0.25)
    assert bool((orc >= rec - 1e-6).all()) and float(rec.max()) < 0.99 and float((orc - rec).max()) > 1e-3


@pytest.mark.parametrize("share", [False, True])
def test_quest_page_oracle_at_least_method(share):
    q, k = _random_qkv(L=400)
    quest = build_method("quest", token_budget=64, share_pages=share)
    state = quest.init_state(k)
    qd = torch.randn(1, 4, 1, 16, generator=torch.Generator().manual_seed(2)) * 2
    sel = quest.select(state, qd)
    rec, orc = decode_recall(qd, k, torch.ones(1, 1, 400, dtype=torch.bool), sel.token_mask(), 0.25,
                             sel.page_size, sel.pad_offsets)
    assert bool((orc >= rec - 1e-6).all()) and float(rec.max()) < 0.99 and float((orc - rec).max()) > 1e-3
    quest1 = build_method("quest", ratio=1)
    full = quest1.select(quest1.init_state(k), qd)
    rec1, orc1 = decode_recall(qd, k, torch.ones(1, 1, 400, dtype=torch.bool), full.token_mask(), 0.25, 16)
    torch.testing.assert_close(rec1, torch.ones_like(rec1), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ the session hook
PAD = 3


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    from sparse_kernels.hf import ATTN_IMPLEMENTATION, register

    register()
    return AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32,
                                                attn_implementation=ATTN_IMPLEMENTATION).eval()


def _run(model, method, ratio, prompts, new=4):
    from sparse_kernels.hf.build import make_session
    from sparse_kernels.hf.generate import greedy_generate

    rec = RecallRecorder()
    session = make_session(method, ratio, nominal_length=512)
    session.hooks = [rec]
    greedy_generate(model, prompts, new, set(), PAD, session=session)
    return rec.rows(len(prompts))


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 2000, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("method,phase", [("block_sparse", "prefill"), ("snapkv", "decode"), ("quest", "decode")])
def test_recorder_in_model(model, method, phase):
    prompts = _prompts((300, 200))
    full = _run(model, method, 1, prompts)
    other = "decode" if phase == "prefill" else "prefill"
    for row in full:
        assert row[f"{phase}_recall"] == pytest.approx(1.0, abs=1e-5)
        assert row[f"{phase}_oracle_recall"] == pytest.approx(1.0, abs=1e-5)
        assert row[f"{other}_recall"] is None
    ratio = {"block_sparse": 3, "snapkv": 3, "quest": 4}[method]
    sparse = _run(model, method, ratio, prompts)
    for row in sparse:
        assert row[f"{phase}_recall"] < 0.999
        assert len(row[f"{phase}_recall_by_layer"]) == 2
        for r, o in zip(row[f"{phase}_recall_by_layer"], row[f"{phase}_oracle_recall_by_layer"]):
            assert o >= r - 1e-6
    # left padding: the second (shorter, padded) row gets what it gets alone
    alone = _run(model, method, ratio, prompts[1:])[0]
    assert sparse[1][f"{phase}_recall_by_layer"] == pytest.approx(alone[f"{phase}_recall_by_layer"], abs=1e-5)


# ------------------------------------------------------------------------------------------ the study key
def _study(model, **extra):
    return {"seed": 43, "samples": 2, "shard_size": 2, "prompt_mode": "direct", "max_new_tokens": 3,
            "models": {"tiny": {"path": str(model), "dtype": "float32", "device": "cpu"}},
            "tasks": ["ruler_niah"], "lengths": [1024],
            "methods": {"dense": {}, "block_sparse": {"ratios": [3]}, "snapkv": {"ratios": [3]},
                        "quest": {"ratios": [4]}}, **extra}


def test_recall_key_validated_and_only_in_params_when_on(tiny_model):
    from workflow_scripts.config import ConfigError, Study, schema_errors

    assert "recall" not in Study(_study(tiny_model)).cell_params("tiny", "ruler_niah", 1024, "quest", "4", 0)
    assert Study(_study(tiny_model, recall=True)).cell_params("tiny", "ruler_niah", 1024, "quest", "4", 0)["recall"]
    assert any(e.startswith("recall:") for e in schema_errors(_study(tiny_model, recall="yes")))
    with pytest.raises(ConfigError, match=r"^analysis\.recall_cell: only used with `recall: true`"):
        Study(_study(tiny_model, analysis={"recall_cell": {"length": 1024}}))
    with pytest.raises(ConfigError, match=r"^analysis\.recall_cell\.model: 'big' is not one of"):
        Study(_study(tiny_model, recall=True, analysis={"recall_cell": {"model": "big"}}))


def test_recall_through_the_workflow(workflow, tiny_model):
    import pyarrow.parquet as pq

    workflow.write_config(_study(tiny_model, recall=True))
    workflow.run("results/charts/recall.png")
    cell = "results/predictions/model=tiny/task=ruler_niah/length=1024/method={}/ratio={}/shard=0/part.parquet"
    dense = pq.read_table(workflow.path(cell.format("dense", 1))).to_pylist()
    assert all(r["recall"] == r["oracle_recall"] == 1.0 and r["prefill_recall_by_layer"] is None for r in dense)
    for m, r, phase in (("block_sparse", 3, "prefill"), ("snapkv", 3, "decode"), ("quest", 4, "decode")):
        for row in pq.read_table(workflow.path(cell.format(m, r))).to_pylist():
            assert row["recall"] == row[f"{phase}_recall"] < 0.999
            assert row["oracle_recall"] >= row["recall"] - 1e-9
            assert len(row[f"{phase}_recall_by_layer"]) == 2
            other = "decode" if phase == "prefill" else "prefill"
            assert row[f"{other}_recall"] == 1.0
    cells = pq.read_table(workflow.path("results/analysis/recall.parquet")).to_pandas()
    layers = pq.read_table(workflow.path("results/analysis/recall_by_layer.parquet")).to_pandas()
    got = cells.set_index("method")
    assert got.loc["dense", "recall"] == 1.0 and got.loc["quest", "phase"] == "decode"
    rows = pq.read_table(workflow.path(cell.format("quest", 4))).to_pylist()
    assert got.loc["quest", "recall"] == pytest.approx(sum(r["recall"] for r in rows) / len(rows))
    q = layers[layers["method"] == "quest"].sort_values("layer")
    assert q["recall"].tolist() == pytest.approx([sum(r["decode_recall_by_layer"][i] for r in rows) / len(rows)
                                                  for i in range(2)])
    summary = pq.read_table(workflow.path("results/aggregate/summary.parquet")).to_pandas().set_index("method")
    assert summary.loc["quest", "mean_recall"] == pytest.approx(got.loc["quest", "recall"])
    assert workflow.path("results/charts/recall.png").stat().st_size > 10_000
    # the study database holds the recall tables and columns, each described (workflow_scripts/schemas/tables.yaml)
    import duckdb

    workflow.run("results/aggregate/study.duckdb")
    con = duckdb.connect(str(workflow.path("results/aggregate/study.duckdb")), read_only=True)
    described = con.execute("SELECT table_name, column_name, comment FROM duckdb_columns() WHERE NOT internal "
                            "AND table_name IN ('samples', 'summary', 'recall', 'recall_by_layer')").fetchall()
    assert {(t, c) for t, c, _ in described} >= {("samples", "decode_oracle_recall_by_layer"),
                                                  ("summary", "mean_recall"), ("recall", "oracle_recall_se"),
                                                  ("recall_by_layer", "layer")}
    assert all(text for _, _, text in described)
    assert con.execute("SELECT count(*) FROM recall").fetchone()[0] == len(cells)
