"""Triton executors with the signatures of ``sparse_kernels.reference``'s executors.

``prefill_attention``, ``kv_compressed_attention``, ``quest_attention`` and ``dense_attention`` take the
same arguments as the reference functions (extra keyword-only tuning arguments are optional) and return the
same tensors up to floating-point rounding. Selection structures are consumed as they are; the conversions
(``block_layout``, ``vs_layout``, ``group_union``) run on the device without host synchronisation.
"""

from __future__ import annotations

import torch

from ..selection import BlockSelection, KVSelection, QuestSelection, VerticalSlashSelection
from .decode import dense_decode, gathered_decode, masked_decode
from .prefill import causal_layout, block_layout, tile_attention
from .quest import quest_attention as _quest_attention
from .vertical_slash import vs_layout

# kernel tile for Block-Sparse selections (method block 16 -> union over 64x64 tiles with sub-block bits)
DEFAULT_BLOCK_TILE = (64, 64)


def prefill_attention(q, k, v, selection, scale=None, granularity: str = "block", q_chunk: int | None = None, *,
                      block_m: int | None = None, block_n: int | None = None, config: dict | None = None):
    """Output of a prefill selection (BlockSelection or VerticalSlashSelection); q [B, H, L, D], k, v
    [B, Hkv, L, D] over the same padded axis. ``granularity="exact"`` (analysis only) is not a kernel
    layout and falls back to the reference executor. ``q_chunk`` is accepted and ignored (the kernel needs
    no O(L^2) memory). ``block_m`` / ``block_n`` choose the kernel tile for BlockSelection (default 64x64
    or the method block if larger)."""
    if selection.length != q.shape[2] or selection.length != k.shape[2]:
        raise ValueError("q/k length does not match the selection")
    if isinstance(selection, VerticalSlashSelection):
        if granularity == "exact":
            from .. import reference

            return reference.prefill_attention(q, k, v, selection, scale, granularity, q_chunk)
        if granularity != "block":
            raise ValueError("granularity must be 'block' or 'exact'")
        lay = selection.tile_layout  # attached by methods.accelerate()
        return tile_attention(q, k, v, vs_layout(selection) if lay is None else lay, scale, config)
    if isinstance(selection, BlockSelection):
        bs = selection.block_size
        bm = block_m or max(DEFAULT_BLOCK_TILE[0], bs)
        bn = block_n or max(DEFAULT_BLOCK_TILE[1], bs)
        return tile_attention(q, k, v, block_layout(selection, bm, bn), scale, config)
    raise TypeError(f"not a prefill selection: {type(selection).__name__}")


def kv_compressed_attention(q, k, v, selection: KVSelection, scale=None, **kw):
    """Decode queries q [B, H, Lq, D] against the full cache k, v [B, Hkv, Lk, D] (padded prompt of
    ``selection.length`` positions + decode tokens), attending the kept prompt tokens and all decode
    tokens. (A physically compressed cache — ``selection.gather`` — is plain dense decode instead.)"""
    B = q.shape[0]
    if k.shape[1] != selection.num_kv_heads:
        raise ValueError("selection and cache disagree on the number of kv heads")
    start = torch.full((B,), selection.length, dtype=torch.int32, device=q.device)
    return gathered_decode(q, k, v, pages=selection.indices.to(q.device), counts=selection.lengths.to(q.device),
                           page_size=1, pad_offsets=selection.pad_offsets, page_limit=selection.seq_lens,
                           range_start=start, scale=scale, **kw)


def quest_attention(q, k, v, selection: QuestSelection, scale=None, **kw):
    """One decode step q [B, H, 1, D] over the selected pages of the full cache k, v [B, Hkv, Lk, D]."""
    return _quest_attention(q, k, v, selection, scale, **kw)


def dense_attention(q, k, v, key_padding_mask=None, scale=None, *, block_m: int = 128, block_n: int = 128,
                    config: dict | None = None):
    """Dense causal attention: prefill (Lq = Lk) through the tile kernel with the full causal layout,
    decode (Lq < Lk) through the split-K decode kernel. Padded keys and padded query rows are handled as in
    the reference (left padding only)."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    if Lq == Lk:
        if key_padding_mask is None:
            off = torch.zeros(B, dtype=torch.int32, device=q.device)
            lens = torch.full((B,), Lk, dtype=torch.int32, device=q.device)
        else:
            from ..selection import padding_info

            off, lens = padding_info(key_padding_mask, B, Lk, device=q.device)
        return tile_attention(q, k, v, causal_layout(B, H, Lk, block_m, block_n, q.device, off, lens), scale, config)
    if key_padding_mask is not None and Lq > 1:
        # padded query rows (only possible when Lq reaches into the padding) output 0 in the reference
        kp = key_padding_mask.to(torch.bool).to(q.device)
        out = dense_decode(q, k, v, key_padding_mask, scale)
        return out * kp[:, Lk - Lq:].view(B, 1, Lq, 1).to(out.dtype)
    return dense_decode(q, k, v, key_padding_mask, scale)


__all__ = ["prefill_attention", "kv_compressed_attention", "quest_attention", "dense_attention", "masked_decode",
           "DEFAULT_BLOCK_TILE"]
