"""Vertical-Slash and FlexPrefill against brute-force computations written from the spec (§2.1, §2.2)."""

import math

import pytest
import torch

from sparse_kernels.methods import FlexPrefill, VerticalSlash
from sparse_kernels.reference import prefill_attention
from sparse_kernels.selection import VerticalSlashSelection, sparsity_summary
from tests.bruteforce import bf_window_probs, explicit_output, make_qkv

TOL = 1e-6


def bf_diag(p):
    H, w, n = p.shape
    out = torch.zeros(H, n, dtype=torch.float64)
    for i in range(w):
        pos = n - w + i
        out[:, : pos + 1] += p[:, i, : pos + 1].flip(-1)  # offset o = pos - j
    return out


def bf_topk_set(scores, forced, k):
    forced = set(forced)
    order = sorted((j for j in range(len(scores)) if j not in forced), key=lambda j: -float(scores[j]))
    return forced | set(order[: k - len(forced)])


def assert_same_topk(got, scores, forced, k):
    """got equals the brute-force top-k set (forced first); near-ties at the boundary are tolerated."""
    want = bf_topk_set(scores, forced, k)
    got = set(got)
    assert len(got) == len(want) == k
    if got != want:
        diff = got ^ want
        lo = min(float(scores[j]) for j in want - set(forced))
        assert all(abs(float(scores[j]) - lo) < 1e-9 for j in diff), (sorted(got), sorted(want))


