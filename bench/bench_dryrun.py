"""Time `snakemake -n` on a generated paper-shaped grid of >= 5,000 cells (benchmark, not a test).

    python bench/bench_dryrun.py [--models 4] [--samples 100] [--shard-size 100]

Grid: every registered task x 4 lengths x every registered method with its paper-style ratio grid (dense at 1),
all models pointing at one tiny checkpoint (built on the fly) sharing one tokenizer. Prints the number of cells
and jobs, and the wall time of the dry run without outputs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAPER_RATIOS = [20, 15, 10, 7.5, 5, 3.33, 2.5, 2, 1.67, 1.43]
BLOCK_RATIOS = [20, 15, 10, 7.5, 5, 3, 2]


def main() -> None:
    from sparse_kernels.registry import METHOD_PHASES
    from workflow_scripts.tasks import task_names
    from workflow_scripts.tiny_model import build_tiny_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536, 128000])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--min-cells", type=int, default=5000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny")
        methods = {}
        for m in METHOD_PHASES:
            if m == "dense":
                methods[m] = {}
            elif "+" not in m:
                methods[m] = {"ratios": BLOCK_RATIOS if m in ("block_sparse", "flexprefill") else PAPER_RATIOS}
        tasks = task_names()
        n_models = a.models
        while True:
            per_model = len(tasks) * len(a.lengths) * sum(len(v.get("ratios", [1])) for v in methods.values())
            if n_models * per_model >= a.min_cells:
                break
            n_models += 1
        cfg = {"samples": a.samples, "shard_size": a.shard_size, "prompt_mode": "direct",
               "models": {f"model{i}": {"path": str(model), "tokenizer": str(model)} for i in range(n_models)},
               "tasks": tasks, "lengths": a.lengths, "methods": methods}
        (tmp / "study.yaml").write_text(yaml.safe_dump(cfg))
        cells = n_models * per_model
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp / "wd"),
               "--configfile", str(tmp / "study.yaml"), "-n", "--cores", "2", "--workflow-profile", "none"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if proc.returncode:
            print(proc.stderr[-3000:])
            raise SystemExit(1)
        total = next(int(l.split()[-1]) for l in proc.stdout.splitlines() if l.startswith("total"))
        print(f"models={n_models} tasks={len(tasks)} lengths={len(a.lengths)} methods={len(methods)} "
              f"cells={cells} jobs={total}")
        print(f"snakemake -n wall time: {dt:.1f} s (target < 20 s for >= 5,000 cells)")


if __name__ == "__main__":
    main()
