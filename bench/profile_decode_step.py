"""Where a decode step's GPU time goes: per-kernel time of one static-cache decode step, dense vs Quest.

    python bench/profile_decode_step.py [--length 128000] [--layers 4] [--methods dense,quest_shared,quest]
    python bench/profile_decode_step.py --tiny          # CPU plumbing check (reference executor, CPU ops)

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


def kernel_times(model, name: str, length: int, new_tokens: int, args) -> dict[str, tuple[float, int]]:
    """{kernel name: (total device microseconds, launches)} of one generation (prefill + new_tokens - 1
    decode steps)."""
    from torch.profiler import ProfilerActivity, profile

    from sparse_kernels.hf.generate import greedy_generate

    g = torch.Generator().manual_seed(length)
    prompt = torch.randint(10, model.config.vocab_size - 100, (length,), generator=g).tolist()
    session, _ = e2e.make_cell(name, length, args.ratio, args.executor, args.tiny)
    cuda = e2e.DEV == "cuda"
    act = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=act) as prof:
        greedy_generate(model, [prompt], new_tokens, eos_ids=set(), pad_id=0, session=session, fast_decode="eager",
                        graph_warmup=1)
        e2e._sync()
    out: dict[str, tuple[float, int]] = defaultdict(lambda: (0.0, 0))
    for ev in prof.key_averages():
        t = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if t > 0 and (cuda or ev.key.startswith("aten::")):
            out[ev.key] = (out[ev.key][0] + t, out[ev.key][1] + ev.count)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=128000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="decode steps profiled")
    ap.add_argument("--methods", default="dense,quest_shared,quest")
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        e2e.DEV = "cpu"
        args.length = min(args.length, 320)
    elif not torch.cuda.is_available():
        print("CUDA is required (or --tiny)")
        return 2
    args.executor = "reference" if args.tiny else "triton"
    model = e2e.build_model(args.tiny, args.layers)
    layers = model.config.num_hidden_layers
    unit = "GPU" if e2e.DEV == "cuda" else "CPU (self time of aten ops)"
    print(f"{unit} time per decode step and layer; L={args.length}, {layers} layers, {args.steps} steps, "
          f"ratio {args.ratio}, executor {args.executor}")
    for name in args.methods.split(","):
        kernel_times(model, name, min(args.length, 4096), 3, args)          # compile / autotune outside
        long = kernel_times(model, name, args.length, args.steps + 1, args)
        short = kernel_times(model, name, args.length, 1, args)
        n = args.steps * layers
        per = {k: ((t - short.get(k, (0.0, 0))[0]) / n, (c - short.get(k, (0.0, 0))[1]) / n)
               for k, (t, c) in long.items()}
        per = {k: v for k, v in per.items() if v[0] > 0.05}
        total, launches = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
        print(f"\n== {name}: {total:.1f} us and {launches:.1f} launches per step and layer "
              f"({total * layers / 1e3:.3f} ms per step for {layers} layers, all kernels incl. the MLP / projections)")
        for k, (t, c) in sorted(per.items(), key=lambda kv: -kv[1][0])[:args.top]:
            print(f"  {t:8.1f} us {c:5.2f} x  {k[:110]}")
        e2e.free_memory()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
