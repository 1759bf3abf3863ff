"""Dispatch API of sparse_kernels.triton (available / get_executor) and the bf16 path."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import inspect  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_kernels import reference  # noqa: E402
from sparse_kernels import triton as skt  # noqa: E402
from sparse_kernels.methods import BlockSparse  # noqa: E402
from sparse_kernels.triton.testing import qkv  # noqa: E402


def test_available_and_executor_names():
    assert skt.available("cpu") is True  # the interpreter is on in the tests
    assert skt.default_executor_name("cpu") == "reference"
    ref = skt.get_executor("auto", "cpu")
    assert ref.name == "reference" and ref.prefill_attention is reference.prefill_attention
    tri = skt.get_executor("triton", "cpu")
    assert tri.name == "triton" and hasattr(tri, "masked_decode")
    with pytest.raises(ValueError):
        skt.get_executor("cuda-magic")


def test_executor_signatures_match_reference():
    tri = skt.get_executor("triton", "cpu")
    for name in ("prefill_attention", "kv_compressed_attention", "quest_attention", "dense_attention"):
        # softcap (Gemma 2) is the reference's alone: the session runs soft-capped layers there, never in a kernel
        want = [p for p in inspect.signature(getattr(reference, name)).parameters.values() if p.name != "softcap"]
        got = list(inspect.signature(getattr(tri, name)).parameters.values())
        assert [p.name for p in got[: len(want)]] == [p.name for p in want], name
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in got[len(want):]), name


def test_bf16_is_upcast_under_the_interpreter():
    q, k, v = qkv(1, 2, 1, 40, 16, torch.bfloat16, seed=1)
    sel = BlockSparse(top_chunks=3).select(q, k)
    out = skt.prefill_attention(q, k, v, sel)
    assert out.dtype == torch.bfloat16
    ref = reference.prefill_attention(q, k, v, sel)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_accelerated_methods_select_like_the_reference():
    from sparse_kernels.methods import Quest, SnapKV, VerticalSlash
    from sparse_kernels.selection import build_vs_block_index
    from sparse_kernels.triton.testing import left_pad_mask

    q, k, v = qkv(2, 4, 1, 100, 16, torch.float32, seed=4)
    kpm = left_pad_mask(2, 100, (0, 33))
    vs = VerticalSlash(vertical_size=9, slash_size=12, last_q=24, n_local=4, block_size=32)
    fast = skt.accelerate(vs)
    assert fast.phase == vs.phase and type(fast).__name__ == "VerticalSlashGPU"
    a, b = vs.select(q, k, kpm), fast.select(q, k, kpm)
    assert torch.equal(a.slash_offsets, b.slash_offsets) and torch.equal(a.vertical_idx, b.vertical_idx)
    torch.testing.assert_close(a.paper_sparsity, b.paper_sparsity)
    assert b.tile_layout is not None and a.tile_layout is None
    # counted from the tile layout (accelerated) and from the block index (reference), and from the dense mask
    torch.testing.assert_close(b.density_computed(), a.density_computed(), rtol=0, atol=1e-12)
    mask = b.to_mask()
    for row, n in enumerate(b.seq_lens.tolist()):
        want = mask[row].sum((-1, -2)).double() / (n * (n + 1) / 2)
        torch.testing.assert_close(b.density_computed()[row], want, rtol=0, atol=1e-12)
    for row in range(2):
        want = build_vs_block_index(b.vertical_idx[row], b.slash_offsets[row], int(b.seq_lens[row]), 32)
        got = b.block_index(row)
        for f in ("range_start", "range_end", "range_count", "columns", "column_count"):
            assert torch.equal(getattr(got, f), getattr(want, f)), (row, f)
    out = skt.prefill_attention(q, k, v, b)  # reuses the attached layout
    torch.testing.assert_close(out, reference.prefill_attention(q, k, v, a), atol=3e-5, rtol=1e-4)

    quest = Quest(token_budget=32)
    st = quest.init_state(k[:, :, :-1], kpm[:, :-1])
    st.append(k[:, :, -1:])
    qd = q[:, :, -1:]
    assert torch.equal(skt.accelerate(quest).select(st, qd).token_mask(), quest.select(st, qd).token_mask())

    snap = SnapKV(token_capacity=40, window=16, local_window=8, n_sinks=2, kernel_size=5)
    assert torch.equal(skt.accelerate(snap).compress(q, k, kpm).indices, snap.compress(q, k, kpm).indices)


def test_triton_executor_session_runs_the_accelerated_selection():
    """A session on the Triton executor swaps its methods for their GPU-selection versions (once: a second
    batch keeps the same objects); the reference executor keeps the methods as given."""
    from sparse_kernels.hf.session import SparseSession
    from sparse_kernels.methods import Quest, VerticalSlash
    from sparse_kernels.triton.methods import QuestGPU

    vs, quest = VerticalSlash(vertical_size=8, slash_size=8, last_q=16), Quest(token_budget=32)
    s = SparseSession(vs, quest, executor="triton")
    s.begin(1, 40, None, 2, "cpu")
    pre, dec = s.prefill_method, s.decode_method
    assert type(pre).__name__ == "VerticalSlashGPU" and isinstance(dec, QuestGPU)
    s.begin(1, 40, None, 2, "cpu")
    assert s.prefill_method is pre and s.decode_method is dec
    r = SparseSession(vs, quest, executor="reference")
    r.begin(1, 40, None, 2, "cpu")
    assert r.prefill_method is vs and r.decode_method is quest


@pytest.mark.parametrize("masked_tiles", [4, 1], ids=["bounded", "host-check-fallback"])
def test_vs_counts_from_the_tile_layout_match_the_block_index(monkeypatch, masked_tiles):
    """Longer rows than the selection test (tile lists wider than the masked-tile bound): computed pairs, tiles
    and columns read from the attached layout equal the reference block index, also when a query block has
    more masked tiles than the bound (then the host-checked general path runs)."""
    import sparse_kernels.selection as selmod
    from sparse_kernels.triton.testing import left_pad_mask
    from sparse_kernels.methods import VerticalSlash

    monkeypatch.setattr(selmod, "_MASKED_TILES", masked_tiles)
    q, k, _ = qkv(2, 3, 1, 300, 16, torch.float32, seed=9)
    kpm = left_pad_mask(2, 300, (0, 41))
    vs = VerticalSlash(vertical_size=11, slash_size=14, last_q=24, n_local=4, block_size=16)
    a, b = vs.select(q, k, kpm), skt.accelerate(vs).select(q, k, kpm)
    assert b.tile_layout.starts.shape[-1] > 4
    for row, n in enumerate(b.seq_lens.tolist()):
        for x, y in zip(b._row_counts(row, n), a._row_counts(row, n)):
            assert torch.equal(x.cpu(), y.cpu()), row
    torch.testing.assert_close(b.block_granular_sparsity(), a.block_granular_sparsity(), rtol=0, atol=1e-12)
