"""Triton observation-window scoring (SnapKV / Ada-SnapKV / per-head sums) vs the methods' torch scores, under
the Triton interpreter (fp32 / fp16)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_kernels.methods import AdaSnapKV, SnapKV  # noqa: E402
from sparse_kernels.methods._common import window_probs  # noqa: E402
from sparse_kernels.triton.snapkv import (MODE_HEAD_SUM, MODE_MAX, MODE_MEAN_SUM, snapkv_compress,  # noqa: E402
                                          snapkv_token_scores, window_scores)
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
