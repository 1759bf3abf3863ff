"""GPU-hour estimate of a study before it runs: GPU-hours per model and phase.

    python -m workflow_scripts.estimate --configfile studies/paper.yaml [--measured docs/results/workflow_gpu_h100.json]

It plans the study's cells exactly as the workflow does (``config.Study``; model paths need not exist yet: a model
whose checkpoint is missing is sized from the paper's Qwen2.5 table when its path or name says which one, e.g.
``/path/to/Qwen2.5-72B-Instruct``), and prices every sample with the cost model of the analyses
(``analysis.cost``: linear FLOPs, attention FLOPs x density, decode bytes of weights + kept KV) at the
throughput the workflow GPU benchmark measured (``bench/bench_workflow_gpu.py``: its JSON report), method by
method:

* prefill seconds = linear FLOPs / the measured GEMM rate + attention FLOPs x density / the measured SDPA rate, times
  the method's measured efficiency (measured prefill time / that limit, interpolated in log-length between the
  benchmark's lengths, the nearest one outside them);
* decode seconds per token = (weight bytes + kept KV bytes) / the measured HBM bandwidth, times the method's measured
  efficiency; every sample is priced at ``max_new_tokens`` (greedy decoding may stop earlier at EOS: an upper bound);
* the decode-side cells (dense, SnapKV, Ada-SnapKV, Quest) of one task, length and shard share one dense prefill
  per sample (``model_server.share_prefill``, ``server_plan.LoadPlan.prefills_per_sample``): priced once;
* model loads: one per load of the study's load plan (``server_plan``), at the measured load seconds per GB of
  weights; calibration: one job per (model, length, calibrated method), priced as its measured share of a dense
  sample (model load + the dense prefill of its samples + the solve);
* a model that needs several GPUs (``server_plan.gpus_needed``) counts its time on each of them.

Prints a table (GPU-hours per model: calibration, load, prefill, decode, total) and the total; ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MEASURED = ROOT / "docs" / "results" / "workflow_gpu_h100.json"


def _paper_shape(text: str):
    """ServerPlan ModelShape of the paper's Qwen2.5 model named in ``text`` (a path or a model name), else None."""
    from .analysis.cost import PAPER_MODELS
    from .server_plan import ModelShape

    low = text.lower().replace("_", "-")
    for name, d in sorted(PAPER_MODELS.items(), key=lambda kv: -len(kv[0])):
        size = name.split("-")[1].lower()                      # "72b"
        if f"qwen2.5-{size}" in low or f"qwen2.5{size}" in low:
            return ModelShape(int(d.n_params), d.n_layers, d.hidden_size, d.intermediate_size, d.n_heads,
                              d.n_kv_heads, d.head_dim, d.vocab_size)
    return None


