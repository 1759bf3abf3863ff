"""CPU cost per sample of the default study's cells, against batch size and torch threads (docs/profile_cpu.md).

    python bench/bench_cpu_throughput.py --out /tmp/cpu_bench [--models ref-2m ref-20m] [--samples 8]
        [--batch-sizes 1 4 8] [--threads 1 2] [--methods dense vertical_slash]

For each model, length (1024, 2048) and method, runs one cell of ``--samples`` story-retrieval samples (the task
with the long answers) through ``workflow_scripts.infer.run_cells`` (the model server's code, one model load per
model and thread count) at each batch size and thread count, and prints per sample: the prefill seconds, the decode
seconds (each batch's ms per step x its steps, i.e. its longest answer, over the batch's samples) and the decoded
tokens. Calibrated prefill methods (vertical_slash, flexprefill) take their budgets from the default study's
calibration files: run ``make run`` first. Wall clock: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def data_file(out: Path, length: int, samples: int) -> str:
    """Story-retrieval samples 0..samples-1 at ``length`` (the default study's seed, prompt mode and tokenizer)."""
    from workflow_scripts.make_data import main as make_data

    path = out / f"data/length={length}/samples.parquet"
    if not path.exists():
        spec = {"chat_template": True, "datasets_dir": None, "length": length, "mode": "direct",
                "samples": samples, "seed": 43, "task": "story_retrieval", "task_params": {}, "task_version": "1",
                "tokenizer": str(ROOT / "models/ref-20m")}
        make_data(["--spec", repr(spec), "--out", str(path)])
    return str(path)


def cell_spec(model: str, length: int, method: str, samples: int, batch: int) -> dict:
    """The cell spec of the default study's cell (from its prediction file), for ``samples`` samples in batches of
    ``batch``."""
    from workflow_scripts.io import read_metadata

    ratio = "1" if method == "dense" else "4"
    pred = (ROOT / f"results/predictions/model={model}/task=story_retrieval/length={length}/method={method}"
                   f"/ratio={ratio}/shard=0/part.parquet")
    cell = dict(read_metadata(pred)["cell"])
    if cell.get("calibration"):
        cell["calibration"] = str(ROOT / cell["calibration"])
    cell.update(model_path=str(ROOT / cell["model_path"]), tokenizer=str(ROOT / cell["tokenizer"]),
                samples=[0, samples], batch_size=batch, shard=0)
    return cell


def main(argv=None) -> None:
    import pyarrow.parquet as pq

    from workflow_scripts import infer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="+", default=["ref-2m", "ref-6m", "ref-20m"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--methods", nargs="+", default=["dense"])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    a = ap.parse_args(argv)
    out = Path(a.out)
    rows = []
    for model in a.models:
        for threads in a.threads:
            loaded = None
            for length in a.lengths:
                data = data_file(out, length, a.samples)
                for method in a.methods:
                    for batch in a.batch_sizes:
                        cell = cell_spec(model, length, method, a.samples, batch)
                        path = out / f"pred/{model}-{length}-{method}-b{batch}-t{threads}.parquet"
                        if loaded is None:
                            loaded = infer.load(cell)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        t0 = time.perf_counter()
                        with open(path.with_suffix(".log"), "w") as log:
                            err = infer.run_cells([infer.Job(cell, data, str(path), log)], threads=threads,
                                                  loaded=loaded, share=False)
                        wall = time.perf_counter() - t0
                        if err[str(path)] is not None:
                            raise err[str(path)]
                        t = pq.read_table(path).to_pylist()
                        batches: dict = {}
                        for i, r in enumerate(t):
                            batches.setdefault(i // batch, []).append(r)
                        prefill = sum(b[0]["prefill_ms"] for b in batches.values()) / 1e3
                        decode = sum((b[0]["decode_ms_per_token"] or 0) * max(r["output_tokens"] for r in b)
                                     for b in batches.values()) / 1e3
                        row = {"model": model, "length": length, "method": method, "batch": batch, "threads": threads,
                               "samples": len(t), "wall_s": round(wall, 2),
                               "prefill_s_per_sample": round(prefill / len(t), 3),
                               "decode_s_per_sample": round(decode / len(t), 3),
                               "decode_ms_per_step": round(statistics.mean(r["decode_ms_per_token"] or 0
                                                                           for r in t), 2),
                               "tokens_per_sample": round(statistics.mean(r["output_tokens"] for r in t), 1)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
