"""Run one inference job: a shard of one cell (model, task, length, method, ratio).

    python -m workflow_scripts.infer --cell "<dict from Study.cell_params>" --data samples.parquet --out part.parquet

Writes one row per sample: prediction, token counts, realized sparsity, wall-clock timings and peak memory;
the cell spec, the resolved budgets and provenance go into the parquet schema metadata.

Every method (dense too) runs through ``sparse_kernels.hf``: the model is loaded with our attention
implementation and generation is the shared greedy loop with a :class:`SparseSession`.

Sparsity columns (per sample; averaged over layers and heads, and for decode-side methods over decode steps):

* ``prefill_sparsity`` / ``decode_sparsity``: the paper's definition for the method of that phase
  (V-S / FlexPrefill: tile-granular; Block-Sparse: analytic; SnapKV / Ada-SnapKV: 1 - kept/prompt;
  Quest: nominal 1 - T/prompt); 0 for a dense phase;
* ``prefill_density`` / ``decode_density``: the uniform measure ``density_computed``, the fraction of causal
  query-key pairs of that phase actually computed; 1 for a dense phase; null for a decode-side method when
  the sample had no decode step;
* ``sparsity`` / ``density``: those of the cell's sparsified phase (dense: 0 / 1); null for combined cells,
  which have two (use the phase columns);
* ``prefill_method`` / ``prefill_ratio`` / ``decode_method`` / ``decode_ratio``: the cell's method per phase
  ("dense", 1.0 where the phase is dense) — numeric keys for combined cells.
"""

from __future__ import annotations

