"""Ada-SnapKV: SnapKV with head-adaptive budgets (spec §2.5)."""

from __future__ import annotations

import math

import torch

from .snapkv import SnapKV


class AdaSnapKV(SnapKV):
    """Ada-SnapKV: importance = max over window queries and over the group's q heads (then the same
    pooling and forcing as SnapKV). Each kv head first keeps its top m = max(floor(min_head_ratio*C),
    local_window + n_sinks) tokens; the remaining layer budget C*Hkv - m*Hkv goes to one global top-k
    over all not-yet-selected (head, token) pairs. Heads end with different lengths (positional order).

    ``paper_sparsity`` per head = 1 - len_h / n, whose head mean is the paper's 1 - kept / (n * Hkv)."""

    name = "ada_snapkv"

    def __init__(self, ratio: float | None = None, nominal_length: int | None = None,
                 token_capacity: int | None = None, window: int = 256, kernel_size: int = 21,
                 local_window: int = 128, n_sinks: int = 4, min_head_ratio: float = 0.2, kv_head_shards: int = 1):
        super().__init__(ratio=ratio, nominal_length=nominal_length, token_capacity=token_capacity, window=window,
                         kernel_size=kernel_size, local_window=local_window, n_sinks=n_sinks)
        if not 0.0 <= min_head_ratio <= 1.0:
            raise ValueError("min_head_ratio must be in [0, 1]")
        if kv_head_shards < 1:
            raise ValueError("kv_head_shards must be >= 1")
        self.min_head_ratio = float(min_head_ratio)
        # tensor parallelism: the budget is pooled only among the kv heads of one shard (contiguous heads)
        self.kv_head_shards = int(kv_head_shards)

    def min_per_head(self, c: int) -> int:
        return max(int(math.floor(self.min_head_ratio * c)), self.local_window + self.n_sinks)

    def _raw_scores(self, p: torch.Tensor, groups: int) -> torch.Tensor:
        H, w, n = p.shape
        return p.amax(1).view(H // groups, groups, n).amax(1)

    def _select_row(self, s: torch.Tensor, n: int, c: int) -> torch.Tensor:
        G = s.shape[0]
        if self.kv_head_shards > 1:
            if G % self.kv_head_shards:
                raise ValueError(f"{G} kv heads cannot be split into {self.kv_head_shards} shards")
            gs = G // self.kv_head_shards
            parts = [self._select_shard(s[i:i + gs], n, c) for i in range(0, G, gs)]
            width = max(t.shape[1] for t in parts)
            return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in parts])
        return self._select_shard(s, n, c)

    def _select_shard(self, s: torch.Tensor, n: int, c: int) -> torch.Tensor:
        G = s.shape[0]
        m = min(self.min_per_head(c), n)
        first = torch.topk(s, m, dim=-1).indices  # [G, m]
        chosen = torch.zeros(G, n, dtype=torch.bool, device=s.device)
        chosen.scatter_(1, first, True)
        rest = min(c, n) * G - m * G
        if rest > 0:
            flat = s.masked_fill(chosen, float("-inf")).reshape(-1)
            extra = torch.topk(flat, rest).indices
            chosen.view(-1)[extra] = True
        pos = torch.arange(n, device=s.device).expand(G, n)
        idx = torch.where(chosen, pos, torch.full_like(pos, 1 << 62))
        idx = torch.sort(idx, dim=-1).values
        width = int(chosen.sum(-1).max())
        idx = idx[:, :width]
        return torch.where(idx == 1 << 62, torch.full_like(idx, -1), idx)

    def _paper_sparsity(self, lengths: torch.Tensor, n: int, c: int) -> torch.Tensor:
        if n == 0:
            return torch.zeros(lengths.shape[0], dtype=torch.float64)
        return 1.0 - lengths.double().cpu() / n
