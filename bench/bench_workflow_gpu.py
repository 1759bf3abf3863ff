"""Workflow-level GPU benchmark: the study run by Snakemake on one GPU, measured phase by phase.

A random-weight checkpoint with Qwen2.5-7B's architecture is written to local disk (tokenizer of the shipped
models/ref-2m; nothing downloaded) and the study below runs through the real workflow (model server, calibration,
cells, scoring, aggregation), exactly as a user runs it:

    tasks: [ruler_niah], lengths: --lengths, samples: --samples (one shard per cell), batch 1,
    max_new_tokens: --new-tokens, dense + every method at --ratio (executor: auto = the Triton kernels on CUDA)

Commands (on the GPU machine; see bench/run_workflow_gpu.sh, which installs the wheel folder first):

    python bench/bench_workflow_gpu.py run --work results/bench_wf [--targets prefill|decode|all] [--lengths ...]
    python bench/bench_workflow_gpu.py report --work results/bench_wf --out docs/results/workflow_gpu_h100
    python bench/bench_workflow_gpu.py prefills DIR     # prefills a study's predictions computed (any device)

``run`` may be called several times on the same --work folder (one device call each): Snakemake continues the
study, and every call appends its wall time and its Snakemake log to the record. ``--targets`` picks the cells a
call runs (prefill = dense + the prefill methods, decode = the decode-side methods). ``run`` also measures, in
its own process after Snakemake, the device's bf16 GEMM and cuDNN causal SDPA throughput at each length and the
HBM copy bandwidth: the physical limits the report prints beside every measured time.

``report`` reads the cells' parquet rows (prefill time, decode time per token, realized density), the parquet
metadata (model load), the calibration files (load, statistics, solve) and the Snakemake logs (wall time of every
job), and writes ``<out>.json`` and ``<out>.md``: GPU-seconds per phase, per method the wall time per sample
beside its physical limit, and the issue's target checks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("vertical_slash", "flexprefill", "block_sparse", "snapkv", "ada_snapkv", "quest")
PREFILL = ("vertical_slash", "flexprefill", "block_sparse")
MODEL = "qwen7b"
# Qwen2.5-7B(-Instruct) architecture (its config.json), random weights
QWEN25_7B = dict(
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", hidden_size=3584,
    intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
    vocab_size=152064, max_position_embeddings=131072 + 4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
    tie_word_embeddings=False, use_sliding_window=False, sliding_window=None, max_window_layers=28,
    attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16")
TOKENIZER_FROM = ROOT / "models" / "ref-2m"
# --tiny: the same pipeline on the CPU with a small model (a smoke test of this script, not a benchmark)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            vocab_size=8192, num_hidden_layers=2, max_window_layers=2, torch_dtype="float32")


# ---------------------------------------------------------------------------------------------- run
def write_checkpoint(folder: Path, arch: dict) -> float:
    """The random-weight checkpoint (bf16 safetensors) + the reference tokenizer; seconds taken (0 if present)."""
    if (folder / "config.json").is_file():
        return 0.0
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    t0 = time.perf_counter()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, arch["torch_dtype"]))
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen2ForCausalLM(Qwen2Config(**arch))
    finally:
        torch.set_default_dtype(prev)
    model.save_pretrained(tmp, max_shard_size="4GB")
    AutoTokenizer.from_pretrained(TOKENIZER_FROM).save_pretrained(tmp)
    del model
    torch.cuda.empty_cache()
    tmp.rename(folder)
    return time.perf_counter() - t0


def study(ckpt: Path, lengths: list[int], samples: int, new_tokens: int, ratio: float, tiny: bool,
          decode_ratios: list[float] | None = None, share_prefill: bool = True) -> dict:
    model = ({"path": str(ckpt), "dtype": "float32", "device": "cpu"} if tiny else
             {"path": str(ckpt), "dtype": "bfloat16", "device": "cuda"})
    return {"seed": 43, "samples": samples, "shard_size": samples, "prompt_mode": "direct",
            "max_new_tokens": new_tokens, "batch_size": 1,
            "models": {MODEL: model},
            "tasks": ["ruler_niah"], "lengths": lengths,
            "model_server": {"share_prefill": share_prefill},
            "methods": {"dense": {}, **{m: {"ratios": [ratio] if m in PREFILL else (decode_ratios or [ratio])}
                                        for m in METHODS}}}


def cell_path(length: int, method: str, ratio: float) -> str:
    from workflow_scripts.config import PRED, fmt_ratio

    return PRED.format(model=MODEL, task="ruler_niah", length=length, method=method,
                       ratio="1" if method == "dense" else fmt_ratio(ratio), shard=0)


def measure_device(lengths: list[int]) -> dict:
    """bf16 GEMM TFLOP/s (8192^3), cuDNN causal SDPA TFLOP/s per length (the model's 28 heads, d 128, B 1) and
    the HBM copy bandwidth (GB/s, read + write), each the best of a few timed repetitions."""
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")

    def best(fn, reps=5):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        return min(times)

    out = {"device": torch.cuda.get_device_name(0)}
    n = 8192
    x = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    out["gemm_tflops"] = 2 * n**3 / best(lambda: x @ y) / 1e12
    del x, y
    buf = torch.empty(2**30, device=dev, dtype=torch.uint8)
    dst = torch.empty_like(buf)
    out["hbm_gbps"] = 2 * buf.numel() / best(lambda: dst.copy_(buf)) / 1e9
    del buf, dst
    out["sdpa_tflops"] = {}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for L in lengths:
        q = torch.randn(1, 28, L, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, 28, L, 128, device=dev, dtype=torch.bfloat16)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            t = best(lambda: F.scaled_dot_product_attention(q, k, k, is_causal=True), reps=3)
        out["sdpa_tflops"][str(L)] = 4 * 28 * 128 * L * L / 2 / t / 1e12
        del q, k
        torch.cuda.empty_cache()
    return out


def cmd_run(a) -> None:
    work = Path(a.work).resolve()
    wd = work / "wd"
    wd.mkdir(parents=True, exist_ok=True)
    record_path = work / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"calls": []}
    ckpt = Path(a.checkpoint).resolve()
    t_ckpt = write_checkpoint(ckpt, {**QWEN25_7B, **(TINY if a.tiny else {})})
    cfg = study(ckpt, a.lengths, a.samples, a.new_tokens, a.ratio, a.tiny, a.decode_ratios, a.share_prefill == "true")
    import yaml

    (wd / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    methods = {"prefill": ["dense", *PREFILL], "decode": [m for m in METHODS if m not in PREFILL],
               "all": ["dense", *METHODS], "decode_side": ["dense", *(m for m in METHODS if m not in PREFILL)]
               }[a.targets]
    targets = [cell_path(L, m, r) for L in (a.run_lengths or a.lengths) for m in methods
               for r in ([a.ratio] if m in PREFILL or m == "dense" else (a.decode_ratios or [a.ratio]))]
    if a.aggregate:
        targets.append("results/aggregate/summary.parquet")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(wd),
           "--configfile", str(wd / "study.yaml"), "--cores", str(a.cores), "--resources", "gpu=1",
           "--scheduler", "greedy", "--workflow-profile", "none", "--rerun-incomplete", *targets]
    logs_before = set(glob.glob(str(wd / ".snakemake" / "log" / "*.log")))
    t0 = time.time()
    proc = subprocess.run(cmd, text=True, capture_output=True)
    wall = time.time() - t0
    new_logs = sorted(set(glob.glob(str(wd / ".snakemake" / "log" / "*.log"))) - logs_before)
    print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n")
    call = {"targets": a.targets, "lengths": a.run_lengths or a.lengths, "wall_s": wall, "returncode": proc.returncode,
            "checkpoint_write_s": t_ckpt, "snakemake_logs": [os.path.relpath(p, work) for p in new_logs],
            "started": dt.datetime.fromtimestamp(t0, dt.timezone.utc).isoformat()}
    if a.measure:
        call["device"] = measure_device(a.run_lengths or a.lengths)
    record["calls"].append(call)
    record["study"] = cfg
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(record_path)
    call["prefills"] = prefill_summary(wd, targets)
    print(json.dumps({k: v for k, v in call.items() if k != "snakemake_logs"}, indent=1))
    if proc.returncode:
        sys.exit(proc.returncode)


def prefill_summary(wd: Path, targets: list[str]) -> dict:
    """Prefills the targets' rows record, per length: cell-samples, prefills computed (a row whose prefill was
    shared by n cells counts 1/n) and their seconds (each shared prefill counted once; a row's prefill_ms is its
    batch's)."""
    import pyarrow.parquet as pq

    out: dict = {}
    for t in targets:
        p = wd / t
        if not t.endswith("part.parquet") or not p.is_file():
            continue
        length = int(t.split("length=", 1)[1].split("/", 1)[0])
        o = out.setdefault(str(length), {"cell_samples": 0, "prefills": 0.0, "prefill_s": 0.0})
        for r in pq.read_table(p, columns=["prefill_ms", "prefill_shared_by", "batch_size"]).to_pylist():
            n = r["prefill_shared_by"] or 1
            o["cell_samples"] += 1
            o["prefills"] += 1 / n
            o["prefill_s"] += r["prefill_ms"] / 1e3 / n / r["batch_size"]
    for o in out.values():
        o["prefills"] = round(o["prefills"], 6)
    return out


# ---------------------------------------------------------------------------------------------- report
_TS = re.compile(r"^\s*\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")
_RULE = re.compile(r"^\s*(?:local)?rule (\w+):")
_JOBID = re.compile(r"^\s*jobid: (\d+)")
_DONE = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")


def job_times(log: Path) -> list[tuple[str, float]]:
    """(rule, wall seconds) of every job a Snakemake log shows finishing (timestamps have 1 s resolution)."""
    ts = None
    pending = None
    start: dict[str, tuple[str, float]] = {}
    out = []
    for line in log.read_text().splitlines():
        m = _TS.match(line)
        if m:
            ts = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
        if (m := _RULE.match(line)):
            pending = m.group(1)
        elif (m := _JOBID.match(line)) and pending:
            start[m.group(1)] = (pending, ts)
            pending = None
        elif (m := _DONE.search(line)) and m.group(1) in start:
            rule, t0 = start.pop(m.group(1))
            out.append((rule, ts - t0))
    return out


def cmd_report(a) -> None:
    import pyarrow.parquet as pq

    from workflow_scripts.estimate import device_seconds
    from workflow_scripts.io import read_metadata
    from workflow_scripts.server_plan import shape_from_config

    work = Path(a.work).resolve()
    wd = work / "wd"
    record = json.loads((work / "record.json").read_text())
    cfg = record["study"]
    ratio = cfg["methods"]["vertical_slash"]["ratios"][0]
    samples = cfg["samples"]
    device = None                   # the device measurements of every call that made them (SDPA rate per length)
    for c in record["calls"]:
        if "device" in c:
            sdpa = {**(device or {}).get("sdpa_tflops", {}), **c["device"]["sdpa_tflops"]}
            device = {**c["device"], "sdpa_tflops": sdpa}
    jobs = [j for c in record["calls"] for p in c["snakemake_logs"] for j in job_times(work / p)]
    by_rule: dict[str, float] = {}
    for rule, s in jobs:
        by_rule[rule] = by_rule.get(rule, 0.0) + s
    shape = shape_from_config(QWEN25_7B)
    cells, loads = {}, {}
    for L in cfg["lengths"]:
        for m in ["dense", *METHODS]:
            p = wd / cell_path(L, m, ratio)
            if not p.is_file():
                continue
            rows = pq.read_table(p).to_pylist()
            meta = read_metadata(p)
            loads[(meta.get("model_server") or {}).get("load_id", str(p))] = meta.get("model_load_s", 0.0)
            steps = [max(r["output_tokens"] - 1, 0) for r in rows]
            pre = [r["prefill_ms"] / 1e3 for r in rows]
            dec = [(r["decode_ms_per_token"] or 0) * s / 1e3 for r, s in zip(rows, steps)]
            phase = "prefill" if m in PREFILL else "decode"
            dens = [r[f"{phase}_density"] for r in rows if r[f"{phase}_density"] is not None]
            density = sum(dens) / len(dens) if dens else 1.0
            n_tok = sum(r["input_tokens"] for r in rows) / len(rows)
            limit = None
            if device:
                pre_limit, tok_limit = device_seconds(
                    shape, 2, n_tok, cfg["max_new_tokens"], density if m in PREFILL else 1.0,
                    density if m not in PREFILL else 1.0, device["gemm_tflops"] * 1e12,
                    device["sdpa_tflops"][str(L)] * 1e12, device["hbm_gbps"] * 1e9)
                limit = {"prefill_s": pre_limit, "decode_ms_per_token": tok_limit * 1e3,
                         "sample_s": pre_limit + tok_limit * (sum(steps) / len(steps))}
            cells[f"{L}/{m}"] = {
                "length": L, "method": m, "n": len(rows), "executor": meta.get("executor"),
                "prefill_s": sum(pre) / len(pre), "decode_ms_per_token": 1e3 * sum(dec) / max(sum(steps), 1),
                "decode_s": sum(dec) / len(dec), "sample_s": (sum(pre) + sum(dec)) / len(rows),
                "density": density, "input_tokens": n_tok, "limit": limit,
                "sum_prefill_s": sum(pre), "sum_decode_s": sum(dec)}
    calib = []
    for f in sorted(wd.glob("results/calibration/model=*/length=*/method=*/params=*/calibration.json")):
        c = json.loads(f.read_text())
        calib.append({"method": c["method"], "length": c["length"], "seconds": c["seconds"],
                      "evaluations": c.get("evaluations"),
                      "settings": {r: v["setting"] for r, v in c["results"].items()}})
    kernel_sum = sum(c["sum_prefill_s"] + c["sum_decode_s"] for c in cells.values())
    load_s = sum(loads.values())
    wall = sum(c["wall_s"] for c in record["calls"])
    phases = {
        "task data (CPU)": by_rule.get("task_data", 0) + by_rule.get("calibration_data", 0),
        "calibration (GPU, job wall)": by_rule.get("calibrate", 0),
        "model load (GPU, in servers)": load_s,
        "prefill (GPU)": sum(c["sum_prefill_s"] for c in cells.values()),
        "decode (GPU)": sum(c["sum_decode_s"] for c in cells.values()),
        "server other (GPU held: warm-up, graph capture, I/O)": by_rule.get("model_server", 0) - load_s - kernel_sum,
        "scoring + aggregation (CPU)": sum(by_rule.get(r, 0) for r in ("score", "aggregate")),
        "workflow wall (all calls)": wall,
    }
    # calibration cost against the cells it serves, evaluation scaled to 100 samples
    served = {}
    for c in calib:
        key = f"{c['length']}/{c['method']}"
        if key in cells:
            served[key] = {"calibration_s": c["seconds"]["total"],
                           "cell_at_100_samples_s": cells[key]["sample_s"] * 100,
                           "share": c["seconds"]["total"] / (cells[key]["sample_s"] * 100)}
    checks = {}
    for L in cfg["lengths"]:
        d = cells.get(f"{L}/dense")
        if not d:
            continue
        vs = cells.get(f"{L}/vertical_slash")
        if vs and L >= 100_000:
            checks[f"{L}: V-S prefill speed-up over dense (target >= 2.0)"] = d["prefill_s"] / vs["prefill_s"]
        for m in METHODS:
            c = cells.get(f"{L}/{m}")
            if c and L <= 40_000:
                checks[f"{L}: {m} sample time / dense (target <= 1.0)"] = c["sample_s"] / d["sample_s"]
        for m in ("quest", "snapkv"):
            c = cells.get(f"{L}/{m}")
            if c:
                checks[f"{L}: {m} decode ms/token / dense (target <= 1.0)"] = \
                    c["decode_ms_per_token"] / d["decode_ms_per_token"]
    if served:
        total_cal = sum(v["calibration_s"] for v in served.values())
        total_cells = sum(v["cell_at_100_samples_s"] for v in served.values())
        checks["calibration GPU time / served cells at 100 samples (target <= 0.10)"] = total_cal / total_cells
    if kernel_sum:
        checks["workflow wall / sum of the samples' prefill + decode (target <= 1.3)"] = wall / kernel_sum
    # prices for the GPU-hour estimate (workflow_scripts/estimate.py): load seconds per GB of weights, and a
    # calibration job's work beyond its load in dense prefills of one sample at its length
    weights_gb = shape.params * 2 / 1e9           # the whole checkpoint is read, as the estimate prices a load
    load_s_per_gb = (sum(loads.values()) / len(loads) / weights_gb) if loads else None
    cal_samples = [(c["seconds"]["total"] - c["seconds"].get("load", 0)) / cells[f"{c['length']}/dense"]["prefill_s"]
                   for c in calib if f"{c['length']}/dense" in cells]
    gpu_held = by_rule.get("calibrate", 0) + by_rule.get("model_server", 0)
    out = {"device": device, "study": cfg, "phases_s": phases, "load_s_per_gb": load_s_per_gb,
           "calibration_dense_samples": sum(cal_samples) / len(cal_samples) if cal_samples else None,
           "gpu_held_s": gpu_held, "cells": cells, "calibration": calib,
           "calibration_served": served, "checks": checks, "calls": record["calls"], "jobs_by_rule_s": by_rule}
    dest = Path(a.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_suffix(".json").write_text(json.dumps(out, indent=1))
    md = [f"# Workflow GPU benchmark: {device['device'] if device else '?'}", "",
          f"Random-weight Qwen2.5-7B architecture, NIAH, {samples} samples per cell, {cfg['max_new_tokens']} new "
          f"tokens, batch 1, every method at {ratio:g}x, executor auto. Device limits measured in the run: bf16 GEMM "
          + (f"{device['gemm_tflops']:.0f} TFLOP/s, cuDNN causal SDPA "
             + ", ".join(f"{v:.0f} TFLOP/s at {k}" for k, v in device["sdpa_tflops"].items())
             + f", HBM copy {device['hbm_gbps']:.0f} GB/s." if device else "not measured."), "",
          "## Phases (seconds)", "", "| phase | s |", "|---|---|"]
    md += [f"| {k} | {v:.1f} |" for k, v in phases.items()]
    md += ["", "## Per method (per sample; limit = linear FLOPs at the GEMM rate + attention FLOPs x density at "
           "the SDPA rate; decode = weights + kept KV at the HBM bandwidth)", "",
           "| length | method | density | prefill s | limit | decode ms/token | limit | sample s | limit |",
           "|---|---|---|---|---|---|---|---|---|"]
    for c in cells.values():
        lim = c["limit"] or {}
        md.append(f"| {c['length']} | {c['method']} | {c['density']:.3f} | {c['prefill_s']:.3f} | "
                  f"{lim.get('prefill_s', float('nan')):.3f} | {c['decode_ms_per_token']:.2f} | "
                  f"{lim.get('decode_ms_per_token', float('nan')):.2f} | {c['sample_s']:.3f} | "
                  f"{lim.get('sample_s', float('nan')):.3f} |")
    md += ["", "## Calibration", "", "| length | method | load s | statistics s | total s | evaluations | "
           "share of its cells at 100 samples |", "|---|---|---|---|---|---|---|"]
    for c in calib:
        s = served.get(f"{c['length']}/{c['method']}", {})
        md.append(f"| {c['length']} | {c['method']} | {c['seconds'].get('load', float('nan')):.1f} | "
                  f"{c['seconds'].get('scores', float('nan')):.1f} | {c['seconds']['total']:.1f} | "
                  f"{c['evaluations']} | {s.get('share', float('nan')):.3f} |")
    md += ["", "## Target checks", "", "| check | value | met |", "|---|---|---|"]
    for k, v in checks.items():
        limit = float(re.search(r"(<=|>=) ([\d.]+)", k).group(2))
        met = v >= limit if ">=" in k else v <= limit
        md.append(f"| {k} | {v:.3f} | {'yes' if met else 'NO'} |")
    md += ["", "Calls: " + "; ".join(f"{c['targets']} {c['lengths']}: {c['wall_s']:.0f} s (rc {c['returncode']})"
                                     for c in record["calls"])]
    dest.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def cmd_prefills(a) -> None:
    """The prefill summary of every prediction under a study's working directory (e.g. a `make run`)."""
    wd = Path(a.dir).resolve()
    targets = sorted(str(p.relative_to(wd)) for p in wd.glob("results/predictions/**/part.parquet"))
    out = prefill_summary(wd, targets)
    total = {k: sum(o[k] for o in out.values()) for k in ("cell_samples", "prefills", "prefill_s")}
    print(json.dumps({"by_length": out, "total": total}, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--work", default="results/bench_wf")
    r.add_argument("--checkpoint", default="/tmp/sfw_bench/qwen2.5-7b-random")
    r.add_argument("--lengths", type=int, nargs="+", default=[32768, 128000])
    r.add_argument("--samples", type=int, default=8)
    r.add_argument("--new-tokens", type=int, default=32)
    r.add_argument("--run-lengths", type=int, nargs="+", help="the lengths whose cells this call runs (default all)")
    r.add_argument("--ratio", type=float, default=10)
    r.add_argument("--targets", choices=["prefill", "decode", "all", "decode_side"], default="all")
    r.add_argument("--decode-ratios", type=float, nargs="+", help="ratios of the decode-side methods (default --ratio)")
    r.add_argument("--share-prefill", choices=["true", "false"], default="true",
                   help="model_server.share_prefill of the study")
    r.add_argument("--aggregate", action="store_true", help="also the study's aggregate")
    r.add_argument("--measure", action="store_true", help="measure the device's GEMM / SDPA / HBM rates after")
    r.add_argument("--cores", type=int, default=16)
    r.add_argument("--tiny", action="store_true", help="CPU smoke test of this script with a small model")
    p = sub.add_parser("report")
    p.add_argument("--work", default="results/bench_wf")
    p.add_argument("--out", default="docs/results/workflow_gpu")
    f = sub.add_parser("prefills", help="prefills computed by a study's predictions (shared ones once)")
    f.add_argument("dir", help="the study's working directory (holding results/predictions)")
    a = ap.parse_args(argv)
    {"run": cmd_run, "report": cmd_report, "prefills": cmd_prefills}[a.cmd](a)


if __name__ == "__main__":
    main()