import argparse
import ast
import resource
import sys
import time

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def load_model(path: str, dtype: str, device):
    """The checkpoint with our attention implementation (plain SDPA outside a sparse session)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sparse_kernels.hf import register

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, DTYPES[dtype]),
                                                 attn_implementation=register())
    return model.to(device).eval()


def load_calibration(path: str | None) -> dict | None:
    if not path:
        return None
    import json

    with open(path) as f:
        return json.load(f)


def budget_summary(method) -> dict | None:
    """The resolved budget / hyperparameters of a method instance (for the output metadata)."""
    if method is None:
        return None
    keep = ("ratio", "nominal_length", "vertical_size", "slash_size", "alpha", "min_budget", "top_chunks",
            "token_capacity", "token_budget", "last_q", "window", "page_size", "share_pages", "block_size",
            "min_head_ratio", "kernel_size", "local_window", "n_sinks", "n_local")
    return {"name": method.name, **{k: getattr(method, k) for k in keep if hasattr(method, k)}}


def eos_ids_of(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update(src if isinstance(src, (list, tuple)) else [src])
    return ids


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(cell: dict, data_path: str, out_path: str, threads: int = 1) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from sparse_kernels.hf.build import build_methods
    from sparse_kernels.hf.generate import greedy_generate
    from sparse_kernels.hf.session import SparseSession

    from .io import write_parquet
    from .provenance import provenance

    torch.set_num_threads(max(1, threads))
    torch.manual_seed(0)
    start, stop = cell["samples"]
    table = pq.read_table(data_path, columns=["sample_id", "prompt", "input_tokens"])
    rows = [r for r in table.to_pylist() if start <= r["sample_id"] < stop]
    if len(rows) != stop - start:
        raise RuntimeError(f"{data_path} holds {len(rows)} of samples [{start}, {stop})")

    device = resolve_device(cell["device"])
    calibration = load_calibration(cell.get("calibration"))
    if calibration and (calibration["method"] != cell.get("prefill_method")
                        or abs(calibration["ratio"] - cell["prefill_ratio"]) > 1e-9
                        or calibration["length"] != cell["length"]
                        or calibration["params_by_task"].get(cell["task"])
                        != cell["method_params"][calibration["method"]]):
        raise RuntimeError(f"{cell['calibration']} calibrates {calibration['method']}@{calibration['ratio']} "
                           f"(length {calibration['length']}), not this cell's prefill method")
    prefill, decode = build_methods(cell["method"], cell["ratio"], cell.get("method_params"),
                                    nominal_length=cell.get("nominal_length", cell["length"]),
                                    calibrated=calibration["setting"] if calibration else None)
    budgets = {"prefill": budget_summary(prefill), "decode": budget_summary(decode),
               "calibration": calibration and {k: calibration[k] for k in
                                               ("setting", "density", "target_density", "relative_error")}}
    print(f"methods: {budgets}", flush=True)
    session = SparseSession(prefill, decode, executor=cell.get("executor", "auto"))
    single_phase = None
    if (prefill is None) != (decode is None):
        single_phase = "prefill" if prefill is not None else "decode"
    t_load = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(cell["tokenizer"])
    model = load_model(cell["model_path"], cell["dtype"], device)
    load_s = time.perf_counter() - t_load
    eos = eos_ids_of(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    print(f"loaded {cell['model_path']} on {device} in {load_s:.1f}s; eos={sorted(eos)}", flush=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out_rows = []
    bs = cell["batch_size"]
    with tqdm(total=len(rows), desc=f"{cell['model']}/{cell['task']}/{cell['length']}/{cell['method']}",
              file=sys.stderr, mininterval=2) as bar:
        for b in range(0, len(rows), bs):
            batch = rows[b:b + bs]
            prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in batch]
            gen = greedy_generate(model, prompts, cell["max_new_tokens"], eos, pad, session=session)
            for r, p, toks, why, st in zip(batch, prompts, gen.tokens, gen.stop, gen.extras["stats"]):
                if single_phase is None and prefill is None:           # dense
                    sparsity, density = 0.0, 1.0
                elif single_phase is None:                             # combined: two phases, see columns
                    sparsity = density = None
                else:
                    sparsity, density = st[f"{single_phase}_sparsity"], st[f"{single_phase}_density"]
                out_rows.append({
                    "sample_id": r["sample_id"],
                    "prediction": tokenizer.decode(toks, skip_special_tokens=True),
                    "input_tokens": len(p),
                    "output_tokens": len(toks),
                    "stop_reason": why,
                    "sparsity": sparsity,
                    "density": density,
                    "prefill_method": cell.get("prefill_method", "dense"),
                    "prefill_ratio": float(cell.get("prefill_ratio", 1.0)),
                    "decode_method": cell.get("decode_method", "dense"),
                    "decode_ratio": float(cell.get("decode_ratio", 1.0)),
                    "prefill_sparsity": st["prefill_sparsity"],
                    "prefill_density": st["prefill_density"],
                    "decode_sparsity": st["decode_sparsity"],
                    "decode_density": st["decode_density"],
                    "prefill_ms": gen.prefill_s * 1e3,
                    "decode_ms_per_token": gen.decode_s * 1e3 / gen.decode_steps if gen.decode_steps else None,
                    "batch_size": len(batch),
                    "peak_mem_mb": peak_memory_mb(device),
                })
            bar.update(len(batch))
    schema = pa.schema([
        ("sample_id", pa.int64()), ("prediction", pa.string()), ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()), ("stop_reason", pa.string()), ("sparsity", pa.float64()),
        ("density", pa.float64()), ("prefill_ms", pa.float64()), ("decode_ms_per_token", pa.float64()),
        ("batch_size", pa.int64()), ("peak_mem_mb", pa.float64()),
        ("prefill_method", pa.string()), ("prefill_ratio", pa.float64()), ("decode_method", pa.string()),
        ("decode_ratio", pa.float64()), ("prefill_sparsity", pa.float64()), ("prefill_density", pa.float64()),
        ("decode_sparsity", pa.float64()), ("decode_density", pa.float64()),
    ])
    write_parquet(pa.Table.from_pylist(out_rows, schema=schema), out_path,
                  {"cell": cell, "device": str(device), "model_load_s": load_s, "budgets": budgets,
                   "executor": session.executor.name if session.executor else None, "provenance": provenance()})
    print(f"wrote {len(out_rows)} rows to {out_path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", required=True, help="Python-literal dict (Study.cell_params)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    run(ast.literal_eval(a.cell), a.data, a.out, a.threads)


if __name__ == "__main__":
    main()
