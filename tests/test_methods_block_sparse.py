"""Block-Sparse against a brute-force computation written from the spec (§2.3)."""

import math

import pytest
import torch

from sparse_kernels.budgets import block_sparse_density
from sparse_kernels.methods import BlockSparse
from sparse_kernels.reference import prefill_attention
from sparse_kernels.selection import BlockSelection
from tests.bruteforce import explicit_output, make_qkv


def bf_blocks(q, k, top_k, bs):
    """Per head, per query block: the expected set of key blocks."""
    H, n, D = q.shape
    g = H // k.shape[0]
    nb = -(-n // bs)

    def pooled(x, b):  # zero padded mean over bs slots
        return x[b * bs: min((b + 1) * bs, n)].double().sum(0) / bs

    out = []
    for h in range(H):
        qp = [pooled(q[h], b) for b in range(nb)]
        kp = [pooled(k[h // g], b) for b in range(nb)]
        rows = []
        for m in range(nb):
            forced = {m, 0} | ({m - 1} if m >= 1 else set())
            kk = min(top_k, m + 1)
            cand = sorted((j for j in range(m + 1) if j not in forced), key=lambda j: -float(qp[m] @ kp[j]))
            rows.append((forced | set(cand[: kk - len(forced)]), [float(qp[m] @ kp[j]) for j in range(m + 1)]))
        out.append(rows)
    return out


def token_mask(blocks, n, bs):
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        keys = [j for blk in blocks[i // bs] for j in range(blk * bs, min((blk + 1) * bs, n)) if j <= i]
        m[i, keys] = True
    return m


@pytest.mark.parametrize("L,H,G,top_k", [(77, 4, 4, 3), (130, 4, 1, 4), (130, 8, 2, 5), (200, 2, 1, 7)])
def test_block_sparse_selection_and_output(L, H, G, top_k):
    q, k, v = make_qkv(1, H, G, L, seed=L + top_k)
    out, sel = BlockSparse(top_chunks=top_k).attend(q, k, v)
    assert isinstance(sel, BlockSelection) and sel.block_size == 16
    want = bf_blocks(q[0], k[0], top_k, 16)
    nb = -(-L // 16)
    mask = sel.to_mask()[0]
    for h in range(H):
        for m in range(nb):
            got = sel.indices[0, h, m, : sel.counts[0, h, m]].tolist()
            assert got == sorted(got) and all(j <= m for j in got)  # causal, sorted
            assert sel.counts[0, h, m].item() == min(m + 1, top_k)
            exp_set, scores = want[h][m]
            if set(got) != exp_set:  # tolerate exact near-ties only
                lo = min(scores[j] for j in exp_set)
                assert all(abs(scores[j] - lo) < 1e-9 for j in set(got) ^ exp_set)
        blocks = [set(sel.indices[0, h, m, : sel.counts[0, h, m]].tolist()) for m in range(nb)]
        assert torch.equal(mask[h], token_mask(blocks, L, 16))
    assert not (mask & ~torch.ones(L, L, dtype=torch.bool).tril()).any()
    torch.testing.assert_close(out.double(), explicit_output(q, k, v, sel.to_mask()), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefill_attention(q, k, v, sel, q_chunk=9), out, atol=1e-6, rtol=1e-6)
    # analytic paper sparsity and the measured computed density
    kept_blocks = sum(min(m + 1, top_k) for m in range(nb))
    assert sel.paper_sparsity[0, 0].item() == pytest.approx(1 - kept_blocks / (nb * (nb + 1) / 2))
    assert sel.paper_sparsity[0, 0].item() == pytest.approx(1 - block_sparse_density(top_k, nb))
    dc = sel.density_computed()[0]
    assert torch.allclose(dc, mask.sum((-1, -2)).double() / (L * (L + 1) / 2))


@pytest.mark.parametrize("L,H,G", [(77, 4, 4), (130, 4, 1)])
def test_block_sparse_dense(L, H, G):
    q, k, v = make_qkv(1, H, G, L, seed=5)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    for m in (BlockSparse(ratio=1), BlockSparse(top_chunks=100)):
        out, sel = m.attend(q, k, v)
        assert torch.equal(sel.to_mask()[0, 0], causal)
        torch.testing.assert_close(out.double(), explicit_output(q, k, v, causal.expand(1, H, L, L)), atol=1e-5,
                                   rtol=1e-5)
        assert torch.allclose(sel.density_computed(), torch.ones(1, H, dtype=torch.float64))


def test_forced_blocks_always_kept():
    # make block scores strongly prefer a far block: forced diagonal, sub-diagonal and sink still win
    L, H = 96, 1
    q, k, v = make_qkv(1, H, 1, L, seed=6)
    k[0, 0, 32:48] += 10 * q[0, 0].mean(0)  # block 2 looks very attractive to everyone
    sel = BlockSparse(top_chunks=3).select(q, k)
    for m in range(6):
        got = set(sel.indices[0, 0, m, : sel.counts[0, 0, m]].tolist())
        assert {m, max(m - 1, 0), 0} <= got
        assert len(got) == min(m + 1, 3)


def test_causal_pairs_closed_form_matches_enumeration():
    """The closed form behind density_computed (Block-Sparse tiles, Vertical-Slash ranges) against counting
    the pairs one by one, including empty, reversed and clipped spans."""
    from sparse_kernels.selection import _causal_pairs

    g = torch.Generator().manual_seed(0)
    q0, k0 = torch.randint(0, 40, (2, 600), generator=g)
    q1 = q0 + torch.randint(-3, 20, (600,), generator=g)
    k1 = k0 + torch.randint(-3, 30, (600,), generator=g)
    got = _causal_pairs(q0, q1, k0, k1)
    want = torch.tensor([sum(1 for q in range(a, b) for k in range(c, d) if k <= q)
                         for a, b, c, d in zip(q0.tolist(), q1.tolist(), k0.tolist(), k1.tolist())])
    assert torch.equal(got, want)


def test_local_mask_of_any_row_range_matches_token_enumeration():
    """BlockSelection.local_mask for arbitrary (unaligned) query ranges, padded rows and -1 holes equals the mask
    written token by token from the layout: query i sees key j iff j <= i and j's block is kept for i's block."""
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        bs, L, H, B = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 50, (1,), generator=g)), 2, 2
        nb_max = -(-L // bs)
        K = int(torch.randint(1, nb_max + 1, (1,), generator=g))
        lens = torch.randint(0, L + 1, (B,), generator=g)
        idx = torch.full((B, H, nb_max, K), -1)
        for b in range(B):
            nb = -(-int(lens[b]) // bs)
            if nb:
                idx[b] = torch.randint(-1, nb, (H, nb_max, K), generator=g)
        sel = BlockSelection(block_size=bs, indices=idx, counts=(idx >= 0).sum(-1), seq_lens=lens,
                             pad_offsets=L - lens, length=L)
        for b in range(B):
            n = int(lens[b])
            q0 = int(torch.randint(0, n + 1, (1,), generator=g))
            q1 = int(torch.randint(q0, n + 1, (1,), generator=g))
            want = torch.zeros(H, q1 - q0, n, dtype=torch.bool)
            for h in range(H):
                for i in range(q0, q1):
                    kept = set(idx[b, h, i // bs].tolist()) - {-1}
                    for j in range(i + 1):
                        want[h, i - q0, j] = (j // bs) in kept
            assert torch.equal(sel.local_mask(b, q0, q1), want), (bs, L, n, q0, q1)
