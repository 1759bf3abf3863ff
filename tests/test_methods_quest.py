"""Quest against brute-force computations written from the spec (§2.6)."""

import math

import pytest
import torch

from sparse_kernels.methods import Quest
from sparse_kernels.selection import QuestSelection
from tests.bruteforce import explicit_output


def make_kv(B, G, L, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, G, L, D, generator=g), torch.randn(B, G, L, D, generator=g), g


def bf_summaries(keys, p):
    """keys [n, D] -> list of (min, max) per page, by scanning tokens one at a time."""
    pages = []
    for t in range(keys.shape[0]):
        if t % p == 0:
            pages.append([keys[t].clone(), keys[t].clone()])
        else:
            pages[-1][0] = torch.minimum(pages[-1][0], keys[t])
            pages[-1][1] = torch.maximum(pages[-1][1], keys[t])
    return pages


def bf_bound(qv, mn, mx):
    return sum(max(float(qv[d]) * float(mn[d]), float(qv[d]) * float(mx[d])) for d in range(len(qv)))


def bf_pages(q, keys, p, T, share):
    """q [H, D], keys [G, n, D] -> list per q head of the expected page set."""
    H = q.shape[0]
    G, n, _ = keys.shape
    g = H // G
    summ = [bf_summaries(keys[kv], p) for kv in range(G)]
    cur = (n - 1) // p
    nh = T // p
    out, bounds = [], []
    for h in range(H):
        kv = h // g
        if share:
            b = [sum(bf_bound(q[hh], *summ[kv][i]) for hh in range(kv * g, kv * g + g)) for i in range(cur)]
        else:
            b = [bf_bound(q[h], *summ[kv][i]) for i in range(cur)]
        if cur <= nh:
            out.append(set(range(cur + 1)))
        else:
            out.append(set(sorted(range(cur), key=lambda i: -b[i])[:nh]) | {cur})
        bounds.append(b)
    return out, bounds


def test_summaries_track_appended_tokens():
    G, L, D, p = 2, 37, 8, 16
    k, _, g = make_kv(1, G, L, D)
    st = Quest(token_budget=32, page_size=p).init_state(k)
    keys = k[0]
    for step in range(30):  # crosses two page boundaries
        kn = torch.randn(1, G, 1, D, generator=g)
        st.append(kn)
        keys = torch.cat([keys, kn[0]], 1)
        n = keys.shape[1]
        assert st.seq_lens.item() == n and st.length == n
        for kv in range(G):
            bf = bf_summaries(keys[kv], p)
            for i, (mn, mx) in enumerate(bf):
                assert torch.equal(st.page_min[0, kv, i], mn) and torch.equal(st.page_max[0, kv, i], mx)
            assert torch.isinf(st.page_min[0, kv, len(bf):]).all()


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("L,H,G,T", [(77, 4, 4, 32), (130, 4, 1, 48), (130, 8, 2, 64)])
def test_page_selection_and_output(L, H, G, T, share):
    D, p = 16, 16
    k, v, g = make_kv(1, G, L, D, seed=L + T)
    m = Quest(token_budget=T, page_size=p, share_pages=share)
    st = m.init_state(k)
    for step in range(5):
        kn, vn = torch.randn(1, G, 1, D, generator=g), torch.randn(1, G, 1, D, generator=g)
        k, v = torch.cat([k, kn], 2), torch.cat([v, vn], 2)
        st.append(kn)
        q = torch.randn(1, H, 1, D, generator=g)
        out, sel = m.attend(q, k, v, st)
        assert isinstance(sel, QuestSelection)
        n = k.shape[2]
        want, bounds = bf_pages(q[0, :, 0], k[0], p, T, share)
        got_bounds = m.page_bounds(st, q)
        cur = (n - 1) // p
        for h in range(H):
            got = sel.pages[0, h, : sel.counts[0, h]].tolist()
            assert got == sorted(got) and got[-1] == cur and all(0 <= i <= cur for i in got)
            for i in range(cur):
                assert got_bounds[0, h, i].item() == pytest.approx(bounds[h][i], rel=1e-4, abs=1e-4)
            if set(got) != want[h]:
                thr = sorted(bounds[h], reverse=True)[T // p - 1]
                assert all(abs(bounds[h][i] - thr) < 1e-4 for i in set(got) ^ want[h])
            assert len(got) == T // p + 1
        if share:
            gsz = H // G
            for h in range(H):
                assert torch.equal(sel.pages[0, h], sel.pages[0, (h // gsz) * gsz])
            gp, gc = sel.group_pages(G)
            assert gp.shape[1] == G and torch.equal(gp[0, 0], sel.pages[0, 0])
        keep = torch.zeros(1, H, 1, n, dtype=torch.bool)
        for h in range(H):
            for i in sel.pages[0, h, : sel.counts[0, h]].tolist():
                keep[0, h, 0, i * p: min((i + 1) * p, n)] = True
        assert torch.equal(sel.to_mask(), keep)
        torch.testing.assert_close(out.double(), explicit_output(q, k, v, keep), atol=1e-5, rtol=1e-5)
        # attended tokens: T from history + the tokens of the current page
        in_cur = n - cur * p
        assert torch.allclose(sel.density_computed(), torch.full((1, H), (T + in_cur) / n, dtype=torch.float64))
        assert torch.allclose(sel.paper_sparsity, torch.full((1, H), 1 - T / L, dtype=torch.float64))


def test_per_head_selection_can_differ_within_group():
    D, p, L, H, G = 16, 16, 130, 4, 1
    k, v, g = make_kv(1, G, L, D, seed=3)
    m = Quest(token_budget=32, page_size=p, share_pages=False)
    st = m.init_state(k)
    kn = torch.randn(1, G, 1, D, generator=g)
    st.append(kn)
    sel = m.select(st, torch.randn(1, H, 1, D, generator=g))
    assert len({tuple(sel.pages[0, h].tolist()) for h in range(H)}) > 1


@pytest.mark.parametrize("share", [False, True])
def test_full_budget_is_dense(share):
    D, L, H, G = 16, 77, 4, 2
    k, v, g = make_kv(1, G, L, D, seed=4)
    for m in (Quest(ratio=1, share_pages=share), Quest(token_budget=96, share_pages=share)):
        st = m.init_state(k)
        kn, vn = torch.randn(1, G, 1, D, generator=g), torch.randn(1, G, 1, D, generator=g)
        st.append(kn)
        k2, v2 = torch.cat([k, kn], 2), torch.cat([v, vn], 2)
        q = torch.randn(1, H, 1, D, generator=g)
        out, sel = m.attend(q, k2, v2, st)
        assert sel.to_mask().all()
        torch.testing.assert_close(out.double(), explicit_output(q, k2, v2, torch.ones(1, H, 1, L + 1,
                                                                                        dtype=torch.bool)),
                                   atol=1e-5, rtol=1e-5)


def test_ratio_budget_from_prompt_length():
    k, _, _ = make_kv(1, 1, 160, 8)
    st = Quest(ratio=5).init_state(k)  # no nominal length: T = round(0.2 * 160 / 16) * 16 = 32
    assert st.token_budget.tolist() == [32]
    st2 = Quest(ratio=5, nominal_length=16384).init_state(k)
    assert st2.token_budget.tolist() == [3280]
