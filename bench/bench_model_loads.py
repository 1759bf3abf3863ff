"""Model loads of the paper grid through the SLURM profile, before and after load groups (benchmark, not a test).

    python bench/bench_model_loads.py [--group model length] [--max-hours 24] [--max-cells 200]

Dry-runs studies/paper.yaml (`snakemake -n --profile profiles/slurm`; no cluster needed) with its placeholder
paths replaced by directories this script creates: each model directory holds the real Qwen2.5-Instruct
architecture (config.json) so the GPU and runtime estimates see the true sizes, and empty tokenizer files. Prints
the number of cells, of inference jobs (cell shards), and of model loads: before = one per inference job (each job
loaded its model), after = one per model-server job. Calibration jobs (Vertical-Slash / FlexPrefill budgets) load
the model on their own and are listed separately. Also prints the GPUs and estimated hours per server job, and the prefills per sample before and after the shared
dense prefill of the decode-side cells (``server_plan.LoadPlan.prefills_per_sample``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Qwen2.5-Instruct architectures (the checkpoints' config.json values that the estimates read)
QWEN25 = {
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False),
    "qwen2.5-14b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                        num_key_value_heads=8, tie_word_embeddings=False),
    "qwen2.5-32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                        num_key_value_heads=8, tie_word_embeddings=False),
    "qwen2.5-72b": dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, tie_word_embeddings=False),
}


def placeholder_checkpoint(path: Path, arch: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
           "max_position_embeddings": 32768, "torch_dtype": "bfloat16",
           # YaRN to 128K, as the Qwen2.5 model cards set it for long contexts
           "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, **arch}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "tokenizer.json").write_text("{}")
    (path / "tokenizer_config.json").write_text("{}")
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()        # weights present, without tensors
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--group", nargs="+", default=None, help="model_server.group (default: the study's/default)")
    ap.add_argument("--max-hours", type=float, default=None)
    ap.add_argument("--max-cells", type=int, default=None)
    ap.add_argument("--study", default=str(ROOT / "studies" / "paper.yaml"))
    a = ap.parse_args()

    cfg = yaml.safe_load(Path(a.study).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, entry in cfg["models"].items():
            ckpt = tmp / "checkpoints" / Path(entry["path"]).name
            placeholder_checkpoint(ckpt, QWEN25[name])
            entry["path"] = str(ckpt)
        (tmp / "datasets").mkdir()
        cfg["datasets_dir"] = str(tmp / "datasets")
        ms = dict(cfg.get("model_server") or {})
        if a.group:
            ms["group"] = a.group
        if a.max_hours:
            ms["max_hours"] = a.max_hours
        if a.max_cells:
            ms["max_cells"] = a.max_cells
        if ms:
            cfg["model_server"] = ms
        (tmp / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp / "wd"),
               "--configfile", str(tmp / "study.yaml"), "--profile", str(ROOT / "profiles" / "slurm"), "-n"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        dt = time.perf_counter() - t0
        out = proc.stdout + proc.stderr
        if proc.returncode:
            print(out[-4000:])
            raise SystemExit(1)

        stats = {}
        block = out.split("Job stats:", 1)[1]
        for line in block.splitlines()[3:]:
            m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
            if not m:
                break
            stats[m.group(1)] = int(m.group(2))

        # the plan behind the model_server jobs (the same code the rules call): GPUs and hours per server job
        import os

        from workflow_scripts.config import Study
        from workflow_scripts.server_plan import LoadPlan

        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            plan = LoadPlan(Study(yaml.safe_load((tmp / "study.yaml").read_text())))
        finally:
            os.chdir(cwd)

    n_methods_ratios = sum(1 if m == "dense" else len(e["ratios"]) for m, e in cfg["methods"].items())
    cells = len(cfg["models"]) * len(cfg["tasks"]) * len(cfg["lengths"]) * n_methods_ratios
    infer, loads, calib = stats.get("infer", 0), stats.get("model_server", 0), stats.get("calibrate", 0)
    settings = plan.settings
    print(f"study: {Path(a.study).name}; model_server: group={settings['group']} max_cells={settings['max_cells']} "
          f"max_hours={settings['max_hours']} gpu_memory_gb={settings['gpu_memory_gb']}")
    print(f"cells (model x task x length x method x ratio): {cells:,}")
    print(f"inference jobs (cell shards, {cfg['samples']} samples / {cfg['shard_size']} per shard): {infer:,}")
    print(f"model loads before (one per inference job):     {infer:,}")
    print(f"model loads after  (one per model_server job):  {loads:,}  "
          f"({infer / max(loads, 1):.1f} cell shards per load on average)")
    print(f"calibration jobs (each loads its model; not grouped): {calib:,}")
    per = plan.prefills_per_sample()
    before = sum(n for n, _own, _shared in per.values()) / len(per)
    after = sum(own + shared for _n, own, shared in per.values()) / len(per)
    print(f"prefills per sample (model x task x length), before / after the shared dense prefill of the decode-side "
          f"cells (model_server.share_prefill={settings['share_prefill']}): {before:g} / {after:g}")
    by = Counter()
    for load in plan.loads.values():
        by[(load.model, max(load.lengths))] += 1
    print("per model and length: loads, GPUs per load, estimated hours per load (max):")
    for (model, length), n in sorted(by.items(), key=lambda x: (x[0][0], x[0][1])):
        ls = [l for l in plan.loads.values() if l.model == model and max(l.lengths) == length]
        print(f"  {model:12s} {length:>6d}: {n:4d} loads, {ls[0].gpus} GPU(s), "
              f"{max(l.minutes for l in ls) / 60:5.1f} h, {max(len(l.cells) for l in ls):3d} cell shards max")
    print(f"snakemake -n --profile profiles/slurm: {dt:.0f} s (plan: {len(plan.loads)} loads, "
          f"{len(plan.server_of)} cell shards)")


if __name__ == "__main__":
    main()
