"""SnapKV: one-off KV-cache eviction after a dense prefill (spec §2.4)."""

from __future__ import annotations

import torch

from ..budgets import snapkv_capacity
from ..reference import kv_compressed_attention
from ..selection import KVSelection, pad_stack
from ._common import (PHASE_KV_COMPRESSION, avg_pool_scores, check_qk, check_ratio, dense, resolve_scale, rows,
                      topk_sorted, window_probs)


class SnapKV:
    """SnapKV: score prompt tokens with the last ``window`` queries, keep the top ``C`` per kv head.

    Score per (kv head, token) = sum over the window queries of the mean over the group's q heads of the
    softmax probabilities; smoothed by a stride-1 average pool of width ``kernel_size`` (zero padding
    counted); the last ``local_window`` and first ``n_sinks`` tokens are forced. Every head keeps
    min(C, n) tokens, stored in positional order.

    Budget: ``token_capacity`` C, or ``ratio``: C = floor(rho * L) at ``nominal_length`` (the row's
    length when None), see :func:`budgets.snapkv_capacity`. ``ratio == 1`` keeps everything.
    ``paper_sparsity`` = 1 - min(C, n)/n (nominal)."""

    name = "snapkv"
    phase = PHASE_KV_COMPRESSION

    def __init__(self, ratio: float | None = None, nominal_length: int | None = None,
                 token_capacity: int | None = None, window: int = 256, kernel_size: int = 21,
                 local_window: int = 128, n_sinks: int = 4):
        self.ratio = check_ratio(ratio)
        self.nominal_length = nominal_length
        if self.ratio is not None and token_capacity is not None:
            raise ValueError("give either ratio or token_capacity, not both")
        if self.ratio is None and token_capacity is None:
            raise ValueError("SnapKV needs ratio or token_capacity")
        self.token_capacity = None if token_capacity is None else int(token_capacity)
        if self.ratio is not None and not dense(self.ratio) and nominal_length is not None:
            self.token_capacity = snapkv_capacity(nominal_length, self.ratio)
        self.window = int(window)
        self.kernel_size = int(kernel_size)
        self.local_window = int(local_window)
        self.n_sinks = int(n_sinks)
        if self.kernel_size > 1 and self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")
        if self.token_capacity is not None and self.token_capacity <= self.local_window + self.n_sinks:
            raise ValueError(f"token_capacity must exceed local_window + n_sinks "
                             f"({self.local_window + self.n_sinks}), got {self.token_capacity}")

    def capacity(self, n: int) -> int:
        """Per-head capacity C for a row of real prompt length n (may exceed n: then all is kept)."""
        if dense(self.ratio):
            return n
        if self.token_capacity is not None:
            return self.token_capacity
        c = snapkv_capacity(n, self.ratio)
        if c < n and c <= self.local_window + self.n_sinks:
            raise ValueError(f"capacity {c} must exceed local_window + n_sinks ({self.local_window + self.n_sinks})")
        return c

    def _raw_scores(self, p: torch.Tensor, groups: int) -> torch.Tensor:
        """[Hkv, n] importance from window probabilities p [H, w, n]."""
        H, w, n = p.shape
        return p.view(H // groups, groups, w, n).mean(1).sum(1)

    def token_scores(self, q_row: torch.Tensor, k_row: torch.Tensor, scale: float) -> torch.Tensor:
        """[Hkv, n] pooled scores with forced tokens at +inf."""
        H, n, _ = q_row.shape
        G = k_row.shape[0]
        g = H // G
        raw = torch.cat([self._raw_scores(window_probs(q_row[j * g:(j + 1) * g], k_row[j:j + 1], self.window, scale), g)
                         for j in range(G)])  # one GQA group at a time
        s = avg_pool_scores(raw, self.kernel_size)
        s[:, max(0, n - self.local_window):] = float("inf")
        s[:, : min(self.n_sinks, n)] = float("inf")
        return s

    def _select_row(self, s: torch.Tensor, n: int, c: int) -> torch.Tensor:
        return topk_sorted(s, min(c, n))

    def compress(self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                 scale: float | None = None) -> KVSelection:
        """q [B, H, L, D] (prompt queries; only the last ``window`` real ones are used), k [B, Hkv, L, D]
        -> KVSelection per (batch, kv head)."""
        B, H, G, L, D = check_qk(q, k)
        scale = resolve_scale(D, scale)
        off, lens, it = rows(q, k, key_padding_mask)
        idx, lengths, sps = [], [], []
        for b, o, n, qr, kr in it:
            c = self.capacity(n)
            if n == 0:
                sel = torch.full((G, 0), -1, dtype=torch.long, device=q.device)
            elif c >= n:
                sel = torch.arange(n, device=q.device).expand(G, n).clone()
            else:
                sel = self._select_row(self.token_scores(qr, kr, scale), n, c)
            lr = (sel >= 0).sum(-1)
            idx.append(sel)
            lengths.append(lr)
            sps.append(self._paper_sparsity(lr, n, c))
        return KVSelection(indices=pad_stack(idx), lengths=torch.stack(lengths), seq_lens=lens, pad_offsets=off,
                           length=L, paper_sparsity=torch.stack(sps))

    def _paper_sparsity(self, lengths: torch.Tensor, n: int, c: int) -> torch.Tensor:
        G = lengths.shape[0]
        val = 0.0 if n == 0 else 1.0 - min(c, n) / n
        return torch.full((G,), val, dtype=torch.float64)

    def attend_decode(self, q, k, v, selection: KVSelection, scale=None):
        """Decode queries over the full cache (prompt + decode tokens) restricted to the kept prompt tokens."""
        return kv_compressed_attention(q, k, v, selection, scale)
