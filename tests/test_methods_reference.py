"""Reference executor: exact masked attention with GQA, fp32 softmax and empty rows -> 0."""

import math

import pytest
import torch

from sparse_kernels.reference import causal_mask, dense_attention, masked_attention


def loop_attention(q, k, v, mask, scale):
    """Per-(b, h, i) attention written with Python loops over the kept keys."""
    B, H, Lq, D = q.shape
    g = H // k.shape[1]
    out = torch.zeros(B, H, Lq, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                keys = [j for j in range(k.shape[2]) if mask[b, h, i, j]]
                if not keys:
                    continue
                s = torch.tensor([float(q[b, h, i].double() @ k[b, h // g, j].double()) * scale for j in keys],
                                 dtype=torch.float64)
                w = torch.exp(s - s.max())
                w = w / w.sum()
                out[b, h, i] = sum(w[t] * v[b, h // g, j].double() for t, j in enumerate(keys))
    return out


@pytest.mark.parametrize("H,G", [(2, 2), (4, 1)])
def test_masked_attention_matches_loops(H, G):
    g = torch.Generator().manual_seed(0)
    B, Lq, Lk, D = 2, 5, 9, 8
    q = torch.randn(B, H, Lq, D, generator=g)
    k = torch.randn(B, G, Lk, D, generator=g)
    v = torch.randn(B, G, Lk, D, generator=g)
    mask = torch.rand(B, H, Lq, Lk, generator=g) < 0.5
    mask[0, 0, 1] = False  # an empty row -> zeros, not NaN
    scale = 0.3
    out = masked_attention(q, k, v, mask, scale)
    assert not torch.isnan(out).any()
    assert torch.all(out[0, 0, 1] == 0)
    torch.testing.assert_close(out.double(), loop_attention(q, k, v, mask, scale), atol=1e-5, rtol=1e-5)


def test_dense_causal_and_padding():
    g = torch.Generator().manual_seed(1)
    B, H, G, L, D = 2, 4, 2, 7, 8
    q = torch.randn(B, H, L, D, generator=g)
    k = torch.randn(B, G, L, D, generator=g)
    v = torch.randn(B, G, L, D, generator=g)
    kpm = torch.ones(B, L, dtype=torch.bool)
    kpm[1, :3] = False
    m = causal_mask(B, H, L, L, kpm)
    assert not m[1, :, :3].any() and not m[1, :, :, :3].any()
    assert torch.equal(m[0, 0], torch.ones(L, L, dtype=torch.bool).tril())
    out = dense_attention(q, k, v, kpm)
    torch.testing.assert_close(out.double(), loop_attention(q, k, v, m, 1 / math.sqrt(D)), atol=1e-5, rtol=1e-5)
    # row 1's real part equals the unpadded computation
    ref = dense_attention(q[1:, :, 3:], k[1:, :, 3:], v[1:, :, 3:])
    torch.testing.assert_close(out[1:, :, 3:], ref, atol=1e-6, rtol=1e-6)
    assert torch.all(out[1, :, :3] == 0)


def test_bf16_inputs_use_fp32_softmax():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 4, 8, generator=g).bfloat16()
    k = torch.randn(1, 2, 6, 8, generator=g).bfloat16()
    v = torch.randn(1, 2, 6, 8, generator=g).bfloat16()
    mask = causal_mask(1, 2, 4, 6)
    out = masked_attention(q, k, v, mask)
    assert out.dtype == torch.bfloat16
    ref = loop_attention(q.float(), k.float(), v.float(), mask, 1 / math.sqrt(8))
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
