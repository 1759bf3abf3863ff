"""Exact (dense-math) reference executors: attention restricted to a boolean mask, on any device.

These are the ground truth for future Triton kernels and the executor used by the CPU tests. Memory is
O(B * H * Lq * Lk), so use them for short sequences or decode steps.
"""

from __future__ import annotations

import math

import torch

from .selection import (DEFAULT_Q_CHUNK, BlockSelection, KVSelection, QuestSelection, VerticalSlashSelection,
                        padding_info)


def _expand_kv(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    hkv = x.shape[1]
    if num_q_heads % hkv:
        raise ValueError(f"q heads ({num_q_heads}) must be a multiple of kv heads ({hkv})")
    g = num_q_heads // hkv
    return x if g == 1 else x.repeat_interleave(g, dim=1)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float | None = None, softcap: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale, restricted to ``mask``) v.

    q [B, H, Lq, D]; k, v [B, Hkv, Lk, D] with H = Hkv * groups (q head h uses kv head h // groups);
    mask [B, H, Lq, Lk] bool (True = attend; broadcastable). Scores and softmax in fp32; rows without
    any kept key return 0. Output has q's dtype. ``softcap`` (Gemma 2's logit soft-capping): scores become
    ``softcap * tanh(scores / softcap)`` before the softmax."""
    B, H, Lq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    kf = _expand_kv(k, H).float()
    vf = _expand_kv(v, H).float()
    s = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    mask = mask.to(torch.bool)
    s = s.masked_fill(~mask, float("-inf"))
    any_kept = mask.any(-1, keepdim=True)
    s = torch.where(any_kept, s, torch.zeros_like(s))
    p = torch.softmax(s, dim=-1)
    p = torch.where(any_kept & mask, p, torch.zeros_like(p))
    return torch.matmul(p, vf).to(q.dtype)


def causal_mask(batch: int, heads: int, q_len: int, k_len: int, key_padding_mask: torch.Tensor | None = None,
                device=None) -> torch.Tensor:
    """Dense causal mask [B, H, Lq, Lk] (queries at the last Lq positions), padded keys and padded
    query rows removed (left padding)."""
    qpos = torch.arange(k_len - q_len, k_len, device=device).view(-1, 1)
    kpos = torch.arange(k_len, device=device).view(1, -1)
    m = (kpos <= qpos).view(1, 1, q_len, k_len).expand(batch, heads, q_len, k_len)
    if key_padding_mask is not None:
        kp = key_padding_mask.to(torch.bool).to(m.device)
        m = m & kp.view(batch, 1, 1, k_len) & kp[:, k_len - q_len:].view(batch, 1, q_len, 1)
    return m.contiguous()


def dense_attention(q, k, v, key_padding_mask=None, scale=None) -> torch.Tensor:
    """Dense causal attention (prefill when Lq = Lk, decode when Lq = 1)."""
    B, H, Lq, _ = q.shape
    return masked_attention(q, k, v, causal_mask(B, H, Lq, k.shape[2], key_padding_mask, q.device), scale)


def prefill_attention(q, k, v, selection, scale=None, granularity: str = "block",
                      q_chunk: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """Output of a prefill selection (BlockSelection or VerticalSlashSelection); q, k, v share the padded
    sequence axis. For VerticalSlashSelection, ``granularity`` picks the kernel-faithful tile layout
    ("block", default) or only the exact columns/diagonals ("exact").

    Computed batch row by batch row and ``q_chunk`` query rows at a time (default 1024), so memory is
    O(H * q_chunk * n) rather than O(B * H * L * L). Padded query rows get 0."""
    if isinstance(selection, VerticalSlashSelection):
        kw = {"granularity": granularity}
    elif isinstance(selection, BlockSelection):
        kw = {}
    else:
        raise TypeError(f"not a prefill selection: {type(selection).__name__}")
    if selection.length != q.shape[2] or selection.length != k.shape[2]:
        raise ValueError("q/k length does not match the selection")
    out = torch.zeros_like(q)
    chunk = DEFAULT_Q_CHUNK if q_chunk is None else int(q_chunk)
    for b, o, n, q0, q1, m in selection.iter_row_masks(chunk, **kw):
        out[b:b + 1, :, o + q0:o + q1] = masked_attention(
            q[b:b + 1, :, o + q0:o + q1], k[b:b + 1, :, o:o + n], v[b:b + 1, :, o:o + n],
            m.unsqueeze(0).to(q.device), scale, softcap)
    return out


def windowed_attention(q, k, v, key_padding_mask=None, scale=None, window: int | None = None,
                       softcap: float | None = None, q_chunk: int | None = None) -> torch.Tensor:
    """Dense causal prefill attention of layers that transformers' SDPA path does not cover: a sliding
    window (query i attends keys j with ``i - window < j <= i``, transformers' ``sliding_window_overlay``)
    and/or logit soft-capping. q, k, v share the (left-padded) sequence axis; computed per batch row and
    ``q_chunk`` query rows at a time over only the keys the window can reach (memory O(H * q_chunk *
    (q_chunk + window))). Padded query rows get 0."""
    B, H, L, _ = q.shape
    chunk = DEFAULT_Q_CHUNK if q_chunk is None else int(q_chunk)
    off, lens = padding_info(key_padding_mask, B, L)
    out = torch.zeros_like(q)
    for b, (o, n) in enumerate(zip(off.tolist(), lens.tolist())):
        for q0 in range(0, n, chunk):
            q1 = min(n, q0 + chunk)
            k0 = 0 if window is None else max(0, q0 - int(window) + 1)
            qi = torch.arange(q0, q1, device=q.device).view(-1, 1)
            kj = torch.arange(k0, q1, device=q.device).view(1, -1)
            m = kj <= qi
            if window is not None:
                m = m & (kj > qi - int(window))
            out[b:b + 1, :, o + q0:o + q1] = masked_attention(
                q[b:b + 1, :, o + q0:o + q1], k[b:b + 1, :, o + k0:o + q1], v[b:b + 1, :, o + k0:o + q1],
                m.view(1, 1, q1 - q0, q1 - k0), scale, softcap)
    return out


def kv_compressed_attention(q, k, v, selection: KVSelection, scale=None) -> torch.Tensor:
    """Decode queries q [B, H, Lq, D] against the full cache k, v [B, Hkv, Lk, D] (padded prompt of
    ``selection.length`` positions + Lk - length decode tokens), attending only the kept prompt tokens
    plus all decode tokens."""
    B, H, Lq, _ = q.shape
    mask = selection.to_mask(H, Lq, k.shape[2]).to(q.device)
    return masked_attention(q, k, v, mask, scale)


def quest_attention(q, k, v, selection: QuestSelection, scale=None) -> torch.Tensor:
    """One decode step q [B, H, 1, D] over the selected pages of the full cache k, v [B, Hkv, Lk, D]."""
    if k.shape[2] != selection.length:
        raise ValueError("cache length does not match the selection")
    return masked_attention(q, k, v, selection.to_mask().to(q.device), scale)


__all__ = [
    "masked_attention", "causal_mask", "dense_attention", "prefill_attention", "windowed_attention",
    "kv_compressed_attention",
    "quest_attention", "padding_info",
]
