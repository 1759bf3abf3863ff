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
from sparse_kernels.recall import RecallRecorder, decode_recall, kept_and_oracle, prefill_recall
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
           "flexprefill": {"alpha": 0.2, "min_budget": 16, "last_q": 64, "n_local": 16},
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
