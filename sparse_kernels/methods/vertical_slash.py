"""Vertical-Slash (MInference) prefill pattern (spec §2.1)."""

from __future__ import annotations

import torch

from ..budgets import paper_vs_counts
from ..reference import prefill_attention
from ..selection import VerticalSlashSelection, pad_stack
from ._common import (PHASE_PREFILL, check_qk, check_ratio, dense, diagonal_sums, resolve_scale, rows,
                      topk_sorted, window_probs)

DEFAULT_VS_SIZE = 512


class _VSBase:
    """Shared machinery of Vertical-Slash and FlexPrefill: estimation over the last queries, forced
    sinks / local diagonals, top-k, block-granular bookkeeping."""

    phase = PHASE_PREFILL
    name = "?"

    def __init__(self, last_q: int, n_sinks: int, n_local: int, block_size: int, bf16_probs: bool = False):
        # bf16_probs: round the window's softmax probabilities to bfloat16 before pooling them into vertical /
        # slash scores, as the official code does with a bf16 model (default: fp32, the exact statistics)
        self.bf16_probs = bool(bf16_probs)
        self.last_q = int(last_q)
        self.n_sinks = int(n_sinks)
        self.n_local = int(n_local)
        self.block_size = int(block_size)
        if self.last_q < 1 or self.block_size < 1 or self.n_sinks < 0 or self.n_local < 0:
            raise ValueError("invalid Vertical-Slash hyperparameters")

    # subclasses: per-head counts [H] for a row given its window probabilities
    def _counts(self, vertical: torch.Tensor, slash: torch.Tensor, n: int, w: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _uniform_counts(self, n: int) -> tuple[int, int] | None:
        """(verticals, slashes) of every head of a row of length n when they do not depend on the scores (no
        device-to-host read is then needed for the top-k widths), else None."""
        return None

    def _from_sums(self, vsum: torch.Tensor, dsum: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertical and slash scores [H, n] from the window probabilities' column sums and diagonal sums
        (:func:`diagonal_sums`) over the ``w`` window queries."""
        raise NotImplementedError

    def _scores(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertical and slash scores from window probabilities p [H, w, n]."""
        return self._from_sums(p.sum(1), diagonal_sums(p), p.shape[1])

    def select(self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
               scale: float | None = None) -> VerticalSlashSelection:
        """q [B, H, L, D], k [B, Hkv, L, D] (same padded L) -> VerticalSlashSelection (per q head)."""
        B, H, G, L, D = check_qk(q, k)
        scale = resolve_scale(D, scale)
        off, lens, it = rows(q, k, key_padding_mask)
        parts = []
        for b, o, n, qr, kr in it:
            if n == 0:
                parts.append(self._empty_row(H, q.device))
                continue
            vscore, sscore = self._row_scores(qr, kr, scale)
            parts.append(self.row_pattern(vscore, sscore, n))
        return self._assemble(parts, lens, off, L)

    def row_scores(self, q_row: torch.Tensor, k_row: torch.Tensor, scale: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertical / slash scores [H, n] of one unpadded row q_row [H, n, D], k_row [Hkv, n, D] (the
        statistics the budget is chosen from; used by calibration)."""
        return self._row_scores(q_row, k_row, resolve_scale(q_row.shape[-1], scale))

    def row_pattern(self, vscore: torch.Tensor, sscore: torch.Tensor, n: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(verticals [H, kv_max], slashes [H, ks_max], kv [H], ks [H]) of one row from its scores."""
        kv, ks = self._counts(vscore, sscore, n, min(self.last_q, n))
        vscore = vscore.clone()
        sscore = sscore.clone()
        vscore[:, : min(self.n_sinks, n)] = float("inf")
        sscore[:, : min(self.n_local, n)] = float("inf")
        uniform = self._uniform_counts(n)
        if uniform is not None:
            return topk_sorted(vscore, uniform[0]), topk_sorted(sscore, uniform[1]), kv, ks
        kvmax, ksmax = int(kv.max()), int(ks.max())
        return self._topk_per_head(vscore, kv, kvmax), self._topk_per_head(sscore, ks, ksmax), kv, ks

    def selection_from_scores(self, scores: list[tuple[torch.Tensor, torch.Tensor]]) -> VerticalSlashSelection:
        """Selection of unpadded rows (one per (vscore, sscore) pair, each [H, n_b]) straight from their
        scores, without q / k. Rows may differ in length (they are laid out left padded)."""
        lens = torch.tensor([v.shape[-1] for v, _ in scores], dtype=torch.long)
        L = int(lens.max())
        H = scores[0][0].shape[0]
        parts = [self.row_pattern(v, s, v.shape[-1]) if v.shape[-1] else self._empty_row(H, v.device)
                 for v, s in scores]
        dev = scores[0][0].device
        return self._assemble(parts, lens.to(dev), (L - lens).to(dev), L)

    @staticmethod
    def _empty_row(H: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.full((H, 0), -1, dtype=torch.long, device=device),
                torch.full((H, 0), -1, dtype=torch.long, device=device),
                torch.zeros(H, dtype=torch.long, device=device), torch.zeros(H, dtype=torch.long, device=device))

    def _assemble(self, parts, lens, off, L) -> VerticalSlashSelection:
        sel = VerticalSlashSelection(
            vertical_idx=pad_stack([p[0] for p in parts]), vertical_counts=torch.stack([p[2] for p in parts]),
            slash_offsets=pad_stack([p[1] for p in parts]), slash_counts=torch.stack([p[3] for p in parts]),
            seq_lens=lens, pad_offsets=off, length=L, block_size=self.block_size)
        self._attach_layout(sel)
        sel.paper_sparsity = sel.block_granular_sparsity()
        return sel

    def _attach_layout(self, sel: VerticalSlashSelection) -> None:
        """Hook of the GPU variant (``sparse_kernels.triton.accelerate``): attach the kernel's tile layout, from
        which the sparsity below is then counted. The reference keeps the block index."""

    def _row_scores(self, qr: torch.Tensor, kr: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertical / slash scores [H, n] of one row, computed one GQA group at a time to bound memory
        (the window probabilities of a group are [g, last_q, n])."""
        H, G = qr.shape[0], kr.shape[0]
        g = H // G
        vs, ss = [], []
        for j in range(G):
            p = window_probs(qr[j * g:(j + 1) * g], kr[j:j + 1], self.last_q, scale)
            if self.bf16_probs:
                p = p.to(torch.bfloat16).float()
            a, c = self._scores(p)
            vs.append(a)
            ss.append(c)
            del p
        return torch.cat(vs), torch.cat(ss)

    @staticmethod
    def _topk_per_head(scores: torch.Tensor, counts: torch.Tensor, kmax: int) -> torch.Tensor:
        """Top counts[h] indices of scores[h] (ascending), -1 padded to kmax."""
        if bool((counts == kmax).all()):
            return topk_sorted(scores, kmax)
        idx = torch.topk(scores, kmax, dim=-1).indices  # rank order
        keep = torch.arange(kmax, device=scores.device).view(1, -1) < counts.view(-1, 1)
        idx = torch.where(keep, idx, torch.full_like(idx, 1 << 62))
        idx = torch.sort(idx, dim=-1).values
        return torch.where(idx == 1 << 62, torch.full_like(idx, -1), idx)

    def attend(self, q, k, v, key_padding_mask=None, scale=None, granularity: str = "block"):
        """(output [B, H, L, D], selection) with the reference executor."""
        sel = self.select(q, k, key_padding_mask, scale)
        return prefill_attention(q, k, v, sel, scale, granularity), sel

    __call__ = attend


class VerticalSlash(_VSBase):
    """Vertical-Slash: uniform budget of ``vertical_size`` columns and ``slash_size`` diagonals per head.

    Budget: explicit ``vertical_size`` / ``slash_size`` (default 512 each, the config default), or
    ``ratio`` + ``nominal_length`` looked up in the paper's table (:func:`budgets.paper_vs_counts`;
    verticals = slashes). ``ratio == 1`` selects everything (dense). If ``nominal_length`` is None the
    row's own length must be one of the table's lengths."""

    name = "vertical_slash"

    def __init__(self, ratio: float | None = None, nominal_length: int | None = None,
                 vertical_size: int | None = None, slash_size: int | None = None, last_q: int = 256,
                 n_sinks: int = 4, n_local: int = 64, block_size: int = 64, bf16_probs: bool = False):
        super().__init__(last_q, n_sinks, n_local, block_size, bf16_probs)
        self.ratio = check_ratio(ratio)
        self.nominal_length = nominal_length
        if self.ratio is not None and (vertical_size is not None or slash_size is not None):
            raise ValueError("give either ratio or explicit vertical_size/slash_size, not both")
        self.vertical_size = None if vertical_size is None else int(vertical_size)
        self.slash_size = None if slash_size is None else int(slash_size)
        if self.ratio is not None and not dense(self.ratio) and nominal_length is not None:
            c = paper_vs_counts(nominal_length, self.ratio)  # fail early on unknown (L, ratio)
            self.vertical_size = self.slash_size = c
        elif self.ratio is None:
            self.vertical_size = DEFAULT_VS_SIZE if self.vertical_size is None else self.vertical_size
            self.slash_size = DEFAULT_VS_SIZE if self.slash_size is None else self.slash_size

    def budget(self, n: int) -> tuple[int, int]:
        """(verticals, slashes) used for a row of real length n (before clipping to n)."""
        if dense(self.ratio):
            return n, n
        if self.vertical_size is not None:
            return self.vertical_size, self.slash_size
        c = paper_vs_counts(n, self.ratio)
        return c, c

    def _from_sums(self, vsum, dsum, w):
        return vsum, dsum

    def _uniform_counts(self, n):
        kv, ks = self.budget(n)
        return min(max(kv, min(self.n_sinks, n)), n), min(max(ks, min(self.n_local, n)), n)

    def _counts(self, vertical, slash, n, w):
        H = vertical.shape[0]
        kv, ks = self._uniform_counts(n)
        return (torch.full((H,), kv, dtype=torch.long, device=vertical.device),
                torch.full((H,), ks, dtype=torch.long, device=vertical.device))

    def measure_density(self, q, k, count: int, key_padding_mask=None, scale=None) -> float:
        """Mean block-granular density (1 - paper sparsity) with ``count`` verticals = slashes: the
        quantity a calibration step drives to 1/ratio (see budgets.search_k_for_density)."""
        probe = VerticalSlash(vertical_size=count, slash_size=count, last_q=self.last_q, n_sinks=self.n_sinks,
                              n_local=self.n_local, block_size=self.block_size, bf16_probs=self.bf16_probs)
        return float(1.0 - probe.select(q, k, key_padding_mask, scale).paper_sparsity.mean())
