"""Where a decode step's (or a prefill's) GPU time goes: per-kernel time per layer, dense vs the methods.

    python bench/profile_decode_step.py [--length 128000] [--layers 4] [--methods dense,quest_shared,quest]
    python bench/profile_decode_step.py --phase prefill --methods hf_sdpa,dense,vertical_slash,\
        vertical_slash_calibrated [--layers 28]
    python bench/profile_decode_step.py --tiny          # CPU plumbing check (reference executor, CPU ops)

``--phase prefill``: one generation of a single token (the prefill and the last position's logits) per method,
profiled after a warm-up at 4K; prints the kernels by GPU time per layer, their sum, and the wall time of an
unprofiled run of the same prefill (wall minus kernel time = host work and synchronisation). The
``vertical_slash_calibrated`` counts come from bench_e2e's calibration on the same prompt.

For each method, generates twice from the same random prompt with the random-weight Qwen2.5-7B architecture of
bench_e2e.py (``--layers`` of its 28 layers) through the static-cache decode step *without* the CUDA graph
(``fast_decode="eager"``: the graph replays the same kernels, which the profiler then sees one by one): once with
``--steps + 1`` new tokens and once with 1. The difference of the two profiles is the decode steps alone (the
prefill and the capture-free warm-up cancel). Prints, per method, the kernels by GPU time per step and layer, and
the total per step and layer (the dense decode reads the cache once; what a Quest step adds is visible line by
line). Not a test; numbers are from this run only.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_e2e as e2e  # noqa: E402


def prompt_of(model, length: int) -> list[int]:
    g = torch.Generator().manual_seed(length)
    return torch.randint(10, model.config.vocab_size - 100, (length,), generator=g).tolist()


def generate(model, name: str, length: int, new_tokens: int, args, calibrated: dict | None = None,
             cell_length: int | None = None):
    """One generation from the random prompt of ``length`` tokens with the cell (method budgets) of
    ``cell_length`` (default: the same)."""
    from sparse_kernels.hf.generate import greedy_generate

    session, _ = e2e.make_cell(name, cell_length or length, args.ratio, args.executor, args.tiny, calibrated)
    out = greedy_generate(model, [prompt_of(model, length)], new_tokens, eos_ids=set(), pad_id=0, session=session,
                          fast_decode="eager" if session is not None else False, graph_warmup=1)
    e2e._sync()
    return out


def kernel_times(model, name: str, length: int, new_tokens: int, args,
                 calibrated: dict | None = None) -> dict[str, tuple[float, int]]:
    """{kernel name: (total device microseconds, launches)} of one generation (prefill + new_tokens - 1
    decode steps)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = e2e.DEV == "cuda"
    act = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=act) as prof:
        generate(model, name, length, new_tokens, args, calibrated)
    out: dict[str, tuple[float, int]] = defaultdict(lambda: (0.0, 0))
    for ev in prof.key_averages():
        t = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if t > 0 and (cuda or ev.key.startswith("aten::")):
            out[ev.key] = (out[ev.key][0] + t, out[ev.key][1] + ev.count)
    return out


def show(per: dict, layers: int, top: int, head: str) -> None:
    total, launches = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
    print(f"\n== {head}: {total:.1f} us and {launches:.1f} launches per layer "
          f"({total * layers / 1e3:.3f} ms for {layers} layers, all kernels incl. the MLP / projections)")
    for k, (t, c) in sorted(per.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {t:8.1f} us {c:6.2f} x  {k[:110]}")


def compiled_variants() -> int:
    """Number of compiled variants of this package's Triton kernels (all devices): a rise across a run at a
    new length means a specialisation the warm-up did not cover, i.e. a compilation inside the timing."""
    import sys as _sys

    n = 0
    for mod in [m for k, m in list(_sys.modules.items()) if k.startswith("sparse_kernels.triton")]:
        for obj in vars(mod).values():
            for cache in (getattr(obj, "device_caches", None) or {}).values():
                n += len(cache[0])
    return n


def profile_prefill(model, name: str, args) -> None:
    layers = model.config.num_hidden_layers
    warm = min(args.length, 96 if args.tiny else 4096)
    setting, note = None, ""
    if name == "vertical_slash_calibrated":
        setting, rec = e2e.calibrate_vs(model, prompt_of(model, args.length), args.length, args.ratio, args.tiny)
        note = f"; calibrated {rec}"
    generate(model, name, warm, 1, args, setting, cell_length=args.length)  # warm-up: same cell, short prompt
    n0 = compiled_variants()
    out = generate(model, name, args.length, 1, args, setting)                 # unprofiled wall time
    n1 = compiled_variants()
    again = generate(model, name, args.length, 1, args, setting)
    stats = ((out.extras or {}).get("stats") or [{}])[0]
    times = kernel_times(model, name, args.length, 1, args, setting)
    per = {k: (t / layers, c / layers) for k, (t, c) in times.items() if t / layers > 0.5}
    show(per, layers, args.top, f"{name} prefill L={args.length}: wall {out.prefill_s * 1e3:.1f} ms after a "
         f"warm-up at {warm} ({n1 - n0} kernel variants compiled in it), {again.prefill_s * 1e3:.1f} ms again; "
         f"density {stats.get('prefill_density', 1.0):.3f}{note}")
    e2e.free_memory()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=128000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="decode steps profiled")
    ap.add_argument("--methods", default="dense,quest_shared,quest")
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--phase", default="decode", choices=["decode", "prefill"])
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        e2e.DEV = "cpu"
        args.length = min(args.length, 1024 if args.phase == "prefill" else 320)
    elif not torch.cuda.is_available():
        print("CUDA is required (or --tiny)")
        return 2
    args.executor = "reference" if args.tiny else "triton"
    model = e2e.build_model(args.tiny, args.layers)
    layers = model.config.num_hidden_layers
    unit = "GPU" if e2e.DEV == "cuda" else "CPU (self time of aten ops)"
    if args.phase == "prefill":
        print(f"{unit} time per prefill layer; L={args.length}, {layers} layers, ratio {args.ratio}, "
              f"executor {args.executor}")
        for name in args.methods.split(","):
            profile_prefill(model, name, args)
        return 0
    print(f"{unit} time per decode step and layer; L={args.length}, {layers} layers, {args.steps} steps, "
          f"ratio {args.ratio}, executor {args.executor}")
    for name in args.methods.split(","):
        kernel_times(model, name, min(args.length, 4096), 3, args)          # compile / autotune outside
        long = kernel_times(model, name, args.length, args.steps + 1, args)
        short = kernel_times(model, name, args.length, 1, args)
        n = args.steps * layers
        per = {k: ((t - short.get(k, (0.0, 0))[0]) / n, (c - short.get(k, (0.0, 0))[1]) / n)
               for k, (t, c) in long.items()}
        show({k: v for k, v in per.items() if v[0] > 0.05}, layers, args.top, f"{name}: per decode step")
        e2e.free_memory()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