def bf_cover(vertical, slash, n, bs):
    """Scalar re-statement of the MInference index builder: ranges and columns per query block."""
    out = []
    for m in range(-(-n // bs)):
        end_m = (m + 1) * bs
        ends = [max(end_m - o, bs) for o in sorted(slash, reverse=True) if o < end_m]
        ranges = []
        for e in ends:
            if not ranges:
                ranges.append([e - bs, e])
            elif e > ranges[-1][1] + bs:
                ranges.append([e - bs, e])
            elif e > ranges[-1][1]:
                ranges[-1][1] += bs
        last = ranges[-1][1] if ranges else -1
        cols = [v for v in vertical if v < last and not any(a <= v < b for a, b in ranges)]
        out.append((ranges, cols))
    return out


def bf_block_mask(vertical, slash, n, bs):
    cover = bf_cover(vertical, slash, n, bs)
    m = torch.zeros(n, n, dtype=torch.bool)
    for qi in range(n):
        ranges, cols = cover[qi // bs]
        keys = {j for a, b in ranges for j in range(a, b)} | set(cols)
        keys = [j for j in keys if j <= qi]
        m[qi, keys] = True
    return m, cover


def bf_exact_mask(vertical, slash, n):
    m = torch.zeros(n, n, dtype=torch.bool)
    for qi in range(n):
        keys = {j for j in vertical if j <= qi} | {qi - o for o in slash if 0 <= qi - o}
        m[qi, sorted(keys)] = True
    return m


def causal(L):
    return torch.ones(L, L, dtype=torch.bool).tril()


CASES = [(77, 4, 4), (130, 4, 1), (130, 8, 2)]


@pytest.mark.parametrize("L,H,G", CASES)
def test_vertical_slash_selection_and_output(L, H, G):
    q, k, v = make_qkv(1, H, G, L, seed=L + H)
    m = VerticalSlash(vertical_size=20, slash_size=24, last_q=32, n_sinks=4, n_local=8, block_size=16)
    out, sel = m.attend(q, k, v)
    assert isinstance(sel, VerticalSlashSelection)
    p = bf_window_probs(q[0], k[0], 32)
    vs, ss = p.sum(1), bf_diag(p)
    exact = sel.to_mask("exact")[0]
    block = sel.to_mask("block")[0]
    for h in range(H):
        vi = sel.vertical_idx[0, h, : sel.vertical_counts[0, h]].tolist()
        si = sel.slash_offsets[0, h, : sel.slash_counts[0, h]].tolist()
        assert vi == sorted(vi) and si == sorted(si)
        assert all(0 <= x < L for x in vi) and all(0 <= o < L for o in si)  # no future key / negative offset
        assert_same_topk(vi, vs[h], range(4), 20)
        assert_same_topk(si, ss[h], range(8), 24)
        assert torch.equal(exact[h], bf_exact_mask(vi, si, L))
        want_block, cover = bf_block_mask(vi, si, L, 16)
        assert torch.equal(block[h], want_block)
        # paper measure (spec §2.1 step 6) from the brute-force cover
        tiles = sum((b - a) // 16 for ranges, _ in cover for a, b in ranges)
        cols = sum(len(c) for _, c in cover)
        assert sel.paper_sparsity[0, h].item() == pytest.approx(1 - (tiles * 256 + cols * 16) / (L * (L + 1) / 2))
        assert sel.density_computed()[0, h].item() == pytest.approx(want_block.sum().item() / (L * (L + 1) / 2))
    assert not (block & ~causal(L)).any() and not (exact & ~causal(L)).any()
    assert (exact & ~block).sum() == 0  # tiles cover the exact pattern
    torch.testing.assert_close(out.double(), explicit_output(q, k, v, sel.to_mask("block")), atol=1e-5, rtol=1e-5)
    out_exact, _ = m.attend(q, k, v, granularity="exact")
    torch.testing.assert_close(out_exact.double(), explicit_output(q, k, v, sel.to_mask("exact")), atol=1e-5,
                               rtol=1e-5)
    # row-chunked execution (chunks not aligned to the 16-row blocks) gives the same result
    for gran, ref in (("block", out), ("exact", out_exact)):
        torch.testing.assert_close(prefill_attention(q, k, v, sel, granularity=gran, q_chunk=7), ref, atol=1e-6,
                                   rtol=1e-6)
    torch.testing.assert_close(sel.density_computed(q_chunk=5), sel.density_computed())


def test_measure_density_and_summary():
    q, k, _ = make_qkv(1, 4, 2, 130, seed=21)
    m = VerticalSlash(vertical_size=30, slash_size=30, last_q=32, n_local=8, block_size=16)
    sel = m.select(q, k)
    s = sparsity_summary(sel)
    assert s["paper_sparsity"] == pytest.approx(float(sel.paper_sparsity.mean()))
    assert s["density_computed"] == pytest.approx(float(sel.density_computed().mean()))
    assert m.measure_density(q, k, 30) == pytest.approx(1 - s["paper_sparsity"])
    # the uniform measure grows with the budget and reaches 1 when everything is selected
    dc = [float(VerticalSlash(vertical_size=c, slash_size=c, last_q=32, n_local=8, block_size=16)
                .select(q, k).density_computed().mean()) for c in (10, 30, 60, 130)]
    assert dc == sorted(dc) and dc[-1] == pytest.approx(1.0)


def test_block_index_hand_example():
    # block 4, n = 12, slashes {0, 5}, verticals {1, 9} (worked by hand from the merge rule)
    sel = VerticalSlashSelection(
        vertical_idx=torch.tensor([[[1, 9]]]), vertical_counts=torch.tensor([[2]]),
        slash_offsets=torch.tensor([[[0, 5]]]), slash_counts=torch.tensor([[2]]),
        seq_lens=torch.tensor([12]), pad_offsets=torch.tensor([0]), length=12, block_size=4)
    idx = sel.block_index(0)
    assert idx.range_count[0].tolist() == [1, 1, 2]
    assert idx.range_start[0, 2, :2].tolist() == [3, 8] and idx.range_end[0, 2, :2].tolist() == [7, 12]
    assert idx.range_start[0, 1, 0].item() == 0 and idx.range_end[0, 1, 0].item() == 8
    assert idx.column_count[0].tolist() == [0, 0, 1] and idx.columns[0, 2, 0].item() == 1
    assert idx.tile_count[0].tolist() == [1, 2, 2]
    mask = sel.to_mask()[0, 0]
    want = torch.zeros(12, 12, dtype=torch.bool)
    for i in range(12):
        if i < 8:
            keys = range(0, 4) if i < 4 else range(0, 8)
        else:
            keys = [1, 3, 4, 5, 6, 8, 9, 10, 11]
        for j in keys:
            want[i, j] = j <= i
    assert torch.equal(mask, want)
    assert sel.paper_sparsity is None
    assert sel.block_granular_sparsity()[0, 0].item() == pytest.approx(1 - (5 * 16 + 1 * 4) / 78)


@pytest.mark.parametrize("L,H,G", [(77, 4, 4), (130, 4, 1)])
def test_vertical_slash_dense_ratio(L, H, G):
    q, k, v = make_qkv(1, H, G, L, seed=3)
    out, sel = VerticalSlash(ratio=1, last_q=32, n_local=8, block_size=16).attend(q, k, v)
    assert torch.equal(sel.to_mask()[0, 0], causal(L))
    torch.testing.assert_close(out.double(), explicit_output(q, k, v, causal(L).expand(1, H, L, L)), atol=1e-5,
                               rtol=1e-5)
    assert torch.allclose(sel.density_computed(), torch.ones(1, H, dtype=torch.float64))


def test_vertical_slash_default_hyperparameters():
    # defaults (last_q 256, 4 sinks, 64 local, 64-wide tiles) on a 300-token row
    L, H, G = 300, 2, 1
    q, k, v = make_qkv(1, H, G, L, seed=9)
    sel = VerticalSlash(vertical_size=40, slash_size=70).select(q, k)
    p = bf_window_probs(q[0], k[0], 256)
    vs, ss = p.sum(1), bf_diag(p)
    for h in range(H):
        assert_same_topk(sel.vertical_idx[0, h].tolist(), vs[h], range(4), 40)
        assert_same_topk(sel.slash_offsets[0, h].tolist(), ss[h], range(64), 70)
        want, _ = bf_block_mask(sel.vertical_idx[0, h].tolist(), sel.slash_offsets[0, h].tolist(), L, 64)
        assert torch.equal(sel.to_mask()[0, h], want)


def bf_coverage_count(x, alpha):
    vals = sorted((float(t) for t in x), reverse=True)
    c, acc = 0, 0.0
    for t in vals:
        acc += t
        if acc <= alpha:
            c += 1
        else:
            break
    return min(c + 1, len(vals))


@pytest.mark.parametrize("L,H,G,alpha", [(77, 4, 4, 0.5), (130, 4, 1, 0.3), (130, 8, 2, 0.9)])
def test_flexprefill_selection_and_output(L, H, G, alpha):
    q, k, v = make_qkv(1, H, G, L, seed=L + 7)
    m = FlexPrefill(alpha=alpha, min_budget=16, last_q=40, n_sinks=4, n_local=8, block_size=16)
    out, sel = m.attend(q, k, v)
    p = bf_window_probs(q[0], k[0], 40)
    w = p.shape[1]
    vs, ss = p.mean(1), bf_diag(p) / w
    counts = set()
    for h in range(H):
        kv = max(16, bf_coverage_count(vs[h], alpha))
        ks = max(16, bf_coverage_count(ss[h], alpha))
        assert sel.vertical_counts[0, h].item() == kv
        assert sel.slash_counts[0, h].item() == ks
        counts.add((kv, ks))
        vi = sel.vertical_idx[0, h, :kv].tolist()
        si = sel.slash_offsets[0, h, :ks].tolist()
        assert (sel.vertical_idx[0, h, kv:] == -1).all() and (sel.slash_offsets[0, h, ks:] == -1).all()
        assert_same_topk(vi, vs[h], range(4), kv)
        assert_same_topk(si, ss[h], range(8), ks)
        want, _ = bf_block_mask(vi, si, L, 16)
        assert torch.equal(sel.to_mask()[0, h], want)
    assert len(counts) > 1 or alpha < 0.4  # budgets adapt per head
    torch.testing.assert_close(out.double(), explicit_output(q, k, v, sel.to_mask()), atol=1e-5, rtol=1e-5)


def test_flexprefill_alpha_zero_is_uniform_min_budget():
    q, k, v = make_qkv(1, 4, 2, 130, seed=11)
    sel = FlexPrefill(alpha=0.0, min_budget=17, last_q=40, n_local=8, block_size=16).select(q, k)
    assert (sel.vertical_counts == 17).all() and (sel.slash_counts == 17).all()


def test_bf16_probs_pools_rounded_window_probabilities():
    # the official code pools the window's softmax probabilities in the model dtype (bf16); the option rounds
    # them to bf16 first: selections equal the top-k of brute-force sums of rounded probabilities and differ
    # from the fp32 ones in some heads (default: fp32)
    L, H, kv = 600, 8, 40
    q, k, v = make_qkv(1, H, 2, L, seed=5)
    fp32 = VerticalSlash(vertical_size=kv, slash_size=kv, last_q=64, n_local=8, block_size=16).select(q, k)
    sel = VerticalSlash(vertical_size=kv, slash_size=kv, last_q=64, n_local=8, block_size=16,
                        bf16_probs=True).select(q, k)
    p = bf_window_probs(q[0], k[0], 64).to(torch.bfloat16).double()
    vs, ss = p.sum(1), bf_diag(p)
    changed = 0
    for h in range(H):
        assert_same_topk(sel.vertical_idx[0, h].tolist(), vs[h], range(4), kv)
        assert_same_topk(sel.slash_offsets[0, h].tolist(), ss[h], range(8), kv)
        changed += not (torch.equal(sel.vertical_idx[0, h], fp32.vertical_idx[0, h])
                        and torch.equal(sel.slash_offsets[0, h], fp32.slash_offsets[0, h]))
    assert changed >= 1


def test_flexprefill_refuses_min_budget_below_one_block():
    # below one block the official code's behaviour is not reproduced: refused, here and in the study config
    with pytest.raises(ValueError, match="min_budget must be at least one block"):
        FlexPrefill(alpha=0.5, min_budget=63)
    assert FlexPrefill(alpha=0.5, min_budget=64).min_budget == 64
    with pytest.raises(ValueError, match="min_budget must be at least one block"):
        FlexPrefill(alpha=0.5, min_budget=15, block_size=16)


def test_flexprefill_min_budget_below_one_block_refused_by_the_study(tiny_model):
    from workflow_scripts.config import ConfigError, Study

    cfg = {"models": {"tiny": {"path": str(tiny_model)}}, "tasks": ["ruler_niah"], "lengths": [1024],
           "methods": {"flexprefill": {"ratios": [4], "params": {"min_budget": 32}}}}
    with pytest.raises(ConfigError, match=r"^methods\.flexprefill\.params\.min_budget: must be at least one block"):
        Study(cfg)
    cfg["methods"] = {"flexprefill+quest": {"ratios": [[4, 4]], "params": {"flexprefill": {"min_budget": 32}}}}
    with pytest.raises(ConfigError, match=r"^methods\.flexprefill\+quest\.params\.flexprefill\.min_budget"):
        Study(cfg)
    cfg["methods"] = {"flexprefill": {"ratios": [4], "params": {"min_budget": 64}}}
    Study(cfg)


def test_flexprefill_dense_ratio():
    L, H = 77, 4
    q, k, v = make_qkv(1, H, 1, L, seed=12)
    out, sel = FlexPrefill(ratio=1, last_q=40, n_local=8, block_size=16).attend(q, k, v)
    torch.testing.assert_close(out.double(), explicit_output(q, k, v, causal(L).expand(1, H, L, L)), atol=1e-5,
                               rtol=1e-5)


def test_block_local_mask_of_any_row_range_matches_the_block_index():
    """VerticalSlashSelection.local_mask (block granularity) for arbitrary row ranges of left-padded rows equals
    the mask written token by token from the block index: query i sees key j iff j <= i and j lies in one of the
    key ranges of i's query block or is one of its extra columns."""
    q, k, _ = make_qkv(2, 4, 2, 150, seed=5)
    kpm = torch.ones(2, 150, dtype=torch.bool)
    kpm[1, :37] = False
    sel = VerticalSlash(vertical_size=12, slash_size=20, last_q=32, n_local=8, block_size=16).select(q, k, kpm)
    g = torch.Generator().manual_seed(2)
    for b in range(2):
        n, bs, idx = int(sel.seq_lens[b]), sel.block_size, sel.block_index(b)
        for _ in range(4):
            q0 = int(torch.randint(0, n, (1,), generator=g))
            q1 = int(torch.randint(q0 + 1, n + 1, (1,), generator=g))
            want = torch.zeros(4, q1 - q0, n, dtype=torch.bool)
            for h in range(4):
                for i in range(q0, q1):
                    m = i // bs
                    ranges = [(int(s), int(e)) for s, e in zip(idx.range_start[h, m], idx.range_end[h, m]) if s >= 0]
                    cols = {int(c) for c in idx.columns[h, m] if c >= 0}
                    for j in range(i + 1):
                        want[h, i - q0, j] = j in cols or any(s <= j < e for s, e in ranges)
            assert torch.equal(sel.local_mask(b, q0, q1), want), (b, q0, q1)
