"""Triton prefill kernels (Block-Sparse, Vertical-Slash / FlexPrefill, dense causal) vs the reference executor,
under the Triton interpreter (fp32 / fp16)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_kernels import reference  # noqa: E402
from sparse_kernels.methods import BlockSparse, FlexPrefill, VerticalSlash  # noqa: E402
from sparse_kernels.selection import BlockSelection, VerticalSlashSelection, padding_info  # noqa: E402
from sparse_kernels.triton import executors as tx  # noqa: E402
from sparse_kernels.triton.prefill import block_layout, causal_layout  # noqa: E402
from sparse_kernels.triton.vertical_slash import vs_layout  # noqa: E402

from sparse_kernels.triton.testing import check, left_pad_mask, qkv  # noqa: E402

DTYPES = [torch.float32, torch.float16]

FP32, FP16 = torch.float32, torch.float16
# (B, H, G, L, D, method block, top_chunks, kernel tile, left pads, dtype)
BLOCK_CASES = {
    "gqa1-L77-t64-fp32": (1, 4, 4, 77, 32, 16, 3, (64, 64), None, FP32),     # 4x4 sub-blocks per tile
    "gqa1-L77-t64-fp16": (1, 4, 4, 77, 32, 16, 3, (64, 64), None, FP16),
    "gqa7-L130-t64x32-fp32": (1, 7, 1, 130, 16, 16, 4, (64, 32), None, FP32),  # 7 q heads on 1 kv head
    "gqa4-pad-t32-fp32": (2, 4, 1, 100, 64, 32, 3, (32, 32), (0, 37), FP32),  # tile = method block
    "gqa4-pad-t32-fp16": (2, 4, 1, 100, 64, 32, 3, (32, 32), (0, 37), FP16),
}


@pytest.mark.parametrize("case", list(BLOCK_CASES.values()), ids=list(BLOCK_CASES))
def test_block_sparse_matches_reference(case):
    B, H, G, L, D, bs, top, tile, pads, dtype = case
    q, k, v = qkv(B, H, G, L, D, dtype, seed=L + H)
    kpm = None if pads is None else left_pad_mask(B, L, pads)
    sel = BlockSparse(top_chunks=top, block_size=bs).select(q, k, kpm)
    ref = reference.prefill_attention(q, k, v, sel)
    out = tx.prefill_attention(q, k, v, sel, block_m=tile[0], block_n=tile[1])
    check(out, ref, dtype)
    if pads is not None:
        assert torch.all(out[1, :, : pads[1]] == 0)


@pytest.mark.parametrize("bs,tiles", [(16, [(16, 16), (32, 32), (64, 64), (64, 16), (16, 64), (128, 32)]),
                                      (32, [(16, 16), (16, 64), (64, 32)])])
def test_block_layout_covers_exactly_the_selection(bs, tiles):
    """Pure-torch check of the BlockSelection -> kernel tile conversion (union + sub-block bits / splits)."""
    q, k, _ = qkv(2, 3, 1, 90, 8, torch.float32, seed=bs)
    kpm = left_pad_mask(2, 90, (0, 21))
    sel = BlockSparse(top_chunks=3, block_size=bs).select(q, k, kpm)
    want = sel.to_mask()
    for bm, bn in tiles:
        lay = block_layout(sel, bm, bn)
        assert torch.equal(lay.to_mask(), want), (bm, bn)
        # the unmasked prefix holds only tiles fully below the diagonal of every row of the query tile
        t = torch.arange(lay.num_q_tiles).view(1, 1, -1, 1)
        i = torch.arange(lay.starts.shape[-1]).view(1, 1, 1, -1)
        full = i < lay.n_full.unsqueeze(-1)
        assert torch.all(torch.where(full, lay.starts + bn - 1 <= t * bm, torch.ones_like(full)))


def _hand_block_selection(L, bs, H, full: bool):
    nb = -(-L // bs)
    m = torch.arange(nb).view(-1, 1)
    j = torch.arange(nb).view(1, -1)
    if full:
        idx = torch.where(j <= m, j, torch.full_like(j, -1)).expand(1, H, nb, nb).clone()
        cnt = (m + 1).view(1, 1, nb).expand(1, H, nb).clone()
    else:
        idx = torch.full((1, H, nb, 1), -1, dtype=torch.long)
        cnt = torch.zeros(1, H, nb, dtype=torch.long)
    off, lens = padding_info(None, 1, L)
    return BlockSelection(block_size=bs, indices=idx, counts=cnt, seq_lens=lens, pad_offsets=off, length=L)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_block_sparse_empty_and_full_selections(dtype):
    q, k, v = qkv(1, 2, 1, 77, 32, dtype, seed=5)
    empty = tx.prefill_attention(q, k, v, _hand_block_selection(77, 16, 2, full=False))
    assert torch.all(empty == 0)
    full = tx.prefill_attention(q, k, v, _hand_block_selection(77, 16, 2, full=True))
    check(full, reference.dense_attention(q, k, v), dtype)


def test_dense_prefill_with_left_padding():
    dtype = torch.float16
    q, k, v = qkv(2, 4, 2, 130, 32, dtype, seed=11)
    kpm = left_pad_mask(2, 130, (0, 50))
    out = tx.dense_attention(q, k, v, kpm)
    check(out, reference.dense_attention(q, k, v, kpm), dtype)


# ------------------------------------------------------------------------------------------- Vertical-Slash

def _ref_tiles(sel, b):
    """Reference layout of row b as {(h, m): (sorted tile starts, sorted columns)}."""
    idx = sel.block_index(b)
    bs = sel.block_size
    out = {}
    H, nqb = idx.range_count.shape
    for h in range(H):
        for m in range(nqb):
            tiles = []
            for r in range(int(idx.range_count[h, m])):
                tiles += list(range(int(idx.range_start[h, m, r]), int(idx.range_end[h, m, r]), bs))
            cols = idx.columns[h, m, : int(idx.column_count[h, m])].tolist()
            out[h, m] = (tiles, cols)
    return out


def _random_vs_selection(B, H, L, kv, ks, seed, pads=(0,)):
    g = torch.Generator().manual_seed(seed)
    off, lens = padding_info(left_pad_mask(B, L, pads), B, L)
    vi = torch.full((B, H, kv), -1, dtype=torch.long)
    so = torch.full((B, H, ks), -1, dtype=torch.long)
    vc = torch.zeros(B, H, dtype=torch.long)
    sc = torch.zeros(B, H, dtype=torch.long)
    for b in range(B):
        n = int(lens[b])
        for h in range(H):
            a = torch.randperm(n, generator=g)[: kv - h].sort().values  # different counts per head
            s = torch.randperm(n, generator=g)[: ks - 2 * h].sort().values
            vi[b, h, : len(a)], vc[b, h] = a, len(a)
            so[b, h, : len(s)], sc[b, h] = s, len(s)
    return VerticalSlashSelection(vertical_idx=vi, vertical_counts=vc, slash_offsets=so, slash_counts=sc,
                                  seq_lens=lens, pad_offsets=off, length=L, block_size=16)


def test_vs_index_matches_reference_builder():
    sel = _random_vs_selection(2, 3, 150, kv=20, ks=30, seed=3, pads=(0, 40))
    lay = vs_layout(sel)
    for b in range(2):
        want = _ref_tiles(sel, b)
        for (h, m), (tiles, cols) in want.items():
            c = int(lay.counts[b, h, m])
            assert lay.starts[b, h, m, :c].tolist() == tiles, (b, h, m)
            assert lay.columns[b, h, m, : int(lay.column_counts[b, h, m])].tolist() == cols, (b, h, m)
            # unmasked prefix: tiles entirely visible to every query row of the block
            nf = int(lay.n_full[b, h, m])
            assert nf == sum(t + 15 <= m * 16 for t in tiles)
    assert torch.equal(lay.to_mask(), sel.to_mask())


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_vertical_slash_matches_reference(dtype):
    q, k, v = qkv(1, 4, 2, 130, 32, dtype, seed=17)
    sel = VerticalSlash(vertical_size=12, slash_size=10, last_q=32, n_local=8, block_size=32).select(q, k)
    check(tx.prefill_attention(q, k, v, sel), reference.prefill_attention(q, k, v, sel), dtype)


def test_flexprefill_gqa7_left_padding_matches_reference():
    dtype = torch.float32
    q, k, v = qkv(2, 7, 1, 100, 16, dtype, seed=23)
    kpm = left_pad_mask(2, 100, (0, 29))
    sel = FlexPrefill(alpha=0.3, min_budget=32, last_q=32, n_local=8, n_sinks=2, block_size=32).select(q, k, kpm)
    out = tx.prefill_attention(q, k, v, sel)
    check(out, reference.prefill_attention(q, k, v, sel), dtype)
    assert torch.all(out[1, :, :29] == 0)


def test_vertical_slash_empty_and_dense():
    q, k, v = qkv(1, 2, 1, 77, 16, torch.float32, seed=31)
    off, lens = padding_info(None, 1, 77)
    z = torch.zeros(1, 2, dtype=torch.long)
    empty = VerticalSlashSelection(vertical_idx=torch.full((1, 2, 1), -1), vertical_counts=z,
                                   slash_offsets=torch.full((1, 2, 1), -1), slash_counts=z, seq_lens=lens,
                                   pad_offsets=off, length=77)
    assert torch.all(tx.prefill_attention(q, k, v, empty) == 0)
    dense = VerticalSlash(ratio=1, last_q=16).select(q, k)
    check(tx.prefill_attention(q, k, v, dense), reference.dense_attention(q, k, v), torch.float32)


def test_causal_layout_is_the_causal_mask():
    lay = causal_layout(1, 2, 77, 32, 16, "cpu")
    want = torch.ones(77, 77, dtype=torch.bool).tril().expand(1, 2, 77, 77)
    assert torch.equal(lay.to_mask(), want)


# ------------------------------------------------------------------------------------------- TMA path

def test_tma_key_value_loads_match_reference():
    """The Hopper path (K / V tiles through device-side tensor descriptors, rows past the sequence read as 0)
    gives the reference output for block-sparse tiles with sub-block bits and left padding, dense causal
    tiles split in two key halves, and Vertical-Slash tiles plus gathered columns (fp16, interpreter)."""
    from sparse_kernels.triton.prefill import tile_attention

    dtype = torch.float16
    tma = {"tma": True}
    # block-sparse: 16-token method blocks on 64x64 kernel tiles (bit masks), rows left-padded by 0 / 37
    q, k, v = qkv(2, 4, 1, 100, 64, dtype, seed=3)
    kpm = left_pad_mask(2, 100, (0, 37))
    sel = BlockSparse(top_chunks=3, block_size=16).select(q, k, kpm)
    check(tile_attention(q, k, v, block_layout(sel, 64, 64), config=tma), reference.prefill_attention(q, k, v, sel),
          dtype)
    # dense causal on 64x64 tiles read as two 32-key halves (SPLIT_N = 2), GQA 2, left padding
    q, k, v = qkv(2, 4, 2, 130, 32, dtype, seed=11)
    kpm = left_pad_mask(2, 130, (0, 50))
    off, lens = padding_info(kpm, 2, 130)
    lay = causal_layout(2, 4, 130, 64, 64, q.device, off, lens)
    check(tile_attention(q, k, v, lay, config={"tma": True, "BLOCK_N": 32}), reference.dense_attention(q, k, v, kpm),
          dtype)
    # Vertical-Slash: slash tiles through TMA, verticals gathered with pointer loads
    q, k, v = qkv(1, 4, 2, 150, 32, dtype, seed=8)
    sel = _random_vs_selection(1, 4, 150, 12, 6, seed=2)
    check(tile_attention(q, k, v, vs_layout(sel), config=tma), reference.prefill_attention(q, k, v, sel), dtype)
