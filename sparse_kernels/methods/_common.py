"""Helpers shared by the method implementations (not part of the public API)."""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from ..budgets import is_dense_ratio
from ..selection import padding_info

PHASE_PREFILL = "prefill"
PHASE_KV_COMPRESSION = "kv_compression"
PHASE_DECODE = "decode"


def resolve_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def check_ratio(ratio: float | None) -> float | None:
    if ratio is None:
        return None
    ratio = float(ratio)
    if not math.isfinite(ratio) or ratio < 1.0:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    return ratio


def dense(ratio: float | None) -> bool:
    return is_dense_ratio(ratio)


def check_qk(q: torch.Tensor, k: torch.Tensor, same_length: bool = True) -> tuple[int, int, int, int, int]:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("q and k must be [B, H, L, D] / [B, Hkv, L, D]")
    B, H, Lq, D = q.shape
    Bk, G, Lk, Dk = k.shape
    if B != Bk or D != Dk:
        raise ValueError("q and k disagree on batch or head dim")
    if H % G:
        raise ValueError(f"q heads ({H}) must be a multiple of kv heads ({G})")
    if same_length and Lq != Lk:
        raise ValueError("prefill/compression expects q and k over the same (padded) sequence")
    return B, H, G, Lk, D


def rows(q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None
         ) -> tuple[torch.Tensor, torch.Tensor, Iterator[tuple[int, int, int, torch.Tensor, torch.Tensor]]]:
    """(pad_offsets, seq_lens, iterator of (b, offset, n, q_row [H, n, D], k_row [Hkv, n, D])).

    Each batch row is cut to its real tokens, so selections are computed exactly as for an unpadded
    single sequence."""
    B, L = q.shape[0], k.shape[2]
    off, lens = padding_info(key_padding_mask, B, L, device=q.device)

    def it():
        for b in range(B):
            o, n = int(off[b]), int(lens[b])
            yield b, o, n, q[b, :, o:o + n], k[b, :, o:o + n]

    return off, lens, it()


def window_probs(q_row: torch.Tensor, k_row: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    """Softmax probabilities of the last ``window`` queries of a row against all of its keys.

    q_row [H, n, D], k_row [Hkv, n, D] -> [H, w, n] fp32 with w = min(window, n); query i sits at
    position n - w + i and sees keys j <= n - w + i (causal corner). GQA: q head h uses kv head h // g."""
    H, n, _ = q_row.shape
    G = k_row.shape[0]
    w = min(int(window), n)
    qw = q_row[:, n - w:, :].float()
    kk = k_row.float().repeat_interleave(H // G, dim=0)
    s = torch.matmul(qw, kk.transpose(-1, -2)) * scale  # [H, w, n]
    qpos = torch.arange(n - w, n, device=q_row.device).view(-1, 1)
    kpos = torch.arange(n, device=q_row.device).view(1, -1)
    s = s.masked_fill(kpos > qpos, float("-inf"))
    return torch.softmax(s, dim=-1)


def diagonal_sums(p: torch.Tensor) -> torch.Tensor:
    """Sum of p [H, w, n] (last-w-query window of a length-n row) along each diagonal offset
    o = q_pos - k_pos, for o = 0..n-1 -> [H, n].

    Implementation: flip the key axis and zero-pad it by w; row i then holds offset o at column
    o + (w-1-i), so a strided view with row stride (n + w - 1) lines all offsets up in columns."""
    H, w, n = p.shape
    x = F.pad(p.flip(-1), (0, w)).contiguous()  # [H, w, n + w]
    view = x.as_strided((H, w, n), (w * (n + w), n + w - 1, 1), x.storage_offset() + w - 1)
    return view.sum(1)


def avg_pool_scores(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """1-D average pool along the last axis, stride 1, zero padding kernel//2 counted in the average."""
    if kernel_size <= 1:
        return x
    if kernel_size % 2 == 0:
        raise ValueError("kernel_size must be odd")
    lead = x.shape[:-1]
    y = F.avg_pool1d(x.reshape(-1, 1, x.shape[-1]), kernel_size, stride=1, padding=kernel_size // 2,
                     count_include_pad=True)
    return y.reshape(*lead, x.shape[-1])


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the top-k along the last axis, returned in ascending index order."""
    k = max(0, min(int(k), scores.shape[-1]))
    idx = torch.topk(scores, k, dim=-1).indices
    return torch.sort(idx, dim=-1).values
