"""Experiment (H100): does a TMA / warp-specialised variant of the tile kernel close the gap to cuDNN?

The block-sparse target of issue 8 (within 1.2x of kept fraction x cuDNN dense) needs a base kernel at about
cuDNN / 1.2 (~495 TF/s on the H100); ``_sparse_prefill_kernel`` (pointer loads) runs at ~415 TF/s. This script
times, on the same tile layouts (dense causal and random kept tiles):

* ``ours``: ``sparse_kernels.triton.prefill.tile_attention`` (default launch);
* ``tma``: the same loop over the layout's key-tile list, with K / V / Q / O through device-side tensor
  descriptors (TMA), optionally ``tl.range(..., warp_specialize=True)`` on the unmasked tiles;
* cuDNN SDPA dense (K / V expanded outside the timing).

It prints TF/s (causal FLOPs x kept fraction) and ratios measured in one run; correctness of each variant
against ``tile_attention`` (max |err|) is printed beside it.

    python bench/exp_hopper_prefill.py --lengths 128000 --out /tmp/exp
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import DT, DEV, HKV, H, D, bench, rand_qkv, random_tile_layout  # noqa: E402
from sparse_kernels.triton.prefill import causal_layout, tile_attention  # noqa: E402


@triton.jit
def _tma_tile_kernel(Q, K, V, O, TSTART, TCNT, TFULL, L, qk_scale, stride_tm, NQT,
                     HQ: tl.constexpr, GROUPS: tl.constexpr, HEAD_D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr):
    # q, o: [HQ * L, D] (head-major); k, v: [HKV * L, D]; batch 1, no padding (experiment)
    m = tl.num_programs(0) - 1 - tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUPS
    dq = tl.make_tensor_descriptor(Q, shape=[HQ * L, HEAD_D], strides=[HEAD_D, 1], block_shape=[BLOCK_M, HEAD_D])
    do = tl.make_tensor_descriptor(O, shape=[HQ * L, HEAD_D], strides=[HEAD_D, 1], block_shape=[BLOCK_M, HEAD_D])
    dk = tl.make_tensor_descriptor(K, shape=[(HQ // GROUPS) * L, HEAD_D], strides=[HEAD_D, 1],
                                   block_shape=[BLOCK_N, HEAD_D])
    dv = tl.make_tensor_descriptor(V, shape=[(HQ // GROUPS) * L, HEAD_D], strides=[HEAD_D, 1],
                                   block_shape=[BLOCK_N, HEAD_D])
    qrow = h * L + m * BLOCK_M
    krow = kvh * L
    q = dq.load([qrow, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    t_base = TSTART + (h * NQT + m).to(tl.int64) * stride_tm
    cnt = tl.load(TCNT + h * NQT + m)
    nfull = tl.load(TFULL + h * NQT + m)
    for i in tl.range(0, nfull, warp_specialize=WS):
        start = tl.load(t_base + i)
        k = dk.load([krow + start, 0])
        qk = tl.dot(q, k.T)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = dv.load([krow + start, 0])
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    offs_m = m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for i in range(nfull, cnt):
        start = tl.load(t_base + i)
        k = dk.load([krow + start, 0])
        qk = tl.dot(q, k.T) * qk_scale
        qk = tl.where((start + offs_n)[None, :] <= offs_m[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = dv.load([krow + start, 0])
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    do.store([qrow, 0], (acc / l_i[:, None]).to(O.dtype.element_ty))


def tma_attention(q, k, v, lay, ws: bool, num_warps: int, num_stages: int):
    L = q.shape[2]
    qf = q[0].contiguous().view(H * L, D)
    kf = k[0].contiguous().view(HKV * L, D)
    vf = v[0].contiguous().view(HKV * L, D)
    o = torch.empty_like(qf)
    st = lay.starts[0].contiguous()
    cnt = lay.counts[0].contiguous()
    nf = lay.n_full[0].contiguous()
    nqt = st.shape[1]
    _tma_tile_kernel[(nqt, H)](qf, kf, vf, o, st, cnt, nf, L, D ** -0.5 * 1.4426950408889634, st.stride(1), nqt,
                               HQ=H, GROUPS=H // HKV, HEAD_D=D, BLOCK_M=lay.block_m, BLOCK_N=lay.block_n, WS=ws,
                               num_warps=num_warps, num_stages=num_stages)
    return o.view(1, H, L, D)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="128000")
    ap.add_argument("--out", default="/tmp/exp_hopper")
    args = ap.parse_args()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=DEV))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    for L in [int(x) for x in args.lengths.split(",")]:
        q, k, v = rand_qkv(L, seed=1)
        ke, ve = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            cudnn_ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, ke, ve, is_causal=True))
        del ke, ve
        flops = 4 * H * D * L * L / 2
        print(f"L={L} cuDNN {cudnn_ms:.2f} ms = {flops / cudnn_ms / 1e9:.0f} TF/s", flush=True)
        layouts = [("causal128", causal_layout(1, H, L, 128, 128, DEV), 1.0),
                   ("causal128x64", causal_layout(1, H, L, 128, 64, DEV), 1.0)]
        lay10, _, kept10 = random_tile_layout(L, 128, 128, 0.10, seed=3)
        layouts.append(("rand10%_128", lay10, kept10))
        for name, lay, kept in layouts:
            ref = tile_attention(q, k, v, lay)
            ours = bench(lambda: tile_attention(q, k, v, lay))
            row = dict(L=L, layout=name, kept=round(kept, 4), cudnn_ms=cudnn_ms, ours_ms=ours,
                       ours_tfs=round(flops * kept / ours / 1e9))
            print(f"  {name}: ours {ours:.2f} ms ({row['ours_tfs']} TF/s); kept x cuDNN {kept * cudnn_ms:.2f} ms",
                  flush=True)
            best = None
            for ws, nw, ns in itertools.product((False, True), (4, 8), (2, 3)):
                tag = f"tma ws={int(ws)} w={nw} s={ns}"
                try:
                    t0 = time.time()
                    o = tma_attention(q, k, v, lay, ws, nw, ns)
                    torch.cuda.synchronize()
                    err = float((o.float() - ref.float()).abs().max())
                    ms = bench(lambda: tma_attention(q, k, v, lay, ws, nw, ns))
                    print(f"    {tag}: {ms:.2f} ms ({flops * kept / ms / 1e9:.0f} TF/s, x ours {ours / ms:.2f}, "
                          f"/ (kept x cuDNN) {ms / (kept * cudnn_ms):.2f}) err {err:.3g} first {time.time() - t0:.1f}s",
                          flush=True)
                    if err < 0.05 and (best is None or ms < best[0]):
                        best = (ms, tag)
                except Exception as exc:  # noqa: BLE001
                    print(f"    {tag}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            if best:
                row.update(tma_best_ms=best[0], tma_best=best[1], tma_tfs=round(flops * kept / best[0] / 1e9),
                           tma_over_kept_cudnn=round(best[0] / (kept * cudnn_ms), 3))
            rows.append(row)
        del q, k, v
        torch.cuda.empty_cache()
    (out / "exp_hopper_prefill.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
