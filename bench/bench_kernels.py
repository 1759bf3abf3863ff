"""Kernel-level benchmark of the Triton kernels on one GPU (written for an H100; nothing is downloaded).

    python bench/bench_kernels.py --out results/bench_kernels   # everything; stops starting work after 420 s
    python bench/bench_kernels.py --out /tmp/bk --lengths 16384 --sections check,dense,block --budget-s 120

Head layout of Qwen2.5-7B: 28 q heads, 4 kv heads, head dim 128, bf16, batch 1. Lengths default to
128000 (the paper's "128K"), 65536, 32768, 16384. Every time is the median of CUDA-event timings of
back-to-back calls after a warm-up; decode-step times are CUDA-graph replays over 4 rotating cache copies
(so L2 does not hold the cache). Every ratio in a table is between numbers measured in the same run.

Pass 1 runs every section at the longest length (the targets are stated at 128K), pass 2 at the others, so
the target rows exist even when ``--budget-s`` (default 420 s) stops the run early.

Sections (``--sections``, comma separated; default all, in this order):

* ``check``  — correctness of every kernel on the GPU (bf16, ~2-4K tokens) against ``sparse_kernels.reference``
  / flex_attention: max |err| and relative L2 error.
* ``dense``  — causal prefill: SDPA cuDNN, SDPA FlashAttention (K/V expanded to 28 heads outside the timing),
  our kernel with the full causal layout, flex_attention (causal BlockMask).
* ``block``  — block-sparse prefill, 128x128 tiles (and 64x64 at 128K): random kept tiles per (head, query
  tile) at kept fractions 5/10/20 % of the causal tiles (diagonal tile always kept). Our kernel (default
  launch config and the best of a small sweep) vs flex_attention with the *identical* BlockMask
  (``BlockMask.from_kv_blocks``: off-diagonal tiles as full blocks, diagonal tiles as partial blocks with a
  causal mask_mod) vs cuDNN dense. Targets: >= 1.3x faster than flex, <= 1.2 x (kept fraction x cuDNN).
* ``vs``     — Vertical-Slash at 10x (paper counts per length; synthetic selection calibrated to the paper's
  block-granular 10 % density): GPU index build + attention vs cuDNN dense; plus the estimation step (torch and Triton)
  (window softmax, vertical / slash scores, top-k) for reference. Target: >= 4x faster than cuDNN at 128K.
* ``quest``  — one decode step at a 1/10 token budget: Quest attention (per-q-head pages merged per GQA
  group, and shared pages), the selection alone (page bounds + fused top-k), and bounds + top-k + attention,
  vs dense decode (our split-K kernel and SDPA backends). Target: attention >= 5x faster than dense decode at 128K.
* ``bsparse`` — the paper's Block-Sparse layout (16-token blocks, top-k at 10x, random choice = worst case for
  tiling): conversion to kernel tiles + attention for several kernel tiles; flex with 64x64 blocks and a
  16-granular mask_mod (the same mask) where time allows.
* ``snapkv`` — observation-window scoring (256 queries x all keys): Triton vs the torch reference path.

Output: ``<out>/bench_kernels.json`` (all rows) and ``<out>/bench_kernels.md`` (tables).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse_kernels import reference  # noqa: E402
from sparse_kernels.budgets import block_sparse_top_k, paper_vs_counts, quest_token_budget  # noqa: E402
from sparse_kernels.selection import BlockSelection, VerticalSlashSelection  # noqa: E402

H, HKV, D = 28, 4, 128
DT = torch.bfloat16
DEV = "cuda"  # module-level so the layout helpers can be smoke-tested on the CPU
CHECK_L, CHECK_FLEX_L = 2048 + 77, 4096  # sizes of the correctness section
PAPER_LEN = {16384: 16384, 32768: 32768, 65536: 65536, 128000: 128000, 131072: 128000}


# ------------------------------------------------------------------------------------------ timing helpers

class Deadline:
    def __init__(self, seconds: float):
        self.t_end = time.time() + seconds

    def left(self) -> float:
        return self.t_end - time.time()

    def ok(self, need: float = 0.0) -> bool:
        return self.left() > need


def bench(fn, warmup: int = 2, min_time: float = 0.25, max_iters: int = 30, min_iters: int = 3) -> float:
    """Median milliseconds of back-to-back calls (CUDA events per call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    e.synchronize()
    est = max(s.elapsed_time(e), 1e-3)
    n = int(min(max_iters, max(min_iters, min_time * 1e3 / est)))
    evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for a, b in evs:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return float(sorted(a.elapsed_time(b) for a, b in evs)[n // 2])


def bench_graph(fns, replays: int = 20, rounds: int = 5) -> float:
    """Microseconds per call of a list of calls (rotating inputs) captured in one CUDA graph; falls back to
    eager timing if capture fails."""
    try:
        st = torch.cuda.Stream()
        st.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(st):
            for _ in range(2):
                for f in fns:
                    f()
        torch.cuda.current_stream().wait_stream(st)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for f in fns:
                f()
        g.replay()
        torch.cuda.synchronize()
        res = []
        for _ in range(rounds):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(replays):
                g.replay()
            b.record()
            b.synchronize()
            res.append(a.elapsed_time(b) * 1e3 / (replays * len(fns)))
        del g
        return float(sorted(res)[rounds // 2])
    except Exception as exc:  # noqa: BLE001
        print(f"  [graph capture failed ({type(exc).__name__}: {exc}); eager timing]")
        torch.cuda.synchronize()

        def run_all():
            for f in fns:
                f()
        return bench(run_all, min_time=0.05) * 1e3 / len(fns)


def causal_tflops(L: int, ms: float, frac: float = 1.0) -> float:
    return 2.0 * H * D * L * L * frac / (ms * 1e-3) / 1e12  # 4*H*D*L^2/2 causal flops


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    o, r = out.float(), ref.float()
    return float((o - r).abs().max()), float((o - r).norm() / r.norm().clamp(min=1e-12))


def sdpa(q, k, v, backend):
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def rand_qkv(L: int, seed: int = 0, Lq: int | None = None):
    g = torch.Generator(device=DEV).manual_seed(seed)
    Lq = L if Lq is None else Lq
    q = torch.randn(1, H, Lq, D, device=DEV, dtype=DT, generator=g)
    k = torch.randn(1, HKV, L, D, device=DEV, dtype=DT, generator=g)
    v = torch.randn(1, HKV, L, D, device=DEV, dtype=DT, generator=g)
    return q, k, v


# ------------------------------------------------------------------------------------------ layouts

def random_tile_layout(L: int, bm: int, bn: int, frac: float, seed: int = 0):
    """Random kept tiles: per (head, query tile t) the diagonal tile + round(frac*(t+1)) - 1 random earlier
    tiles. Returns (TileLayout, flex BlockMask pieces, kept tile fraction). Requires bm == bn."""
    from sparse_kernels.triton.prefill import TileLayout

    assert bm == bn and L % bm == 0
    nt = L // bm
    g = torch.Generator(device=DEV).manual_seed(seed)
    t = torch.arange(nt, device=DEV).view(1, -1, 1)
    j = torch.arange(nt, device=DEV).view(1, 1, -1)
    kt = torch.clamp(torch.round(frac * (t.view(-1) + 1)).long(), min=1)  # [nt]
    r = torch.rand(H, nt, nt, device=DEV, generator=g)
    r = torch.where(j < t, r, torch.full_like(r, 2.0))
    order = r.argsort(-1)  # earlier tiles in random order first
    rank = torch.arange(nt, device=DEV).view(1, 1, -1)
    take = rank < (kt - 1).view(1, -1, 1)
    big = 1 << 30
    full = torch.where(take, order, torch.full_like(order, big)).sort(-1).values
    nfull = (kt - 1).view(1, -1).expand(H, nt)
    kmax = int(kt.max())
    full = full[:, :, : max(kmax - 1, 1)]
    full = torch.where(full >= big, torch.full_like(full, -1), full)
    # our layout: full tiles (no mask) then the diagonal tile (masked)
    starts = torch.full((1, H, nt, kmax), -1, dtype=torch.int32, device=DEV)
    if kmax > 1:
        starts[0, :, :, : kmax - 1] = torch.where(full >= 0, full * bn, full).int()
    starts.scatter_(3, nfull.view(1, H, nt, 1).long(), (t.view(1, 1, nt, 1).expand(1, H, nt, 1) * bn).int())
    lay = TileLayout(block_m=bm, block_n=bn, starts=starts,
                     counts=kt.int().view(1, 1, nt).expand(1, H, nt).contiguous(),
                     n_full=nfull.int().view(1, H, nt).contiguous(),
                     pad_offsets=torch.zeros(1, dtype=torch.int32, device=DEV),
                     seq_lens=torch.full((1,), L, dtype=torch.int32, device=DEV), length=L)
    # flex: padded to nt columns
    fidx = torch.zeros(1, H, nt, nt, dtype=torch.int32, device=DEV)
    if kmax > 1:
        fidx[0, :, :, : kmax - 1] = full.clamp(min=0).int()
    pidx = torch.zeros(1, H, nt, nt, dtype=torch.int32, device=DEV)
    pidx[0, :, :, 0] = t.view(1, nt).int()
    flex = dict(kv_num_blocks=torch.ones(1, H, nt, dtype=torch.int32, device=DEV), kv_indices=pidx,
                full_kv_num_blocks=nfull.int().view(1, H, nt).contiguous(), full_kv_indices=fidx,
                BLOCK_SIZE=(bm, bn))
    kept = float(kt.sum()) / (nt * (nt + 1) / 2)
    return lay, flex, kept


def flex_fn(flex_c, q, k, v, bmask, kernel_options=None):
    def f():
        return flex_c(q, k, v, block_mask=bmask, enable_gqa=True, kernel_options=kernel_options)
    return f


def causal_mod(b, h, qi, ki):
    return qi >= ki


def make_block_mask(pieces, mask_mod=causal_mod):
    from torch.nn.attention.flex_attention import BlockMask

    return BlockMask.from_kv_blocks(pieces["kv_num_blocks"], pieces["kv_indices"], pieces["full_kv_num_blocks"],
                                    pieces["full_kv_indices"], BLOCK_SIZE=pieces["BLOCK_SIZE"], mask_mod=mask_mod)


def flex_pieces_from_layout(lay, nkt: int):
    """flex BlockMask pieces of a TileLayout without columns/bits (full prefix -> full blocks)."""
    B, Hh, nqt, T = lay.starts.shape
    i = torch.arange(T, device=lay.starts.device).view(1, 1, 1, -1)
    blk = (lay.starts // lay.block_n).clamp(min=0)
    isfull = i < lay.n_full.unsqueeze(-1)
    ispart = (i >= lay.n_full.unsqueeze(-1)) & (i < lay.counts.unsqueeze(-1))
    big = 1 << 30

    def pack(m):
        x = torch.where(m, blk, torch.full_like(blk, big)).sort(-1).values
        x = torch.where(x >= big, torch.zeros_like(x), x).int()
        out = torch.zeros(B, Hh, nqt, nkt, dtype=torch.int32, device=x.device)
        w = min(T, nkt)
        out[..., :w] = x[..., :w]
        return out, m.sum(-1).int()

    fi, fc = pack(isfull)
    pi, pc = pack(ispart)
    return dict(kv_num_blocks=pc.contiguous(), kv_indices=pi, full_kv_num_blocks=fc.contiguous(), full_kv_indices=fi,
                BLOCK_SIZE=(lay.block_m, lay.block_n))


# ------------------------------------------------------------------------------------------ sections

def section_check(res, args, dl):
    """Correctness on the GPU, bf16, small sizes."""
    from sparse_kernels import triton as skt
    from sparse_kernels.methods import AdaSnapKV, BlockSparse, FlexPrefill, Quest, SnapKV, VerticalSlash
    from sparse_kernels.triton.snapkv import snapkv_compress
    from sparse_kernels.triton.quest import quest_select

    ex = skt.get_executor("triton", DEV)
    rows = []

    def record(name, fn):
        t0 = time.time()
        try:
            out, ref = fn()
            mx, rl = rel_err(out, ref)
            ok = rl < 2e-2 and torch.isfinite(out.float()).all().item()
            rows.append(dict(kernel=name, max_abs_err=mx, rel_l2_err=rl, ok=bool(ok), s=round(time.time() - t0, 2)))
        except Exception as exc:  # noqa: BLE001
            rows.append(dict(kernel=name, error=f"{type(exc).__name__}: {exc}", ok=False))
            traceback.print_exc()
        print("  check", rows[-1])

    L = CHECK_L
    q, k, v = rand_qkv(L, seed=1)
    kpm = torch.ones(2, L, dtype=torch.bool, device=DEV)
    kpm[1, : L // 7] = False
    q2, k2, v2 = (torch.cat([x, x.roll(1, 2)]) for x in (q, k, v))
    record("dense prefill (2 rows, left padding)",
           lambda: (ex.dense_attention(q2, k2, v2, kpm), reference.dense_attention(q2, k2, v2, kpm)))
    for bm, bn in ((64, 64), (128, 64), (16, 16)):
        def f(bm=bm, bn=bn):
            sel = BlockSparse(top_chunks=24).select(q2, k2, kpm)
            return (ex.prefill_attention(q2, k2, v2, sel, block_m=bm, block_n=bn),
                    reference.prefill_attention(q2, k2, v2, sel))
        record(f"block-sparse 16-token blocks, tile {bm}x{bn}", f)
    record("vertical-slash (2 rows, left padding)", lambda: (
        lambda sel: (ex.prefill_attention(q2, k2, v2, sel), reference.prefill_attention(q2, k2, v2, sel)))(
        VerticalSlash(vertical_size=100, slash_size=80).select(q2, k2, kpm)))
    record("flexprefill", lambda: (
        lambda sel: (ex.prefill_attention(q, k, v, sel), reference.prefill_attention(q, k, v, sel)))(
        FlexPrefill(alpha=0.5, min_budget=64).select(q, k)))
    qd = q2[:, :, -1:].contiguous()
    record("dense decode (2 rows, left padding)", lambda: (ex.dense_attention(qd, k2, v2, kpm),
                                                            reference.dense_attention(qd, k2, v2, kpm)))
    for share in (False, True):
        def fq(share=share):
            quest = Quest(token_budget=256, share_pages=share)
            st = quest.init_state(k2[:, :, :-1], kpm[:, :-1])
            st.append(k2[:, :, -1:])
            sel = quest_select(quest, st, qd)
            ref_sel = quest.select(st, qd)
            same = bool(torch.equal(sel.token_mask(), ref_sel.token_mask()))
            if not same:
                print("  note: quest_select differs from Quest.select (ties in bf16 bounds?)")
            return ex.quest_attention(qd, k2, v2, ref_sel), reference.quest_attention(qd, k2, v2, ref_sel)
        record(f"quest decode ({'shared' if share else 'per-head'} pages)", fq)
    for cls in (SnapKV, AdaSnapKV):
        def fk(cls=cls):
            m = cls(token_capacity=512)
            sel = m.compress(q2, k2, kpm)
            sel2 = snapkv_compress(m, q2, k2, kpm)
            agree = float((sel.keep_mask() == sel2.keep_mask()).float().mean())
            print(f"  {cls.__name__}: triton scoring keeps the same tokens for {agree:.4%} of positions")
            return ex.kv_compressed_attention(qd, k2, v2, sel), reference.kv_compressed_attention(qd, k2, v2, sel)
        record(f"{cls.__name__} scoring + kv-compressed decode", fk)
    # block-sparse vs flex with the same BlockMask (tile level)
    try:
        from torch.nn.attention.flex_attention import flex_attention

        Lf = CHECK_FLEX_L
        qf, kf, vf = rand_qkv(Lf, seed=2)
        lay, pieces, _ = random_tile_layout(Lf, 128, 128, 0.2, seed=3)
        bmask = make_block_mask(pieces)
        out_f = torch.compile(flex_attention, dynamic=False)(qf, kf, vf, block_mask=bmask, enable_gqa=True)
        record("tile layout 128x128 vs flex_attention (same BlockMask)",
               lambda: (skt.tile_attention(qf, kf, vf, lay), out_f))
    except Exception as exc:  # noqa: BLE001
        rows.append(dict(kernel="tile layout vs flex", error=f"{type(exc).__name__}: {exc}", ok=False))
    res.setdefault("check", []).extend(rows)


def section_dense(res, args, dl, flex_c):
    from torch.nn.attention import SDPBackend

    from sparse_kernels.triton.prefill import causal_layout, tile_attention

    rows = []
    for L in args.lengths:
        if not dl.ok(30):
            rows.append(dict(L=L, skipped="time budget"))
            continue
        q, k, v = rand_qkv(L)
        ke, ve = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
        row = dict(L=L)
        for name, be in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
            try:
                row[name + "_ms"] = bench(lambda: sdpa(q, ke, ve, be), warmup=1)
            except Exception as exc:  # noqa: BLE001
                row[name + "_ms"] = None
                row[name + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
        del ke, ve
        for bm in (128, 64):
            lay = causal_layout(1, H, L, bm, bm, DEV)
            row[f"ours_causal_{bm}_ms"] = bench(lambda: tile_attention(q, k, v, lay), warmup=1)
        if flex_c is not None and dl.ok(60):
            try:
                lay = causal_layout(1, H, L, 128, 128, DEV)
                bmask = make_block_mask(flex_pieces_from_layout(lay, L // 128))
                t0 = time.time()
                flex_fn(flex_c, q, k, v, bmask)()
                torch.cuda.synchronize()
                row["flex_compile_s"] = round(time.time() - t0, 1)
                row["flex_causal_ms"] = bench(flex_fn(flex_c, q, k, v, bmask), warmup=1)
            except Exception as exc:  # noqa: BLE001
                row["flex_error"] = f"{type(exc).__name__}: {exc}"[:300]
        for key in list(row):
            if key.endswith("_ms") and row[key]:
                row[key.replace("_ms", "_tflops")] = round(causal_tflops(L, row[key]), 1)
        rows.append(row)
        print("  dense", row)
        del q, k, v
        torch.cuda.empty_cache()
    res.setdefault("dense", []).extend(rows)


# prefill tile kernel: K / V through TMA (Hopper) or pointer loads
CONFIGS_128 = [dict(BLOCK_N=bn, num_warps=w, num_stages=s, tma=t)
               for t in (True, False) for bn in (64, 128) for w in (4, 8) for s in (2, 3)]
CONFIGS_64 = [dict(BLOCK_N=64, num_warps=w, num_stages=s, tma=t) for t in (True, False) for w in (4, 8) for s in (2, 3, 4)]
DECODE_CONFIGS = [dict(block_n=bn, num_warps=w, num_stages=s) for bn in (32, 64, 128) for w in (4, 8) for s in (2, 3)]
# Quest's gathered attention reads ~1/10 of the cache: fewer tokens per split, so also fewer / more splits
QUEST_CONFIGS = [dict(block_n=bn, num_warps=4, num_stages=st, num_splits=ns)
                 for bn in (32, 64) for st in (2, 3, 4) for ns in (None, 16, 33, 66, 132)]
# Quest's fused top-k (one program per list): digits per radix pass and warps
TOPK_CONFIGS = [dict(radix_bits=r, num_warps=w) for r in (2, 4, 8) for w in (4, 8, 16, 32)]


def sweep(time_of_cfg, configs, best=(math.inf, None), label: str = "config"):
    """Best (time, config) of ``time_of_cfg(cfg)`` over ``configs``, starting from ``best``; a configuration
    that fails to compile or launch is reported and skipped."""
    for cfg in configs:
        try:
            t = time_of_cfg(cfg)
        except Exception as exc:  # noqa: BLE001
            print(f"    {label} {cfg} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        if t < best[0]:
            best = (t, cfg)
    return best


def sweep_graph(fns_of_cfg, configs, best, label: str):
    """:func:`sweep` timed with CUDA-graph replays (``bench_graph``) of ``fns_of_cfg(cfg)``."""
    return sweep(lambda cfg: bench_graph(fns_of_cfg(cfg)), configs, best, f"{label} config")


def best_config(fn_of_cfg, configs):
    return sweep(lambda cfg: bench(lambda: fn_of_cfg(cfg), warmup=1, min_time=0.1, max_iters=10), configs)


def section_block(res, args, dl, flex_c, dense_ms):
    from sparse_kernels.triton.prefill import tile_attention

    rows = []
    for L in args.lengths:
        tiles = [128] + ([64] if L == max(args.lengths) else [])
        for bt in tiles:
            for frac in (0.05, 0.10, 0.20):
                if not dl.ok(40):
                    rows.append(dict(L=L, tile=bt, frac=frac, skipped="time budget"))
                    continue
                q, k, v = rand_qkv(L, seed=3)
                lay, pieces, kept = random_tile_layout(L, bt, bt, frac, seed=int(frac * 100) + L)
                row = dict(L=L, tile=f"{bt}x{bt}", target_frac=frac, kept_tile_frac=round(kept, 4))
                row["ours_default_ms"] = bench(lambda: tile_attention(q, k, v, lay), warmup=1)
                if args.sweep:
                    t, cfg = best_config(lambda c: tile_attention(q, k, v, lay, config=c),
                                         CONFIGS_128 if bt == 128 else CONFIGS_64)
                    row["ours_best_ms"], row["ours_best_cfg"] = t, cfg
                ours = min(row["ours_default_ms"], row.get("ours_best_ms") or math.inf)
                row["ours_ms"] = ours
                if flex_c is not None:
                    try:
                        bmask = make_block_mask(pieces)
                        opts = None if bt == 128 else {"BLOCK_M": bt, "BLOCK_N": bt}
                        row["flex_ms"] = bench(flex_fn(flex_c, q, k, v, bmask, opts), warmup=1)
                        out_f = flex_fn(flex_c, q, k, v, bmask, opts)()
                        row["max_abs_diff_vs_flex"] = rel_err(tile_attention(q, k, v, lay), out_f)[0]
                        row["flex_over_ours"] = round(row["flex_ms"] / ours, 3)
                    except Exception as exc:  # noqa: BLE001
                        row["flex_error"] = f"{type(exc).__name__}: {exc}"[:300]
                cud = dense_ms.get(L)
                if cud:
                    row["cudnn_dense_ms"] = cud
                    row["speedup_vs_cudnn"] = round(cud / ours, 2)
                    row["ours_over_frac_x_cudnn"] = round(ours / (kept * cud), 3)
                rows.append(row)
                print("  block", row)
                del q, k, v, lay
                torch.cuda.empty_cache()
    res.setdefault("block", []).extend(rows)


def synthetic_vs_selection(L: int, count: int, density: float, seed: int = 0, iters: int = 12):
    """V-S selection with `count` verticals and slashes per head: 4 sinks + random verticals; 64 local
    slashes + the rest in clusters of consecutive offsets at random places. The number of clusters is
    bisected so that the paper's block-granular density (tiles*64*64 + columns*64) / (L(L+1)/2) is
    closest to `density`."""
    from sparse_kernels.triton.vertical_slash import vs_layout

    g = torch.Generator(device=DEV).manual_seed(seed)
    dev = DEV
    vi = torch.rand(H, L, device=dev, generator=g)
    vi[:, :4] = 2.0
    vi = vi.topk(count, -1).indices.sort(-1).values

    n_local = min(64, count)
    rest = count - n_local

    def make(nc: int):
        parts = [torch.arange(n_local, device=dev).expand(H, n_local)]
        if rest > 0:
            nc = max(1, min(nc, rest))
            width = -(-rest // nc)
            gen = torch.Generator(device=dev).manual_seed(seed + 1)
            centers = n_local + (torch.rand(H, nc, device=dev, generator=gen) * max(L - n_local - width, 1)).long()
            parts.append((centers.unsqueeze(-1) + torch.arange(width, device=dev)).view(H, -1))
        allo = torch.cat(parts, -1)
        allo = allo.clamp(max=L - 1)
        # unique per head, keep `count`
        s = torch.zeros(H, L, dtype=torch.bool, device=dev)
        s.scatter_(1, allo, True)
        so = torch.where(s, torch.arange(L, device=dev), torch.full((H, L), 1 << 40, device=dev)).sort(-1).values
        so = so[:, :count]
        cnt = (so < (1 << 40)).sum(-1)
        so = torch.where(so >= (1 << 40), torch.full_like(so, -1), so)
        sel = VerticalSlashSelection(vertical_idx=vi.unsqueeze(0),
                                     vertical_counts=torch.full((1, H), count, device=dev),
                                     slash_offsets=so.unsqueeze(0), slash_counts=cnt.unsqueeze(0),
                                     seq_lens=torch.full((1,), L, device=dev),
                                     pad_offsets=torch.zeros(1, device=dev, dtype=torch.long), length=L, block_size=64)
        lay = vs_layout(sel)
        work = lay.counts.double().sum() * 64 * 64 + lay.column_counts.double().sum() * 64
        return sel, lay, float(work / (H * L * (L + 1) / 2))

    lo, hi = 1, max(1, rest)
    best = None
    for _ in range(iters):
        mid = (lo + hi) // 2
        sel, lay, dens = make(mid)
        if best is None or abs(dens - density) < abs(best[2] - density):
            best = (sel, lay, dens, mid)
        if dens < density:
            lo = mid + 1
        else:
            hi = mid - 1
        if lo > hi:
            break
    return best


def section_vs(res, args, dl, dense_ms):
    from sparse_kernels.methods import VerticalSlash
    from sparse_kernels.triton.prefill import tile_attention
    from sparse_kernels.triton.vertical_slash import vs_layout

    rows = []
    for L in args.lengths:
        if not dl.ok(30):
            rows.append(dict(L=L, skipped="time budget"))
            continue
        count = paper_vs_counts(PAPER_LEN.get(L, L), 10)
        q, k, v = rand_qkv(L, seed=5)
        sel, lay, dens, nc = synthetic_vs_selection(L, count, 0.10)
        row = dict(L=L, count=count, clusters=nc, block_granular_density=round(dens, 4))
        row["index_ms"] = bench(lambda: vs_layout(sel), warmup=1)
        row["attn_ms"] = bench(lambda: tile_attention(q, k, v, lay), warmup=1)
        row["index_plus_attn_ms"] = bench(lambda: tile_attention(q, k, v, vs_layout(sel)), warmup=1)
        if args.sweep:
            t, cfg = best_config(lambda c: tile_attention(q, k, v, lay, config=c),
                                 [dict(BLOCK_N=64, num_warps=w, num_stages=s, BLOCK_C=bc, tma=t)
                                  for t in (True, False) for w in (4, 8) for s in (2, 3) for bc in (32, 64)])
            row["attn_best_ms"], row["attn_best_cfg"] = t, cfg
        # the method's estimation step (window softmax + vertical / slash scores + top-k): its torch code
        # (probabilities materialised per GQA group) and the accelerated method's (Triton window sums)
        if dl.ok(30):
            from sparse_kernels.triton import accelerate

            m = VerticalSlash(vertical_size=count, slash_size=count)
            for name, mm in (("torch", m), ("gpu", accelerate(m))):
                def est(mm=mm):
                    vsc, ssc = mm._row_scores(q[0], k[0], D ** -0.5)
                    vsc[:, :4] = float("inf")
                    ssc[:, :64] = float("inf")
                    return vsc.topk(count, -1).indices.sort(-1).values, ssc.topk(count, -1).indices.sort(-1).values
                try:
                    row[f"{name}_estimation_ms"] = bench(est, warmup=1, min_time=0.1, max_iters=5)
                except Exception as exc:  # noqa: BLE001
                    row[f"{name}_estimation_error"] = f"{type(exc).__name__}: {exc}"[:200]
            if args.sweep:
                from sparse_kernels.triton.snapkv import vs_window_sums

                # the GPU estimation's window sums alone, per diagonal-kernel launch configuration
                t, cfg = best_config(lambda c: vs_window_sums(q[0], k[0], m.last_q, D ** -0.5, **c),
                                     [dict(diag_block=b, diag_warps=w, diag_stages=s) for b in (32, 64, 128)
                                      for w in (2, 4, 8) for s in (1, 2, 3)])
                row["window_sums_default_ms"] = bench(lambda: vs_window_sums(q[0], k[0], m.last_q, D ** -0.5))
                row["window_sums_best_ms"], row["window_sums_best_cfg"] = t, cfg
        cud = dense_ms.get(L)
        if cud:
            row["cudnn_dense_ms"] = cud
            row["speedup_vs_cudnn_index_plus_attn"] = round(cud / row["index_plus_attn_ms"], 2)
            for name in ("torch", "gpu"):
                if row.get(f"{name}_estimation_ms"):
                    row[f"speedup_vs_cudnn_incl_{name}_estimation"] = round(
                        cud / (row["index_plus_attn_ms"] + row[f"{name}_estimation_ms"]), 2)
        rows.append(row)
        print("  vs", row)
        del q, k, v, sel, lay
        torch.cuda.empty_cache()
    res.setdefault("vs", []).extend(rows)


def section_quest(res, args, dl):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparse_kernels.methods import Quest
    from sparse_kernels.methods.quest import QuestState
    from sparse_kernels.triton.decode import dense_decode
    from sparse_kernels.triton.quest import page_bounds, quest_attention, quest_select

    rows = []
    nrot = 4
    for L in args.lengths:
        if not dl.ok(20):
            rows.append(dict(L=L, skipped="time budget"))
            continue
        T = quest_token_budget(PAPER_LEN.get(L, L), 10)
        p = 16
        caches = [rand_qkv(L, seed=40 + i, Lq=1) for i in range(nrot)]
        row = dict(L=L, token_budget=T)
        # dense decode
        row["ours_dense_decode_us"] = bench_graph([lambda c=c: dense_decode(c[0], c[1], c[2]) for c in caches])
        for name, be in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                         ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
            def f(c, be=be):
                with sdpa_kernel([be]):
                    return F.scaled_dot_product_attention(c[0], c[1], c[2], enable_gqa=True)
            try:
                f(caches[0])
                row[name + "_decode_us"] = bench_graph([lambda c=c, f=f: f(c) for c in caches])
            except Exception as exc:  # noqa: BLE001
                row[name + "_decode_error"] = f"{type(exc).__name__}: {exc}"[:160]
        best_cfg = {}
        if args.sweep:
            best = sweep_graph(lambda cfg: [lambda c=c: dense_decode(c[0], c[1], c[2], **cfg) for c in caches],
                               DECODE_CONFIGS, (row["ours_dense_decode_us"], {}), "decode")
            row["ours_dense_decode_tuned_us"], row["decode_cfg"] = best
            best_cfg = best[1]
        dense_best = min(v for kk, v in row.items() if kk.endswith("_decode_us") and v)
        dense_best = min(dense_best, row.get("ours_dense_decode_tuned_us") or dense_best)
        row["dense_best_us"] = dense_best
        # Quest state per cache (page summaries in the key dtype: exact, half the bytes of fp32)
        states = []
        for q, k, v in caches:
            P = L // p
            kp = k.view(1, HKV, P, p, D)
            st = QuestState(page_size=p, page_min=kp.amin(3), page_max=kp.amax(3),
                            seq_lens=torch.full((1,), L, device=DEV),
                            pad_offsets=torch.zeros(1, dtype=torch.long, device=DEV),
                            length=L, token_budget=torch.tensor([T]), prompt_lens=torch.tensor([L]))
            states.append(st)
        for share in (False, True):
            tag = "shared" if share else "perhead"
            quest = Quest(token_budget=T, share_pages=share)
            sels = [quest_select(quest, st, c[0]) for st, c in zip(states, caches)]
            row[f"{tag}_attn_us"] = bench_graph([lambda c=c, s=s: quest_attention(c[0], c[1], c[2], s, **best_cfg)
                                                 for c, s in zip(caches, sels)])
            row[f"{tag}_bounds_us"] = bench_graph([lambda c=c, st=st: page_bounds(st.page_min, st.page_max, c[0], share)
                                                   for c, st in zip(caches, states)])
            row[f"{tag}_select_us"] = bench_graph([lambda c=c, st=st, quest=quest: quest_select(quest, st, c[0])
                                                   for c, st in zip(caches, states)])
            row[f"{tag}_step_us"] = bench_graph([
                lambda c=c, st=st, quest=quest: quest_attention(c[0], c[1], c[2], quest_select(quest, st, c[0]),
                                                                **best_cfg)
                for c, st in zip(caches, states)])
            if share:                  # the fused top-k alone on the static step's candidates, and torch.topk
                from sparse_kernels.triton.quest import topk_pages

                cur = torch.tensor([L // p - 1], device=DEV)     # the newest page: the static step's limit
                cands = [page_bounds(st.page_min, st.page_max, c[0], True, limit=cur, group_rows=True)
                         for c, st in zip(caches, states)]
                kp = T // p + 1
                row["shared_topk_us"] = bench_graph([lambda x=x: topk_pages(x, kp) for x in cands])
                row["shared_torch_topk_us"] = bench_graph([lambda x=x: torch.topk(x, kp, -1, sorted=False)
                                                           for x in cands])
                if args.sweep:
                    row["shared_topk_tuned_us"], row["topk_cfg"] = sweep_graph(
                        lambda cfg: [lambda x=x: topk_pages(x, kp, **cfg) for x in cands], TOPK_CONFIGS,
                        (row["shared_topk_us"], {}), "top-k")
                    # the gathered attention's own launch sweep (few tokens per split)
                    best = sweep_graph(lambda cfg: [lambda c=c, s=s: quest_attention(c[0], c[1], c[2], s, **cfg)
                                                    for c, s in zip(caches, sels)],
                                       QUEST_CONFIGS, (row[f"{tag}_attn_us"], dict(best_cfg)), "quest")
                    row["shared_attn_tuned_us"], row["quest_cfg"] = best
                    row["shared_attn_tuned_speedup_vs_dense"] = round(dense_best / best[0], 2)
            row[f"{tag}_attn_speedup_vs_dense"] = round(dense_best / row[f"{tag}_attn_us"], 2)
            row[f"{tag}_step_speedup_vs_dense"] = round(dense_best / row[f"{tag}_step_us"], 2)
            if not share:
                from sparse_kernels.triton.quest import group_union
                _, uc, _ = group_union(sels[0].pages, sels[0].counts, HKV, -(-L // p))
                row["perhead_union_pages_per_group"] = float(uc.float().mean())
        kv_bytes = 2 * HKV * L * D * 2
        row["dense_hbm_TBps_ours"] = round(kv_bytes / (row["ours_dense_decode_us"] * 1e-6) / 1e12, 2)
        rows.append(row)
        print("  quest", row)
        del caches, states
        torch.cuda.empty_cache()
    res.setdefault("quest", []).extend(rows)


def section_bsparse(res, args, dl, flex_c, dense_ms):
    """Paper Block-Sparse layout (16-token blocks, top-k at 10x; random = worst case for tiling)."""
    from sparse_kernels.triton.prefill import block_layout, tile_attention

    rows = []
    bs = 16
    for L in args.lengths:
        if not dl.ok(40):
            rows.append(dict(L=L, skipped="time budget"))
            continue
        nb = L // bs
        kk = block_sparse_top_k(PAPER_LEN.get(L, L), 10, bs)
        g = torch.Generator(device=DEV).manual_seed(7)
        m = torch.arange(nb, device=DEV).view(-1, 1)
        # random scores, forced diagonal / sub-diagonal / sink, causal, top-min(m+1, k) (chunked over query blocks)
        idx = torch.full((1, H, nb, kk), -1, dtype=torch.long, device=DEV)
        ch = max(1, (1 << 27) // (H * nb))
        for m0 in range(0, nb, ch):
            m1 = min(nb, m0 + ch)
            s = torch.rand(H, m1 - m0, nb, device=DEV, generator=g)
            mm = torch.arange(m0, m1, device=DEV).view(-1, 1)
            j = torch.arange(nb, device=DEV).view(1, -1)
            s = torch.where((j == mm) | (j == mm - 1) | (j == 0), torch.full_like(s, 2.0), s)
            s = torch.where(j > mm, torch.full_like(s, -1.0), s)
            top = s.topk(kk, -1).indices
            ok = torch.arange(kk, device=DEV).view(1, 1, -1) < torch.clamp(mm + 1, max=kk).view(1, -1, 1)
            top = torch.where(ok, top, torch.full_like(top, 1 << 40)).sort(-1).values
            idx[0, :, m0:m1] = torch.where(top >= (1 << 40), torch.full_like(top, -1), top)
        cnt = torch.clamp(m.view(1, 1, -1) + 1, max=kk).expand(1, H, nb).contiguous()
        sel = BlockSelection(block_size=bs, indices=idx, counts=cnt, seq_lens=torch.full((1,), L, device=DEV),
                             pad_offsets=torch.zeros(1, dtype=torch.long, device=DEV), length=L)
        pair_frac = float(cnt.double().sum() * bs * bs / (H * L * (L + 1) / 2))
        q, k, v = rand_qkv(L, seed=9)
        for bm, bn in ((64, 64), (128, 64), (64, 32), (128, 128)):
            if not dl.ok(25):
                rows.append(dict(L=L, tile=f"{bm}x{bn}", skipped="time budget"))
                continue
            row = dict(L=L, top_k=kk, kept_block_frac=round(pair_frac, 4), tile=f"{bm}x{bn}")
            try:
                row["layout_ms"] = bench(lambda: block_layout(sel, bm, bn), warmup=1, min_time=0.1, max_iters=5)
                lay = block_layout(sel, bm, bn)
                tiles = float(lay.counts.double().sum())
                t_idx = torch.arange(L // bm, dtype=torch.float64)
                causal_tiles = float((torch.floor((t_idx * bm + bm - 1) / bn) + 1).sum()) * H
                row["tile_frac"] = round(tiles / causal_tiles, 4)
                row["attn_ms"] = bench(lambda: tile_attention(q, k, v, lay), warmup=1)
                cud = dense_ms.get(L)
                if cud:
                    row["cudnn_dense_ms"] = cud
                    row["speedup_vs_cudnn_attn"] = round(cud / row["attn_ms"], 2)
                    row["speedup_vs_cudnn_layout_plus_attn"] = round(cud / (row["attn_ms"] + row["layout_ms"]), 2)
                if flex_c is not None and (bm, bn) == (64, 64) and L <= args.flex_mask_mod_max_len and dl.ok(90):
                    dense16 = torch.zeros(H, nb, nb + 1, dtype=torch.bool, device=DEV)
                    dense16.scatter_(2, torch.where(idx[0] < 0, torch.full_like(idx[0], nb), idx[0]), True)
                    dense16 = dense16[:, :, :nb].contiguous()

                    def mod(b, h, qi, ki):
                        return (qi >= ki) & dense16[h, qi // bs, ki // bs]
                    bmask = make_block_mask(flex_pieces_from_layout(lay, L // bn), mask_mod=mod)
                    fn = flex_fn(flex_c, q, k, v, bmask, {"BLOCK_M": 64, "BLOCK_N": 64})
                    t0 = time.time()
                    out_f = fn()
                    torch.cuda.synchronize()
                    row["flex_compile_s"] = round(time.time() - t0, 1)
                    row["flex_mask_mod_ms"] = bench(fn, warmup=1)
                    row["max_abs_diff_vs_flex"] = rel_err(tile_attention(q, k, v, lay), out_f)[0]
                    row["flex_over_ours"] = round(row["flex_mask_mod_ms"] / row["attn_ms"], 3)
                    del dense16
                del lay
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                traceback.print_exc()
            rows.append(row)
            print("  bsparse", row)
            torch.cuda.empty_cache()
        del q, k, v, sel, idx
        torch.cuda.empty_cache()
    res.setdefault("bsparse", []).extend(rows)


def section_snapkv(res, args, dl):
    from sparse_kernels.methods import SnapKV
    from sparse_kernels.methods._common import window_probs
    from sparse_kernels.triton.snapkv import MODE_MEAN_SUM, window_scores

    rows = []
    for L in args.lengths:
        if not dl.ok(15):
            rows.append(dict(L=L, skipped="time budget"))
            continue
        q, k, _ = rand_qkv(L, seed=11)
        m = SnapKV(token_capacity=max(L // 10, 200))
        qr, kr = q[0], k[0]
        row = dict(L=L, window=256)
        row["triton_scores_ms"] = bench(lambda: window_scores(qr, kr, 256, D ** -0.5, MODE_MEAN_SUM), warmup=1)
        row["torch_scores_ms"] = bench(lambda: m.token_scores(qr, kr, D ** -0.5), warmup=1, max_iters=10)
        a = window_scores(qr, kr, 256, D ** -0.5, MODE_MEAN_SUM)
        g = H // HKV
        raw = torch.cat([m._raw_scores(window_probs(qr[j * g:(j + 1) * g], kr[j:j + 1], 256, D ** -0.5), g)
                         for j in range(HKV)])
        row["max_abs_err"] = float((a - raw).abs().max())
        row["speedup"] = round(row["torch_scores_ms"] / row["triton_scores_ms"], 2)
        rows.append(row)
        print("  snapkv", row)
        del q, k
        torch.cuda.empty_cache()
    res.setdefault("snapkv", []).extend(rows)


# ------------------------------------------------------------------------------------------ report

def fmt(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def table(rows, cols, title):
    out = [f"### {title}", "", "| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r.get('L')} | skipped: {r['skipped']} |" + " |" * (len(cols) - 2))
            continue
        out.append("| " + " | ".join(fmt(r.get(c[1]), c[2] if len(c) > 2 else 3) for c in cols) + " |")
    return "\n".join(out) + "\n"


def markdown(res):
    md = ["# Kernel benchmark", "", f"device: {res['device']}; torch {res['torch']}, triton {res['triton']}; "
          f"Qwen2.5-7B heads (28 q / 4 kv / d 128), bf16, batch 1; wall {res.get('wall_s')} s", ""]
    if res.get("check"):
        md.append(table(res["check"], [("kernel", "kernel"), ("max abs err", "max_abs_err", 4),
                                       ("rel L2 err", "rel_l2_err", 5), ("ok", "ok"), ("error", "error")],
                        "GPU correctness (bf16, vs sparse_kernels.reference)"))
    if res.get("dense"):
        md.append(table(res["dense"], [("L", "L"), ("SDPA cuDNN ms", "sdpa_cudnn_ms", 2),
                                       ("TF/s", "sdpa_cudnn_tflops", 0), ("SDPA FA2 ms", "sdpa_flash_ms", 2),
                                       ("ours 128 ms", "ours_causal_128_ms", 2), ("TF/s", "ours_causal_128_tflops", 0),
                                       ("ours 64 ms", "ours_causal_64_ms", 2), ("flex ms", "flex_causal_ms", 2),
                                       ("flex compile s", "flex_compile_s", 1)],
                        "Dense causal prefill (SDPA with K/V expanded to 28 heads)"))
    if res.get("block"):
        md.append(table(res["block"], [("L", "L"), ("tile", "tile"), ("target", "target_frac", 2),
                                       ("kept", "kept_tile_frac", 3),
                                       ("ours ms", "ours_ms", 2), ("cfg", "ours_best_cfg"),
                                       ("flex ms", "flex_ms", 2), ("flex/ours (>=1.3)", "flex_over_ours", 2),
                                       ("cuDNN ms", "cudnn_dense_ms", 2), ("speedup vs cuDNN", "speedup_vs_cudnn", 2),
                                       ("ours/(kept x cuDNN) (<=1.2)", "ours_over_frac_x_cudnn", 2),
                                       ("max abs diff vs flex", "max_abs_diff_vs_flex", 4)],
                        "Block-sparse prefill, random kept tiles (identical BlockMask for flex)"))
    if res.get("vs"):
        md.append(table(res["vs"], [("L", "L"), ("V=S count", "count"), ("density", "block_granular_density", 3),
                                    ("index ms", "index_ms", 2), ("attn ms", "attn_ms", 2),
                                    ("index+attn ms", "index_plus_attn_ms", 2), ("cuDNN ms", "cudnn_dense_ms", 2),
                                    ("speedup (>=4 at 128K)", "speedup_vs_cudnn_index_plus_attn", 2),
                                    ("torch estimation ms", "torch_estimation_ms", 1),
                                    ("speedup incl. torch estimation", "speedup_vs_cudnn_incl_torch_estimation", 2),
                                    ("GPU estimation ms", "gpu_estimation_ms", 2),
                                    ("speedup incl. GPU estimation", "speedup_vs_cudnn_incl_gpu_estimation", 2)],
                        "Vertical-Slash at 10x (synthetic selection calibrated to 10 % block-granular density)"))
    if res.get("quest"):
        md.append(table(res["quest"], [("L", "L"), ("T", "token_budget"), ("ours dense us", "ours_dense_decode_us", 1),
                                       ("ours dense tuned us", "ours_dense_decode_tuned_us", 1),
                                       ("SDPA flash us", "sdpa_flash_decode_us", 1),
                                       ("SDPA cuDNN us", "sdpa_cudnn_decode_us", 1),
                                       ("SDPA eff us", "sdpa_efficient_decode_us", 1),
                                       ("per-head attn us", "perhead_attn_us", 1),
                                       ("x dense", "perhead_attn_speedup_vs_dense", 2),
                                       ("per-head step us", "perhead_step_us", 1),
                                       ("shared select us", "shared_select_us", 1),
                                       ("shared top-k us", "shared_topk_us", 1),
                                       ("tuned top-k us", "shared_topk_tuned_us", 1),
                                       ("torch.topk us", "shared_torch_topk_us", 1),
                                       ("shared attn us", "shared_attn_us", 1),
                                       ("x dense (>=5 at 128K)", "shared_attn_speedup_vs_dense", 2),
                                       ("shared attn tuned us", "shared_attn_tuned_us", 1),
                                       ("x dense", "shared_attn_tuned_speedup_vs_dense", 2),
                                       ("shared step us", "shared_step_us", 1),
                                       ("x dense", "shared_step_speedup_vs_dense", 2),
                                       ("union pages/group", "perhead_union_pages_per_group", 0)],
                        "Quest decode step at 1/10 budget (CUDA graphs, 4 rotating caches; 'x dense' = vs the "
                        "fastest dense decode)"))
    if res.get("bsparse"):
        md.append(table(res["bsparse"], [("L", "L"), ("k", "top_k"), ("kept 16-blocks", "kept_block_frac", 3),
                                         ("tile", "tile"), ("tile frac", "tile_frac", 3), ("layout ms", "layout_ms", 2),
                                         ("attn ms", "attn_ms", 2), ("x cuDNN attn", "speedup_vs_cudnn_attn", 2),
                                         ("x cuDNN layout+attn", "speedup_vs_cudnn_layout_plus_attn", 2),
                                         ("flex mask_mod ms", "flex_mask_mod_ms", 2),
                                         ("flex/ours", "flex_over_ours", 2),
                                         ("error", "error")],
                        "Paper Block-Sparse layout (16-token blocks, random top-k at 10x)"))
    if res.get("snapkv"):
        md.append(table(res["snapkv"], [("L", "L"), ("triton ms", "triton_scores_ms", 2),
                                        ("torch ms", "torch_scores_ms", 2), ("speedup", "speedup", 2),
                                        ("max abs err", "max_abs_err", 6)],
                        "SnapKV observation-window scoring (256 queries)"))
    return "\n".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (bench_kernels.json / .md)")
    ap.add_argument("--lengths", default="128000,65536,32768,16384")
    ap.add_argument("--sections", default="check,dense,block,vs,quest,bsparse,snapkv")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the launch-config sweeps")
    ap.add_argument("--flex-mask-mod-max-len", type=int, default=128000)
    args = ap.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
    sections = [s for s in args.sections.split(",") if s]
    if not torch.cuda.is_available():
        print("CUDA is required")
        return 2
    import triton

    t_start = time.time()
    dl = Deadline(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               python=platform.python_version(), args=vars(args))
    flex_c = None
    if not args.no_flex:
        try:
            from torch import _dynamo
            from torch.nn.attention.flex_attention import flex_attention

            _dynamo.config.cache_size_limit = 64
            flex_c = torch.compile(flex_attention, dynamic=False)
        except Exception as exc:  # noqa: BLE001
            res["flex_error"] = str(exc)
    dense_ms: dict[int, float] = {}

    def save():
        res["wall_s"] = round(time.time() - t_start, 1)
        (out / "bench_kernels.json").write_text(json.dumps(res, indent=1, default=str))
        (out / "bench_kernels.md").write_text(markdown(res))

    # pass 1: the longest length in every section (the targets are stated at 128K), pass 2: the others
    longest = max(args.lengths)
    passes = [[longest], [L for L in args.lengths if L != longest]]
    all_lengths = args.lengths
    for pi, lengths in enumerate(passes):
        if not lengths:
            continue
        args.lengths = lengths
        for sec in sections:
            if sec == "check" and pi > 0:
                continue
            if not dl.ok(10):
                res.setdefault("skipped_sections", []).append(f"{sec} {lengths}")
                continue
            print(f"== {sec} {lengths} ({dl.left():.0f} s left)")
            t0 = time.time()
            try:
                if sec == "check":
                    section_check(res, args, dl)
                elif sec == "dense":
                    section_dense(res, args, dl, flex_c)
                    dense_ms.update({r["L"]: r["sdpa_cudnn_ms"] for r in res["dense"] if r.get("sdpa_cudnn_ms")})
                elif sec == "block":
                    section_block(res, args, dl, flex_c, dense_ms)
                elif sec == "vs":
                    section_vs(res, args, dl, dense_ms)
                elif sec == "quest":
                    section_quest(res, args, dl)
                elif sec == "bsparse":
                    section_bsparse(res, args, dl, flex_c, dense_ms)
                elif sec == "snapkv":
                    section_snapkv(res, args, dl)
                else:
                    print(f"unknown section {sec}")
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                res.setdefault("section_errors", {})[f"{sec} {lengths}"] = f"{type(exc).__name__}: {exc}"[:500]
            res.setdefault("section_s", {})[f"{sec} {lengths}"] = round(time.time() - t0, 1)
            save()
    args.lengths = all_lengths
    save()
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
