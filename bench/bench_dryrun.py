"""Time `snakemake -n` on a generated grid of >= 5,000 cells, next to a bare-Snakefile floor (benchmark, not a test).

    python bench/bench_dryrun.py [--shape paper|models] [--models N] [--lengths L ...] [--device cuda] [--no-floor]

Shapes (all models point at one tiny checkpoint, built on the fly, sharing one tokenizer):

* ``paper`` (default): every registered task x 4 lengths x every single-phase method with its paper-style ratio
  grid (dense at 1); models are added until the grid has >= 5,000 cells (3 models: 5,940 cells).
* ``models``: the shape of tests/test_workflow.py's dry-run test: 500 models x 10 lengths x one task x dense,
  5,000 cells that are also 5,000 score groups (two jobs per cell, the most jobs per cell a grid can have).

``--device cuda`` marks the models as GPU models: the same jobs in fewer, larger model loads (paper shape: 30 loads of
up to 200 cells instead of 339 CPU-time-limited ones), the case where Snakemake's handling of group jobs costs most
(see workflow_scripts/snakemake_speedups.py; ``SFW_SNAKEMAKE_SPEEDUPS=0`` times the dry run without those patches).

The floor is a Snakefile with nothing of ours in it: the same DAG shape (task data per task x length -> one job
per cell -> one job per (model, task, length) group -> all) with trivial rules, so its dry run is what Snakemake
itself needs to plan and print that many jobs. Prints, for both: jobs, wall time and CPU time of the dry run.
"""

from __future__ import annotations

import argparse
import resource
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


def floor_snakefile(models: int, tasks: int, lengths: int, cells_per_group: int) -> str:
    """A Snakefile of trivial jobs in the workflow's DAG shape: data(task, length) -> cell(model, task, length, c)
    -> group(model, task, length) -> all. Jobs: tasks*lengths + groups*cells_per_group + groups + 1."""
    return f'''# dry-run floor: Snakemake's own cost for this many jobs (bench/bench_dryrun.py)
MODELS = [f"m{{i}}" for i in range({models})]
TASKS = [f"t{{i}}" for i in range({tasks})]
LENGTHS = [str(1024 * (i + 1)) for i in range({lengths})]
CELLS = [str(i) for i in range({cells_per_group})]

rule all:
    input:
        expand("scores/model={{m}}/task={{t}}/length={{L}}/part.parquet", m=MODELS, t=TASKS, L=LENGTHS),

rule group:
    input:
        expand("predictions/model={{{{m}}}}/task={{{{t}}}}/length={{{{L}}}}/cell={{c}}/part.parquet", c=CELLS),
    output:
        "scores/model={{m}}/task={{t}}/length={{L}}/part.parquet",
    shell:
        "touch {{output}}"

rule cell:
    input:
        "data/task={{t}}/length={{L}}/samples.parquet",
    output:
        "predictions/model={{m}}/task={{t}}/length={{L}}/cell={{c}}/part.parquet",
    shell:
        "touch {{output}}"

rule data:
    output:
        "data/task={{t}}/length={{L}}/samples.parquet",
    shell:
        "touch {{output}}"
'''


def timed_dry_run(args: list[str], cwd: str | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``python -m snakemake -n ...``; returns (process, wall seconds, CPU seconds of the snakemake process)."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--workflow-profile", "none", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def total_jobs(text: str) -> int:
    return next(int(line.split()[-1]) for line in text.splitlines() if line.startswith("total"))


def study(shape: str, model_path: str, n_models: int | None, lengths: list[int] | None, min_cells: int,
          device: str | None = None):
    """(config, models, tasks, lengths, cells per (model, task, length) group)."""
    from sparse_kernels.registry import METHOD_PHASES
    from workflow_scripts.tasks import task_names

    if shape == "models":
        n_models = n_models or 500
        lengths = lengths or [1024 * (k + 1) for k in range(10)]
        tasks, methods = ["ruler_niah"], {"dense": {}}
        extra = {"samples": 2, "shard_size": 2}
    else:
        lengths = lengths or [16384, 32768, 65536, 128000]
        tasks = task_names()
        methods = {}
        for m in METHOD_PHASES:
            if m == "dense":
                methods[m] = {}
            elif "+" not in m:
                methods[m] = {"ratios": BLOCK_RATIOS if m in ("block_sparse", "flexprefill") else PAPER_RATIOS}
        extra = {"samples": 100, "shard_size": 100}
    per_group = sum(len(v.get("ratios", [1])) for v in methods.values())
    n_models = n_models or 1
    while n_models * len(tasks) * len(lengths) * per_group < min_cells:
        n_models += 1
    model = {"path": model_path, "tokenizer": model_path, **({"device": device} if device else {})}
    cfg = {**extra, "prompt_mode": "direct",
           "models": {f"model{i}": dict(model) for i in range(n_models)},
           "tasks": tasks, "lengths": lengths, "methods": methods}
    return cfg, n_models, len(tasks), len(lengths), per_group


def main() -> None:
    from workflow_scripts.tiny_model import build_tiny_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["paper", "models"], default="paper")
    ap.add_argument("--models", type=int, help="number of models (default: the fewest giving --min-cells)")
    ap.add_argument("--lengths", type=int, nargs="+")
    ap.add_argument("--min-cells", type=int, default=5000)
    ap.add_argument("--device", choices=["cpu", "cuda"], help="device of every model (default: the schema's, auto)")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare-Snakefile floor")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny")
        cfg, n_models, n_tasks, n_lengths, per_group = study(a.shape, str(model), a.models, a.lengths, a.min_cells,
                                                           a.device)
        (tmp / "study.yaml").write_text(yaml.safe_dump(cfg))
        cells = n_models * n_tasks * n_lengths * per_group
        proc, wall, cpu = timed_dry_run(["-s", str(ROOT / "Snakefile"), "--directory", str(tmp / "wd"),
                                         "--configfile", str(tmp / "study.yaml")])
        if proc.returncode:
            print(proc.stderr[-3000:])
            raise SystemExit(1)
        print(f"shape={a.shape} models={n_models} tasks={n_tasks} lengths={n_lengths} cells/group={per_group} "
              f"cells={cells} jobs={total_jobs(proc.stdout)}")
        print(f"snakemake -n wall time: {wall:.1f} s, CPU {cpu:.1f} s (target < 20 s for >= 5,000 cells)")
        if not a.no_floor:
            (tmp / "floor").mkdir()
            (tmp / "floor" / "Snakefile").write_text(floor_snakefile(n_models, n_tasks, n_lengths, per_group))
            fproc, fwall, fcpu = timed_dry_run([], cwd=str(tmp / "floor"))
            if fproc.returncode:
                print(fproc.stderr[-3000:])
                raise SystemExit(1)
            print(f"floor (bare Snakefile, same DAG shape, {total_jobs(fproc.stdout)} trivial jobs): wall {fwall:.1f} s,"
                  f" CPU {fcpu:.1f} s; workflow / floor: {wall / fwall:.2f} (wall), {cpu / fcpu:.2f} (CPU)")


if __name__ == "__main__":
    main()
