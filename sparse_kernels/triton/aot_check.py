"""Compile every Triton kernel of this package for a CUDA target without a GPU (ahead of time).

    python -m sparse_kernels.triton.aot_check [--arch 90] [--dtype bf16] [--only prefill,decode,...]

The interpreter used by the CPU tests never runs Triton's compiler, so type errors in the compiled dialect
(e.g. a float literal promoting bf16 to fp32 before ``tl.dot``) only show up on a GPU. This script runs the
full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the ptxas bundled with triton) for the launch
configurations the executors use (unit last-dim strides and 16-divisible pointers / strides, as the launcher
specialises them), and prints, per kernel: whether Hopper ``wgmma`` instructions were emitted, registers per
thread, stack bytes (register spills) and shared memory. Needs no driver (do not set TRITON_INTERPRET).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time


def _resources(cubin: bytes | None) -> str:
    """Registers / stack (spills) of the cubin triton built, read with the bundled cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not cubin or not os.path.exists(tool):
        return "(no resource report)"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        txt = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", txt)
    return f"regs {m.group(1)} stack {m.group(2)} B" if m else "(no resource report)"


def compile_kernel(kernel, types: dict, constexprs: dict, arch: int, num_warps=4, num_stages=3, name=""):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(kernel.fn).parameters)
    free = set(getattr(kernel, "do_not_specialize", None) or [])       # the launcher does not specialise these
    sig, cst, attrs = {}, {}, {}
    for i, p in enumerate(params):
        if p in constexprs:
            sig[p] = "constexpr"
            cst[(i,)] = constexprs[p]
        elif re.fullmatch(r"stride_[a-z]*d", p):
            # what the launcher specialises at run time: unit last-dim strides become constants
            sig[p] = "constexpr"
            cst[(i,)] = 1
        else:
            sig[p] = types.get(p, "i32")
            if (sig[p].startswith("*") or p.startswith("stride_")) and p not in free and i not in free:
                attrs[(i,)] = [["tt.divisibility", 16]]  # 16-byte aligned pointers, strides multiple of 16
    t0 = time.time()
    try:
        c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=cst, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as exc:  # noqa: BLE001
        print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[:2000]}")
        return False
    ptx = c.asm.get("ptx", "")
    print(f"ok   {name:58s} {time.time() - t0:5.1f}s wgmma={'wgmma' in ptx!s:5s} "
          f"smem={c.metadata.shared} {_resources(c.asm.get('cubin'))}")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--only", default="prefill,vs,decode,quest,snapkv")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter does not compile")
        return 2
    from . import decode, prefill, quest, snapkv, vertical_slash

    dt, arch = args.dtype, args.arch
    prec = "ieee" if dt == "fp32" else "tf32"
    only = set(args.only.split(","))
    ok = True
    p = "*" + dt
    if "prefill" in only:
        T = {"Q": p, "K": p, "V": p, "O": p, "TSTART": "*i32", "TCNT": "*i32", "TFULL": "*i32", "TBITS": "*i64",
             "COLS": "*i32", "CCNT": "*i32", "OFF": "*i32", "LEN": "*i32", "qk_scale": "fp32"}
        configs = [(128, 128, 64, False, False, 8, 3, False), (128, 128, 128, False, False, 8, 3, False),
                   (64, 64, 64, False, False, 4, 3, False), (64, 64, 64, True, False, 4, 3, False),
                   (128, 64, 64, True, False, 8, 3, False), (64, 64, 64, False, 32, 4, 3, False),
                   (64, 64, 64, False, 64, 4, 3, False)]
        if dt != "fp32":   # TMA (tensor descriptors) for 16-bit K / V
            configs += [(128, 128, 64, False, False, 4, 2, True), (128, 128, 64, True, False, 4, 2, True),
                        (64, 64, 64, False, 32, 4, 2, True)]
        for bm, tile_n, bn, bits, cols, nw, ns, tma in configs:
            ok &= compile_kernel(prefill._sparse_prefill_kernel, T, dict(
                BLOCK_D=128, BLOCK_M=bm, BLOCK_N=bn, SPLIT_N=tile_n // bn, HAS_BITS=bits, SUB_M=16, SUB_N=16,
                BITS_PER_ROW=tile_n // 16, HAS_COLS=bool(cols), BLOCK_C=int(cols) or 64, EVEN_D=True, PREC=prec,
                USE_TMA=tma), arch, nw, ns, f"prefill tile {bm}x{tile_n} BLOCK_N={bn} bits={bits} cols={cols} w{nw}"
                + (" tma" if tma else ""))
    if "vs" in only:
        ints = {k: "*i32" for k in ("SLASH", "SCNT", "VERT", "VCNT", "LEN", "TSTART", "TCNT", "TFULL", "COLS", "CCNT")}
        ok &= compile_kernel(vertical_slash._vs_index_kernel, ints, dict(BS=64, BLOCK_S=128), arch, 1, 1,
                             "vertical-slash index builder")
    if "decode" in only:
        TD = {"Q": p, "K": p, "V": p, "PAGES": "*i32", "PCNT": "*i32", "PBITS": "*i32", "OFF": "*i32", "PLEN": "*i32",
              "RSTART": "*i32", "REND": "*i32", "M_OUT": "*fp32", "L_OUT": "*fp32", "ACC_OUT": "*fp32",
              "qk_scale": "fp32"}
        TD64 = dict(TD, PCNT="*i64", OFF="*i64", PLEN="*i64", RSTART="*i64", REND="*i64")   # int64 index inputs
        for pages, rng, bits, page, end, types in [
                (True, False, True, 16, False, TD), (True, False, False, 16, False, TD),
                (True, False, False, 16, False, TD64), (False, True, False, 16, False, TD),
                (True, True, False, 1, False, TD),
                (False, True, False, 16, True, TD)]:   # end: static-cache span decode
            ok &= compile_kernel(decode._decode_partial_kernel, types, dict(
                PAGE=page, BLOCK_N=64, BLOCK_R=16, BLOCK_D=128, HAS_PAGES=pages, HAS_RANGE=rng, HAS_END=end,
                HAS_BITS=bits, HAS_OFF=pages, HAS_PLEN=pages, USE_DOT=True, PREC=prec), arch, 4, 2,
                f"decode pages={pages} range={rng} bits={bits} page={page} end={end}"
                f"{' int64 indices' if types is TD64 else ''}")
        ok &= compile_kernel(decode._decode_combine_kernel,
                             {"M_IN": "*fp32", "L_IN": "*fp32", "ACC_IN": "*fp32", "O": p},
                             dict(BLOCK_S=64, BLOCK_R=16, BLOCK_D=128), arch, 4, 1, "decode combine")
    if "quest" in only:
        # (limit, group rows): the static-cache decode's candidate list, one row per group when shared
        for sdt, shared, lim in ((dt, False, False), (dt, True, False), ("fp32", False, False),
                                 ("fp32", False, True), ("fp32", True, True)):
            sp = "*" + sdt
            ok &= compile_kernel(quest._page_bounds_kernel, {"Q": sp, "PMIN": sp, "PMAX": sp, "OUT": "*fp32",
                                                             "LIMIT": "*i32"},
                                 dict(BLOCK_P=quest.block_p_for(sdt), BLOCK_R=16, BLOCK_D=128, SHARED=shared,
                                      USE_DOT=True, PREC="ieee" if sdt == "fp32" else "tf32", HAS_LIMIT=lim,
                                      GROUP_ROWS=shared and lim), arch, 4, 2,
                                 f"quest page bounds {sdt} shared={shared} limit={lim}")
        for krow, lim, radix in ((False, False, 8), (True, True, 8), (True, True, 4)):
            ok &= compile_kernel(quest._topk_pages_kernel, {"X": "*fp32", "KROW": "*i32", "LIMIT": "*i32",
                                                            "OUT": "*i32", "CNT": "*i32"},
                                 dict(BLOCK=8192, HAS_KROW=krow, HAS_LIMIT=lim, DROP_NEG_INF=lim, RADIX=radix), arch,
                                 16, 3, f"quest top-k pages k_row={krow} limit={lim} radix={radix}")
    if "snapkv" in only:
        ok &= compile_kernel(snapkv._window_lse_kernel, {"Q": p, "K": p, "M_OUT": "*fp32", "L_OUT": "*fp32",
                                                         "qk_scale": "fp32"},
                             dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=128, PREC=prec), arch, 4, 3, "window lse")
        for mode in (0, 1, 2):
            ok &= compile_kernel(snapkv._window_score_kernel, {"Q": p, "K": p, "LSE": "*fp32", "OUT": "*fp32",
                                                               "qk_scale": "fp32"},
                                 dict(MODE=mode, BLOCK_M=64, BLOCK_N=64, BLOCK_D=128, PREC=prec), arch, 4, 3,
                                 f"window scores mode {mode}")
        ok &= compile_kernel(snapkv._window_diag_kernel, {"Q": p, "K": p, "LSE": "*fp32", "OUT": "*fp32",
                                                          "qk_scale": "fp32"},
                             dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=128, PREC=prec), arch, 4, 3,
                             "window diagonal sums (V-S slash scores), default 4 warps")
    print("all kernels compiled" if ok else "SOME KERNELS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
