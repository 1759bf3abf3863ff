"""Independent brute-force references shared by the method tests (written from the spec, not from our code)."""

from __future__ import annotations

import math

import torch


def make_qkv(B, H, G, L, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, D, generator=g), torch.randn(B, G, L, D, generator=g),
            torch.randn(B, G, L, D, generator=g))


def bf_window_probs(q, k, w):
    """[H, w, n] probabilities of the last w queries, written row by row."""
    H, n, D = q.shape
    g = H // k.shape[0]
    w = min(w, n)
    p = torch.zeros(H, w, n, dtype=torch.float64)
    for h in range(H):
        for i in range(w):
            pos = n - w + i
            s = (k[h // g, : pos + 1].double() @ q[h, pos].double()) / math.sqrt(D)
            e = torch.exp(s - s.max())
            p[h, i, : pos + 1] = e / e.sum()
    return p


def explicit_output(q, k, v, mask):
    """softmax over masked scores written out explicitly (GQA by index), zero rows -> 0.

    q [B, H, Lq, D]; k, v [B, G, Lk, D]; mask [B, H, Lq, Lk] bool.
    """
    B, H, L, D = q.shape
    g = H // k.shape[1]
    kk = k[:, torch.arange(H) // g].double()
    vv = v[:, torch.arange(H) // g].double()
    s = torch.einsum("bhid,bhjd->bhij", q.double(), kk) / math.sqrt(D)
    s = torch.where(mask, s, torch.full_like(s, -1e300))
    e = torch.exp(s - s.max(-1, keepdim=True).values) * mask
    den = e.sum(-1, keepdim=True)
    return torch.einsum("bhij,bhjd->bhid", e / torch.where(den > 0, den, torch.ones_like(den)), vv)
