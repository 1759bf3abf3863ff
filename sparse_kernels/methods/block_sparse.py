"""Block-Sparse (MInference) prefill pattern (spec §2.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..budgets import block_sparse_density, block_sparse_top_k
from ..reference import prefill_attention
from ..selection import BlockSelection, compact_sorted
from ._common import PHASE_PREFILL, check_qk, check_ratio, dense, rows

DEFAULT_TOP_CHUNKS = 64


def pooled_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean over consecutive ``block_size`` tokens of x [H, n, D] -> [H, ceil(n/bs), D]; the last block is
    zero padded and still divided by ``block_size`` (as in the padded reference)."""
    H, n, D = x.shape
    nb = -(-n // block_size)
    xp = F.pad(x.float(), (0, 0, 0, nb * block_size - n))
    return xp.view(H, nb, block_size, D).mean(2)


class BlockSparse:
    """Block-Sparse: 16x16 tiles, each query block keeps its top-k key blocks by the unscaled dot
    product of mean-pooled Q and K blocks; the diagonal block, the block below it and key block 0 are
    always kept; non-causal blocks never.

    Budget: ``top_chunks`` (k, default 64, must be >= 3) or ``ratio``: k is the inversion of the analytic
    density formula at ``nominal_length`` (row length when None); ``ratio == 1`` keeps every causal block.
    ``paper_sparsity`` = 1 - density(k, n) with n = ceil(row length / block_size)."""

    name = "block_sparse"
    phase = PHASE_PREFILL

    def __init__(self, ratio: float | None = None, nominal_length: int | None = None,
                 top_chunks: int | None = None, block_size: int = 16):
        self.ratio = check_ratio(ratio)
        self.nominal_length = nominal_length
        self.block_size = int(block_size)
        if self.ratio is not None and top_chunks is not None:
            raise ValueError("give either ratio or top_chunks, not both")
        self.top_chunks = None if top_chunks is None else int(top_chunks)
        if self.ratio is None and self.top_chunks is None:
            self.top_chunks = DEFAULT_TOP_CHUNKS
        if self.ratio is not None and not dense(self.ratio) and nominal_length is not None:
            self.top_chunks = block_sparse_top_k(nominal_length, self.ratio, self.block_size)
        if self.top_chunks is not None and self.top_chunks < 3:
            raise ValueError("top_chunks must be >= 3 (diagonal, sub-diagonal and sink blocks are forced)")

    def k_for(self, n: int) -> int:
        nb = -(-n // self.block_size)
        if dense(self.ratio):
            return nb
        if self.top_chunks is not None:
            return self.top_chunks
        return block_sparse_top_k(n, self.ratio, self.block_size)

    def block_scores(self, q_row: torch.Tensor, k_row: torch.Tensor) -> torch.Tensor:
        """[H, nb, nb] selection scores with forced (+inf) and non-causal (-inf) blocks."""
        H = q_row.shape[0]
        G = k_row.shape[0]
        qp = pooled_blocks(q_row, self.block_size)
        kp = pooled_blocks(k_row, self.block_size).repeat_interleave(H // G, dim=0)
        s = torch.matmul(qp, kp.transpose(-1, -2))
        nb = s.shape[-1]
        r = torch.arange(nb, device=s.device)
        s[:, r, r] = float("inf")
        s[:, r[1:], r[:-1]] = float("inf")
        s[:, :, 0] = float("inf")
        return s.masked_fill(r.view(1, -1) > r.view(-1, 1), float("-inf"))

    def select(self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
               scale: float | None = None) -> BlockSelection:
        """q [B, H, L, D], k [B, Hkv, L, D] -> BlockSelection (per q head). ``scale`` is unused
        (selection is unscaled) and accepted for a uniform signature."""
        B, H, G, L, D = check_qk(q, k)
        off, lens, it = rows(q, k, key_padding_mask)
        idxs, cnts, sps = [], [], []
        bs = self.block_size
        for b, o, n, qr, kr in it:
            nb = -(-n // bs)
            kk = min(self.k_for(n), nb)
            if nb == 0:
                idxs.append(torch.full((H, 0, 0), -1, dtype=torch.long, device=q.device))
                cnts.append(torch.zeros(H, 0, dtype=torch.long, device=q.device))
                sps.append(torch.zeros(H, dtype=torch.float64))
                continue
            s = self.block_scores(qr, kr)
            top = torch.topk(s, kk, dim=-1).indices  # [H, nb, kk] in rank order
            m = torch.arange(nb, device=q.device).view(1, -1, 1)
            valid = torch.arange(kk, device=q.device).view(1, 1, -1) < torch.clamp(m + 1, max=kk)
            idx, cnt = compact_sorted(valid.expand_as(top), top)
            idxs.append(idx)
            cnts.append(cnt)
            sps.append(torch.full((H,), 1.0 - block_sparse_density(kk, nb), dtype=torch.float64))
        nqb = max([t.shape[1] for t in idxs] + [0])
        kmax = max([t.shape[2] for t in idxs] + [0])
        idx_t = torch.full((B, H, nqb, kmax), -1, dtype=torch.long, device=q.device)
        cnt_t = torch.zeros(B, H, nqb, dtype=torch.long, device=q.device)
        for b, (i, c) in enumerate(zip(idxs, cnts)):
            idx_t[b, :, : i.shape[1], : i.shape[2]] = i
            cnt_t[b, :, : c.shape[1]] = c
        return BlockSelection(block_size=bs, indices=idx_t, counts=cnt_t, seq_lens=lens, pad_offsets=off,
                              length=L, paper_sparsity=torch.stack(sps))

    def attend(self, q, k, v, key_padding_mask=None, scale=None):
        sel = self.select(q, k, key_padding_mask, scale)
        return prefill_attention(q, k, v, sel, scale), sel

    __call__ = attend


__all__ = ["BlockSparse", "pooled_blocks"]
