"""Triton decode kernels (Quest page bounds / selection / attention, KV-compressed decode, dense decode) vs the
reference, under the Triton interpreter (fp32 / fp16)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_kernels import reference  # noqa: E402
from sparse_kernels.methods import AdaSnapKV, Quest, SnapKV  # noqa: E402
from sparse_kernels.selection import KVSelection, padding_info  # noqa: E402
from sparse_kernels.triton import executors as tx  # noqa: E402
from sparse_kernels.triton.quest import group_union, page_bounds, quest_select, topk_pages  # noqa: E402
from sparse_kernels.triton.testing import check, left_pad_mask, qkv  # noqa: E402

FP32, FP16 = torch.float32, torch.float16

# (B, H, G, L, D, token budget, share_pages, left pads, dtype)
QUEST_CASES = {
    "gqa1-perhead-fp32": (1, 4, 4, 130, 32, 48, False, None, FP32),
    "gqa4-perhead-pad-fp16": (2, 4, 1, 200, 64, 64, False, (0, 45), FP16),
    "gqa7-shared-fp32": (1, 7, 1, 77, 16, 32, True, None, FP32),
    "gqa7-perhead-fp16": (1, 7, 1, 150, 32, 48, False, None, FP16),
    "gqa4-shared-all-pages-fp32": (1, 4, 1, 40, 32, 64, True, None, FP32),  # fewer pages than the budget
}


def _bound_close(a, b):
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    assert torch.equal(fa, fb)
    torch.testing.assert_close(a[fa], b[fb], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", list(QUEST_CASES.values()), ids=list(QUEST_CASES))
def test_quest_bounds_selection_and_attention(case):
    B, H, G, L, D, budget, share, pads, dtype = case
    q, k, v = qkv(B, H, G, L, D, dtype, seed=L + H, Lq=1)
    kpm = None if pads is None else left_pad_mask(B, L - 1, pads)
    quest = Quest(token_budget=budget, share_pages=share)
    state = quest.init_state(k[:, :, :-1], kpm)
    state.append(k[:, :, -1:])
    # page bounds (fp32 summaries as the QuestState keeps them, and key-dtype summaries)
    want = quest.page_bounds(state, q)
    _bound_close(page_bounds(state.page_min, state.page_max, q, share), want)
    if dtype == FP16:
        got = page_bounds(state.page_min.to(dtype), state.page_max.to(dtype), q, share)
        fin = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), fin)
        torch.testing.assert_close(got[fin], want[fin], atol=2e-2, rtol=2e-3)
    # selection: same pages (random inputs have no ties at the top-k boundary)
    ref_sel = quest.select(state, q)
    sel = quest_select(quest, state, q)
    assert torch.equal(sel.token_mask(), ref_sel.token_mask())
    assert torch.equal(sel.counts, ref_sel.counts)
    # attention over the (reference) selection
    ref = reference.quest_attention(q, k, v, ref_sel)
    check(tx.quest_attention(q, k, v, ref_sel), ref, dtype)


def test_group_union_bits():
    pages = torch.tensor([[[0, 3, 5, -1], [3, 4, -1, -1], [1, 2, 5, 7], [7, -1, -1, -1]]])
    counts = torch.tensor([[3, 2, 4, 1]])
    up, uc, ub = group_union(pages, counts, num_kv_heads=2, num_pages=8)
    assert uc.tolist() == [[4, 4]]
    assert up[0, 0, :4].tolist() == [0, 3, 4, 5] and ub[0, 0, :4].tolist() == [1, 3, 2, 1]
    assert up[0, 1, :4].tolist() == [1, 2, 5, 7] and ub[0, 1, :4].tolist() == [1, 1, 1, 3]



def _topk_pages_reference(x, k, k_row=None, limit=None, drop_neg_inf=False, width=None):
    """Plain Python: per row the k (or k_row[b]) largest entries, ties to the lower page, ascending, -1 after."""
    B, S, P = x.shape
    width = k if width is None else width
    out = torch.full((B, S, width), -1, dtype=torch.int32)
    cnt = torch.zeros(B, S, dtype=torch.int32)
    for b in range(B):
        kb = k if k_row is None else max(0, min(int(k_row[b]), k))
        for s_ in range(S):
            vals = [float(x[b, s_, i]) if limit is None or i < int(limit[b]) else float("-inf") for i in range(P)]
            best = sorted(range(P), key=lambda i: (-vals[i], i))[:kb]
            if drop_neg_inf:
                best = [i for i in best if vals[i] > float("-inf")]
            best.sort()
            out[b, s_, :len(best)] = torch.tensor(best, dtype=torch.int32)
            cnt[b, s_] = len(best)
    return out, cnt


@pytest.mark.parametrize("block,radix_bits", [(16, 8), (256, 8), (64, 4), (256, 2), (32, 4)])
def test_topk_pages_matches_a_plain_sort(block, radix_bits):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 53, generator=g) * 100
    x[0, 0, 40:] = float("-inf")                                           # empty pages
    x[0, 1, 5] = float("inf")                                              # the current page of a static decode
    x[1, 1] = torch.randint(0, 4, (53,), generator=g).float()              # ties at the threshold
    x[1, 2] = -torch.rand(53, generator=g)                                 # all negative
    x[1, 0, ::2] = 0.0
    x[1, 0, 1::4] = -0.0                                                   # both zeros
    cases = [dict(k=0), dict(k=1), dict(k=9), dict(k=53), dict(k=20, width=25),
             dict(k=12, k_row=torch.tensor([3, 40])), dict(k=15, limit=torch.tensor([30, 7]), drop_neg_inf=True),
             dict(k=15, k_row=torch.tensor([15, 0]), limit=torch.tensor([53, 60]), drop_neg_inf=True, width=16)]
    for c in cases:
        got, cnt = topk_pages(x, block=block, radix_bits=radix_bits, **c)
        want, wcnt = _topk_pages_reference(x, **c)
        assert torch.equal(cnt, wcnt), c
        assert torch.equal(got, want), c


# (method class, B, H, G, L, D, Lq, left pads, dtype)
KV_CASES = {
    "snapkv-gqa4-pad-fp32": (SnapKV, 2, 4, 1, 130, 32, 1, (0, 30), FP32),
    "ada-gqa7-lq2-fp16": (AdaSnapKV, 1, 7, 1, 150, 16, 2, None, FP16),
    "snapkv-gqa1-lq2-fp16": (SnapKV, 1, 4, 4, 77, 64, 2, None, FP16),
}


@pytest.mark.parametrize("case", list(KV_CASES.values()), ids=list(KV_CASES))
def test_kv_compressed_decode_matches_reference(case):
    cls, B, H, G, L, D, Lq, pads, dtype = case
    n_dec = 3
    q, k, v = qkv(B, H, G, L + n_dec, D, dtype, seed=L + Lq, Lq=Lq)
    kpm = None if pads is None else left_pad_mask(B, L, pads)
    method = cls(token_capacity=40, window=16, local_window=8, n_sinks=2, kernel_size=5)
    qp, _, _ = qkv(B, H, G, L, D, dtype, seed=L + 1)
    sel = method.compress(qp, k[:, :, :L], kpm)
    ref = reference.kv_compressed_attention(q, k, v, sel)
    check(tx.kv_compressed_attention(q, k, v, sel), ref, dtype)


def test_kv_compressed_decode_empty_selection_gives_zeros():
    q, k, v = qkv(1, 4, 2, 20, 16, FP32, seed=2, Lq=1)
    off, lens = padding_info(None, 1, 20)
    sel = KVSelection(indices=torch.full((1, 2, 1), -1), lengths=torch.zeros(1, 2, dtype=torch.long),
                      seq_lens=lens, pad_offsets=off, length=20)
    out = tx.kv_compressed_attention(q, k, v, sel)
    assert torch.all(out == 0)


@pytest.mark.parametrize("dtype,Lq,H,G,pads", [(FP32, 1, 7, 1, (0, 33)), (FP16, 3, 4, 4, None),
                                               (FP16, 1, 4, 1, None)], ids=["fp32-gqa7-pad", "fp16-lq3", "fp16-gqa4"])
def test_dense_decode_matches_reference(dtype, Lq, H, G, pads):
    B = 1 if pads is None else len(pads)
    q, k, v = qkv(B, H, G, 130, 32, dtype, seed=Lq + H, Lq=Lq)
    kpm = None if pads is None else left_pad_mask(B, 130, pads)
    check(tx.dense_attention(q, k, v, kpm), reference.dense_attention(q, k, v, kpm), dtype)


def test_masked_decode_per_head_suffix():
    """Cache with different valid lengths per kv head (Ada-SnapKV in the HF session: right-aligned)."""
    q, k, v = qkv(2, 4, 2, 60, 32, FP32, seed=9, Lq=1)
    valid = torch.zeros(2, 2, 60, dtype=torch.bool)
    for b, starts in enumerate(((0, 17), (40, 5))):
        for g, s in enumerate(starts):
            valid[b, g, s:] = True
    ref = reference.masked_attention(q, k, v, valid.repeat_interleave(2, 1).unsqueeze(2))
    check(tx.masked_decode(q, k, v, valid), ref, FP32)


def test_gathered_decode_reads_index_views_and_int64_as_given():
    """Strided int32 page lists (a view, as Quest's shared selection passes them) and int64 counts, offsets
    and limits are read without conversion copies and give exactly the result of contiguous int32 inputs."""
    from sparse_kernels.triton.decode import gathered_decode

    B, H, G, L, D, p = 2, 4, 2, 96, 16, 8
    q, k, v = qkv(B, H, G, L, D, FP32, seed=3, Lq=1)
    g = torch.Generator().manual_seed(0)
    wide = torch.stack([torch.randperm(L // p, generator=g)[:5].sort().values for _ in range(B * G * 2)])
    wide = wide.view(B, G * 2, 5).to(torch.int32)
    pages = wide[:, ::2]                                  # [B, G, 5] view, last stride 1
    counts = torch.tensor([[5, 3], [4, 0]], dtype=torch.int64)
    off = torch.tensor([0, 8], dtype=torch.int64)
    lim = torch.tensor([L, L - 8], dtype=torch.int64)
    got = gathered_decode(q, k, v, pages=pages, counts=counts, page_size=p, pad_offsets=off, page_limit=lim)
    want = gathered_decode(q, k, v, pages=pages.contiguous(), counts=counts.to(torch.int32), page_size=p,
                           pad_offsets=off.to(torch.int32), page_limit=lim.to(torch.int32))
    assert torch.equal(got, want)
    # and it is the attention over exactly those tokens (dense reference with an explicit mask)
    for b in range(B):
        for h in range(H):
            kv = h // (H // G)
            pos = [int(off[b]) + pp * p + t for pp in pages[b, kv, :int(counts[b, kv])].tolist() for t in range(p)
                   if pp * p + t < int(lim[b])]
            if not pos:
                assert torch.all(got[b, h] == 0)
                continue
            s = (q[b, h, 0] @ k[b, kv, pos].T) / D ** 0.5
            torch.testing.assert_close(got[b, h, 0], torch.softmax(s, -1) @ v[b, kv, pos], atol=1e-5, rtol=1e-5)
