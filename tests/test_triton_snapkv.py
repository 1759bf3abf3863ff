"""Triton observation-window scoring (SnapKV / Ada-SnapKV / per-head sums) vs the methods' torch scores, under
the Triton interpreter (fp32 / fp16)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_kernels.methods import AdaSnapKV, SnapKV  # noqa: E402
from sparse_kernels.methods._common import diagonal_sums, window_probs  # noqa: E402
from sparse_kernels.triton.snapkv import (MODE_HEAD_SUM, MODE_MAX, MODE_MEAN_SUM, snapkv_compress,  # noqa: E402
                                          snapkv_token_scores, vs_window_sums, window_scores)
from sparse_kernels.triton.testing import left_pad_mask, qkv  # noqa: E402

FP32, FP16 = torch.float32, torch.float16


@pytest.mark.parametrize("H,G,n,w,dtype", [(4, 4, 77, 32, FP32), (4, 1, 130, 48, FP16), (7, 1, 100, 100, FP32)],
                         ids=["gqa1-L77-fp32", "gqa4-L130-fp16", "gqa7-window=n-fp32"])
def test_window_scores_all_modes(H, G, n, w, dtype):
    q, k, _ = qkv(1, H, G, n, 32, dtype, seed=n)
    qr, kr = q[0], k[0]
    scale = 32 ** -0.5
    p = torch.cat([window_probs(qr[j * (H // G):(j + 1) * (H // G)], kr[j:j + 1], w, scale) for j in range(G)])
    g = H // G
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == FP32 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(window_scores(qr, kr, w, scale, MODE_MEAN_SUM, chunk=64),
                               p.view(G, g, -1, n).mean(1).sum(1), **tol)
    torch.testing.assert_close(window_scores(qr, kr, w, scale, MODE_MAX), p.amax(1).view(G, g, n).amax(1), **tol)
    torch.testing.assert_close(window_scores(qr, kr, w, scale, MODE_HEAD_SUM), p.sum(1), **tol)


@pytest.mark.parametrize("cls,dtype", [(SnapKV, FP32), (AdaSnapKV, FP32), (SnapKV, FP16)],
                         ids=["snapkv-fp32", "ada-fp32", "snapkv-fp16"])
def test_snapkv_compress_matches_method(cls, dtype):
    q, k, _ = qkv(2, 4, 2, 120, 16, dtype, seed=7)
    kpm = left_pad_mask(2, 120, (0, 25))
    m = cls(token_capacity=40, window=24, local_window=8, n_sinks=2, kernel_size=5)
    want = m.compress(q, k, kpm)
    got = snapkv_compress(m, q, k, kpm)
    s_ref = m.token_scores(q[0], k[0], 16 ** -0.5)
    s_tri = snapkv_token_scores(m, q[0], k[0], 16 ** -0.5)
    fin = torch.isfinite(s_ref)
    assert torch.equal(fin, torch.isfinite(s_tri))
    torch.testing.assert_close(s_tri[fin], s_ref[fin], atol=1e-5, rtol=1e-4)
    assert torch.equal(got.indices, want.indices) and torch.equal(got.lengths, want.lengths)
    assert torch.equal(got.pad_offsets, want.pad_offsets) and torch.equal(got.seq_lens, want.seq_lens)


@pytest.mark.parametrize("H,G,n,w,block,dtype", [(4, 4, 77, 32, 16, FP32), (4, 1, 130, 48, 32, FP16),
                                                 (7, 1, 100, 100, 16, FP32), (8, 2, 45, 64, 16, FP32),
                                                 (4, 4, 1, 8, 16, FP32)],
                         ids=["gqa1-L77-fp32", "gqa4-L130-fp16", "gqa7-window=n-fp32", "gqa4-window>n", "L1"])
def test_vs_window_sums_match_the_probabilities(H, G, n, w, block, dtype):
    """Column sums and diagonal sums of the window softmax (V-S / FlexPrefill estimation) without the [H, w, n]
    matrix, against the torch estimation: several query and offset tiles, tiles past the row, GQA 1 / 4 / 7."""
    q, k, _ = qkv(1, H, G, n, 32, dtype, seed=n + w)
    qr, kr = q[0], k[0]
    scale = 32 ** -0.5
    p = torch.cat([window_probs(qr[j * (H // G):(j + 1) * (H // G)], kr[j:j + 1], w, scale) for j in range(G)])
    vsum, dsum = vs_window_sums(qr, kr, w, scale, block_m=block, block_n=block, chunk=2 * block,
                                diag_block=block)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == FP32 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(vsum, p.sum(1), **tol)
    torch.testing.assert_close(dsum, diagonal_sums(p), **tol)
    # every window query's probabilities sum to 1, along the columns and along the diagonals alike
    torch.testing.assert_close(dsum.sum(-1), torch.full((H,), float(min(w, n))), **tol)


def test_accelerated_flexprefill_estimates_on_the_gpu_like_the_reference():
    from sparse_kernels.methods import FlexPrefill
    from sparse_kernels.triton import accelerate

    q, k, _ = qkv(2, 4, 2, 96, 16, FP32, seed=3)
    kpm = left_pad_mask(2, 96, (0, 21))
    m = FlexPrefill(alpha=0.9, min_budget=32, last_q=32, n_local=4, block_size=32)
    fast = accelerate(m)
    torch.testing.assert_close(fast.row_scores(q[0], k[0])[1], m.row_scores(q[0], k[0])[1], atol=1e-6, rtol=1e-5)
    a, b = m.select(q, k, kpm), fast.select(q, k, kpm)
    assert torch.equal(a.vertical_counts, b.vertical_counts) and torch.equal(a.slash_counts, b.slash_counts)
    assert torch.equal(a.vertical_idx, b.vertical_idx) and torch.equal(a.slash_offsets, b.slash_offsets)
