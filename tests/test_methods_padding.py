"""Left-padded batches: a padded row selects and computes exactly what the unpadded row does."""

import pytest
import torch

from sparse_kernels.methods import AdaSnapKV, BlockSparse, FlexPrefill, Quest, SnapKV, VerticalSlash
from sparse_kernels.reference import dense_attention

L0, L1, PAD = 90, 61, 29  # row 1 has 61 real tokens after 29 padding positions
H, G, D = 4, 2, 16


def batch_and_single(seed=0, extra=0):
    g = torch.Generator().manual_seed(seed)
    n = L0 + extra
    q = torch.randn(2, H, n, D, generator=g)
    k = torch.randn(2, G, n, D, generator=g)
    v = torch.randn(2, G, n, D, generator=g)
    q[1, :, :PAD] = 7.0  # garbage in the padding must not matter
    k[1, :, :PAD] = -5.0
    v[1, :, :PAD] = 3.0
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, :PAD] = False
    single = (q[1:, :, PAD:], k[1:, :, PAD:], v[1:, :, PAD:])
    return (q, k, v, mask), single


def trim(x, cnt):
    return [row[: int(c)].tolist() for row, c in zip(x, cnt)]


PREFILL = [
    lambda: VerticalSlash(vertical_size=12, slash_size=12, last_q=20, n_sinks=2, n_local=6, block_size=16),
    lambda: FlexPrefill(alpha=0.6, min_budget=16, last_q=20, n_sinks=2, n_local=6, block_size=16),
    lambda: BlockSparse(top_chunks=3),
]


@pytest.mark.parametrize("make", PREFILL, ids=["vertical_slash", "flexprefill", "block_sparse"])
def test_prefill_left_padding(make):
    (q, k, v, mask), (q1, k1, v1) = batch_and_single()
    m = make()
    out, sel = m.attend(q, k, v, key_padding_mask=mask)
    out1, sel1 = m.attend(q1, k1, v1)
    assert sel.seq_lens.tolist() == [L0, L1] and sel.pad_offsets.tolist() == [0, PAD]
    if isinstance(m, BlockSparse):
        nb = -(-L1 // 16)
        assert torch.equal(sel.counts[1, :, :nb], sel1.counts[0])
        assert (sel.counts[1, :, nb:] == 0).all()
        for h in range(H):
            assert trim(sel.indices[1, h, :nb], sel.counts[1, h, :nb]) == trim(sel1.indices[0, h], sel1.counts[0, h])
    else:
        assert torch.equal(sel.vertical_counts[1], sel1.vertical_counts[0])
        assert trim(sel.vertical_idx[1], sel.vertical_counts[1]) == trim(sel1.vertical_idx[0], sel1.vertical_counts[0])
        assert trim(sel.slash_offsets[1], sel.slash_counts[1]) == trim(sel1.slash_offsets[0], sel1.slash_counts[0])
    torch.testing.assert_close(sel.paper_sparsity[1], sel1.paper_sparsity[0])
    torch.testing.assert_close(sel.density_computed()[1], sel1.density_computed()[0])
    full = sel.to_mask()
    assert not full[1, :, :PAD].any() and not full[1, :, :, :PAD].any()
    assert torch.equal(full[1, :, PAD:, PAD:], sel1.to_mask()[0])
    torch.testing.assert_close(out[1:, :, PAD:], out1, atol=1e-6, rtol=1e-6)
    assert torch.all(out[1, :, :PAD] == 0)
    # row 0 is unaffected by row 1's padding
    out0, _ = m.attend(q[:1], k[:1], v[:1])
    torch.testing.assert_close(out[:1], out0, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", [SnapKV, AdaSnapKV])
def test_kv_compression_left_padding(cls):
    (q, k, v, mask), (q1, k1, v1) = batch_and_single(seed=1, extra=1)
    n = L0  # prompt length; one decode token follows
    m = cls(token_capacity=24, window=12, kernel_size=5, local_window=6, n_sinks=2)
    sel = m.compress(q[:, :, :n], k[:, :, :n], key_padding_mask=mask[:, :n])
    sel1 = m.compress(q1[:, :, :L1], k1[:, :, :L1])
    assert torch.equal(sel.lengths[1], sel1.lengths[0])
    assert trim(sel.indices[1], sel.lengths[1]) == trim(sel1.indices[0], sel1.lengths[0])
    assert (sel.absolute_indices()[1][sel.indices[1] >= 0] >= PAD).all()  # never a padded position
    out = m.attend_decode(q[:, :, n:], k, v, sel)
    out1 = m.attend_decode(q1[:, :, L1:], k1, v1, sel1)
    torch.testing.assert_close(out[1:], out1, atol=1e-6, rtol=1e-6)
    kc, vc, valid = sel.gather(k[:, :, :n], v[:, :, :n])
    kc1, _, valid1 = sel1.gather(k1[:, :, :L1], v1[:, :, :L1])
    for kv in range(G):
        assert torch.equal(kc[1, kv][valid[1, kv]], kc1[0, kv][valid1[0, kv]])


@pytest.mark.parametrize("share", [False, True])
def test_quest_left_padding(share):
    (q, k, v, mask), (q1, k1, v1) = batch_and_single(seed=2)
    g = torch.Generator().manual_seed(5)
    m = Quest(token_budget=16, page_size=16, share_pages=share)
    st, st1 = m.init_state(k, key_padding_mask=mask), m.init_state(k1)
    for step in range(3):
        kn, vn = torch.randn(2, G, 1, D, generator=g), torch.randn(2, G, 1, D, generator=g)
        qn = torch.randn(2, H, 1, D, generator=g)
        k, v = torch.cat([k, kn], 2), torch.cat([v, vn], 2)
        k1, v1 = torch.cat([k1, kn[1:]], 2), torch.cat([v1, vn[1:]], 2)
        st.append(kn)
        st1.append(kn[1:])
        out, sel = m.attend(qn, k, v, st)
        out1, sel1 = m.attend(qn[1:], k1, v1, st1)
        assert trim(sel.pages[1], sel.counts[1]) == trim(sel1.pages[0], sel1.counts[0])
        assert not sel.to_mask()[1, :, :, :PAD].any()
        torch.testing.assert_close(out[1:], out1, atol=1e-6, rtol=1e-6)


def test_dense_reference_with_padding_matches_single():
    (q, k, v, mask), (q1, k1, v1) = batch_and_single(seed=3)
    out = dense_attention(q, k, v, mask)
    torch.testing.assert_close(out[1:, :, PAD:], dense_attention(q1, k1, v1), atol=1e-6, rtol=1e-6)


def test_right_padding_rejected():
    (q, k, v, mask), _ = batch_and_single(seed=4)
    bad = mask.flip(-1)
    with pytest.raises(ValueError):
        BlockSparse(top_chunks=3).select(q, k, key_padding_mask=bad)