class Prices:
    """Seconds per unit of work from a workflow benchmark report (bench/bench_workflow_gpu.py report JSON)."""

    def __init__(self, measured: dict):
        dev = measured["device"]
        self.device = dev["device"]
        self.gemm = dev["gemm_tflops"] * 1e12
        self.sdpa = {int(k): v * 1e12 for k, v in dev["sdpa_tflops"].items()}
        self.hbm = dev["hbm_gbps"] * 1e9
        # measured time / device limit per method and length, for the prefill and for one decode step
        self.eff: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
        for cell in measured["cells"].values():
            if cell.get("limit"):
                pre, dec = self.eff.setdefault(cell["method"], ({}, {}))
                pre[int(cell["length"])] = cell["prefill_s"] / cell["limit"]["prefill_s"]
                dec[int(cell["length"])] = cell["decode_ms_per_token"] / cell["limit"]["decode_ms_per_token"]
        # model load seconds per GB of weights; a calibration job's work beyond its load, in dense samples
        self.load_s_per_gb = float(measured["load_s_per_gb"])
        self.calibration_share = float(measured.get("calibration_dense_samples") or 0.0)

    @staticmethod
    def _interp(table: dict[int, float], length: int) -> float:
        """``table`` ({length: value}) at ``length``: linear in log-length between the measured lengths, the
        nearest measured value outside them."""
        ks = sorted(table)
        if length <= ks[0]:
            return table[ks[0]]
        if length >= ks[-1]:
            return table[ks[-1]]
        lo, hi = next((lo, hi) for lo, hi in zip(ks, ks[1:]) if lo <= length <= hi)
        w = (math.log(length) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return table[lo] * (1 - w) + table[hi] * w

    def sdpa_rate(self, length: int) -> float:
        return self._interp(self.sdpa, length)

    def efficiency(self, method: str, length: int) -> tuple[float, float]:
        pre, dec = self.eff.get(method) or self.eff["dense"]
        return self._interp(pre, length), self._interp(dec, length)


def device_seconds(shape, dtype_bytes: int, length: float, new_tokens: int, prefill_density: float,
                   decode_density: float, gemm: float, sdpa: float, hbm: float) -> tuple[float, float]:
    """The physical limit of one sample at a device's rates (FLOP/s, FLOP/s, bytes/s): (prefill s, s per decode
    step). Prefill: the linear FLOPs (2 x parameters without the input embedding x length) at the GEMM rate plus
    the causal attention FLOPs x density at the SDPA rate. Decode step: those weights and the kept KV cache (at
    the mean length of the decode) read once at the HBM bandwidth. The benchmark's limits and the estimate's
    prices both come from here."""
    nonemb = shape.params - shape.vocab * shape.hidden
    attn = 4 * shape.layers * shape.heads * shape.head_dim * length * length / 2       # causal
    prefill = 2 * nonemb * length / gemm + attn * prefill_density / sdpa
    kv_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes
    step = (nonemb * dtype_bytes + kv_token * (length + new_tokens / 2) * decode_density) / hbm
    return prefill, step


def sample_seconds(shape, dtype_bytes: int, length: int, new_tokens: int, prefill_method: str,
                   prefill_density: float, decode_method: str, decode_density: float, prices: Prices
                   ) -> tuple[float, float]:
    """(prefill s, decode s) of one sample of one cell on one GPU-equivalent: the device limit times the
    method's measured efficiency."""
    prefill, step = device_seconds(shape, dtype_bytes, length, new_tokens, prefill_density, decode_density,
                                   prices.gemm, prices.sdpa_rate(length), prices.hbm)
    pre_eff = prices.efficiency(prefill_method, length)[0]
    dec_eff = prices.efficiency(decode_method, length)[1]
    return prefill * pre_eff, step * dec_eff * max(new_tokens - 1, 0)


def estimate(cfg: dict, measured: dict) -> dict:
    from .config import Study
    from .server_plan import DTYPE_BYTES, LoadPlan, model_shape

    study = Study(cfg, check_paths=False)
    prices = Prices(measured)
    shapes = {}
    for name in study.models:
        path = study.model_dir(name)
        shapes[name] = model_shape(path) or _paper_shape(path) or _paper_shape(name)
        if shapes[name] is None:
            raise SystemExit(f"models.{name}.path: {path!r} has no config.json and names no Qwen2.5 model of the "
                             "paper; the estimate needs the architecture")
    plan = LoadPlan(study, shapes)
    new = int(study.cfg["max_new_tokens"])
    rows: dict[str, dict[str, float]] = {}
    prefills = plan.prefills_per_sample()
    shared_price: dict[tuple, tuple[float, int]] = {}    # (model, task, length) -> (dense prefill s, GPUs)
    for c in study.cells():
        m = study.models[c.model]
        if m["device"] != "cuda":
            continue
        shape, b = shapes[c.model], DTYPE_BYTES[m["dtype"]]
        gpus = plan.gpus(c.model, c.length)
        pre, dec = study.phase_ratios(c.method, c.ratio)
        pm, dm = (study.cell_params(c.model, c.task, c.length, c.method, c.ratio, 0)[k]
                  for k in ("prefill_method", "decode_method"))
        p_s, d_s = sample_seconds(shape, b, c.length, new, pm, 1 / pre, dm, 1 / dec, prices)
        r = rows.setdefault(c.model, {"calibration": 0.0, "load": 0.0, "prefill": 0.0, "decode": 0.0, "gpus": 0})
        if plan.shares_prefill(c.method):       # priced once per shared prefill, below
            shared_price[(c.model, c.task, c.length)] = (p_s, gpus)
        else:
            r["prefill"] += p_s * study.cfg["samples"] * gpus
        r["decode"] += d_s * study.cfg["samples"] * gpus
        r["gpus"] = max(r["gpus"], gpus)
    for key, (p_s, gpus) in shared_price.items():
        rows[key[0]]["prefill"] += p_s * prefills[key][2] * study.cfg["samples"] * gpus
    for load in plan.loads.values():
        if load.model in rows:
            shape, m = shapes[load.model], study.models[load.model]
            gb = shape.params * DTYPE_BYTES[m["dtype"]] / 1e9
            rows[load.model]["load"] += prices.load_s_per_gb * gb * max(load.gpus, 1)
    per_calibration = prices.calibration_share
    for path in study.calibration_targets():
        model = path.split("model=", 1)[1].split("/", 1)[0]
        length = int(path.split("length=", 1)[1].split("/", 1)[0])
        if model not in rows:
            continue
        shape, m = shapes[model], study.models[model]
        dense_pre, _ = sample_seconds(shape, DTYPE_BYTES[m["dtype"]], length, 1, "dense", 1.0, "dense", 1.0, prices)
        gb = shape.params * DTYPE_BYTES[m["dtype"]] / 1e9
        rows[model]["calibration"] += (prices.load_s_per_gb * gb + per_calibration * dense_pre) * rows[model]["gpus"]
    for r in rows.values():
        r["total"] = sum(r[k] for k in ("calibration", "load", "prefill", "decode"))
    total = sum(r["total"] for r in rows.values())
    n_before = sum(n for n, _own, _shared in prefills.values())
    n_after = sum(own + shared for _n, own, shared in prefills.values())
    return {"device": prices.device, "rows_gpu_s": rows, "total_gpu_s": total,
            "cells": len(study.cells()) * study.n_shards, "loads": len(plan.loads),
            "prefills_per_sample": {"without_sharing": n_before / max(len(prefills), 1),
                                    "with_sharing": n_after / max(len(prefills), 1)}}


def render(est: dict) -> str:
    h = 3600.0
    lines = [f"GPU-hour estimate on {est['device']} ({est['cells']:,} cell shards, {est['loads']:,} model loads); "
             "decode priced at max_new_tokens per sample (an upper bound); prefills per sample "
             f"{est['prefills_per_sample']['with_sharing']:g} ({est['prefills_per_sample']['without_sharing']:g} "
             "without the shared dense prefill of the decode-side cells)", "",
             "| model | GPUs per load | calibration | model loads | prefill | decode | total GPU-h |",
             "|---|---|---|---|---|---|---|"]
    for name, r in est["rows_gpu_s"].items():
        lines.append(f"| {name} | {r['gpus']} | {r['calibration'] / h:,.1f} | {r['load'] / h:,.1f} | "
                     f"{r['prefill'] / h:,.1f} | {r['decode'] / h:,.1f} | {r['total'] / h:,.1f} |")
    lines.append(f"| **total** | | | | | | **{est['total_gpu_s'] / h:,.1f}** |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", nargs="+", default=[str(ROOT / "config.yaml")],
                    help="the study file(s), merged in order as Snakemake does (default: config.yaml)")
    ap.add_argument("--measured", default=str(DEFAULT_MEASURED),
                    help="the workflow GPU benchmark's JSON report the prices come from")
    ap.add_argument("--json", help="also write the estimate here")
    a = ap.parse_args(argv)
    from snakemake.utils import update_config, validate

    from .config import SCHEMA_PATH, schema_errors

    cfg: dict = {}
    for f in a.configfile:
        update_config(cfg, yaml.safe_load(Path(f).read_text()) or {})
    errors = schema_errors(cfg)
    if errors:
        raise SystemExit("Invalid configuration:\n  " + "\n  ".join(errors))
    validate(cfg, SCHEMA_PATH)
    measured = json.loads(Path(a.measured).read_text())
    est = estimate(cfg, measured)
    print(render(est))
    if a.json:
        Path(a.json).write_text(json.dumps(est, indent=1))


if __name__ == "__main__":
    sys.exit(main())
