"""Training-step throughput of the reference model sizes (GPU): eager vs torch.compile'd forward+loss.

    python bench/bench_train_step.py [--sizes ref-20m,ref-2m] [--lengths 1024,8192] [--modes eager,default,reduce-overhead]

Builds each size of studies/train_reference.yaml with random weights, feeds random token batches of the recipe's
tokens_per_batch at each length (width L + answer_pad, as the compiled trainer pads), and prints ms per step
(forward + loss + backward + clip + finiteness check + AdamW, as the trainer) and tokens/s, all measured in this run; with --profile, the top CUDA
kernels and the CPU/GPU time split of one eager step. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workflow_scripts.train_reference import _weighted_loss, new_model, optimizer_step, size_config  # noqa: E402


def build(cfg: dict, size: str, vocab: int = 8192):
    arch, run = size_config(cfg, size)
    t = run["train"]
    model = new_model(arch, t, vocab).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return model, opt, t


def step_fn(model, opt, loss_fn):
    def step(ids, w):     # the trainer's step: forward + loss, then train_reference.optimizer_step
        loss, _, _ = loss_fn(model, ids, w)
        optimizer_step(model, opt, loss)
        return loss
    return step


def time_steps(step, ids, w, n: int) -> float:
    for _ in range(3):
        step(ids, w)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step(ids, w)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "studies" / "train_reference.yaml"))
    ap.add_argument("--sizes", default="ref-20m,ref-2m")
    ap.add_argument("--lengths", default="1024,8192")
    ap.add_argument("--modes", default="eager,default,reduce-overhead")
    ap.add_argument("--tokens", type=int, default=0, help="tokens per batch (0: the recipe's)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    cfg = yaml.safe_load(open(a.config))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, sdpa backends: "
          f"flash={torch.backends.cuda.flash_sdp_enabled()} mem_eff={torch.backends.cuda.mem_efficient_sdp_enabled()}")
    rows = []
    for size in a.sizes.split(","):
        for mode in a.modes.split(","):
            torch._dynamo.reset()
            model, opt, t = build(cfg, size)
            model.train()
            fn = _weighted_loss if mode == "eager" else torch.compile(
                _weighted_loss, mode=None if mode == "default" else mode, dynamic=False)
            step = step_fn(model, opt, fn)
            for L in map(int, a.lengths.split(",")):
                tokens = a.tokens or t["tokens_per_batch"]
                width = L + t["answer_pad"]
                k = max(1, tokens // L)
                ids = torch.randint(0, 8000, (k, width), device="cuda")
                w = torch.full((k, width), 0.1, device="cuda")
                t0 = time.perf_counter()
                step(ids, w)
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
                s = time_steps(step, ids, w, a.steps)
                rows.append((size, mode, L, k, s * 1e3, k * width / s, first))
                print(f"{size:8s} {mode:16s} L={L:5d} rows={k:3d} {s * 1e3:7.2f} ms/step "
                      f"{k * width / s / 1e6:6.2f} M tok/s (first call {first:.1f} s)", flush=True)
                if a.profile and mode == "eager":
                    from torch.profiler import ProfilerActivity, profile
                    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                        for _ in range(3):
                            step(ids, w)
                        torch.cuda.synchronize()
                    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
            del model, opt
            torch.cuda.empty_cache()
    base = {(r[0], r[2]): r[4] for r in rows if r[1] == "eager"}
    print("\nspeed-up over eager (same run):")
    for r in rows:
        if r[1] != "eager" and (r[0], r[2]) in base:
            print(f"  {r[0]} {r[1]} L={r[2]}: {base[(r[0], r[2])] / r[4]:.2f}x")


if __name__ == "__main__":
    main()
