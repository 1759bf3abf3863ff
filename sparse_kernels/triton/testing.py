"""Shared inputs / tolerances of the Triton kernel tests (``tests/test_triton_*.py``; interpreter on CPU:
fp32 and fp16 only). Importing this module does not import triton."""

from __future__ import annotations

import torch

# fp16 kernels round P to fp16 before P @ V (as flash attention does); the reference keeps fp32
TOL = {torch.float32: dict(atol=3e-5, rtol=1e-4), torch.float16: dict(atol=4e-3, rtol=1e-2)}


def qkv(B, H, G, L, D, dtype, seed, Lq=None):
    g = torch.Generator().manual_seed(seed)
    Lq = L if Lq is None else Lq
    q = torch.randn(B, H, Lq, D, generator=g).to(dtype)
    k = torch.randn(B, G, L, D, generator=g).to(dtype)
    v = torch.randn(B, G, L, D, generator=g).to(dtype)
    return q, k, v


def left_pad_mask(B, L, pads):
    m = torch.ones(B, L, dtype=torch.bool)
    for b, p in enumerate(pads):
        m[b, :p] = False
    return m


def check(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])
