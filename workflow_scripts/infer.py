"""Run one inference job: a shard of one cell (model, task, length, method, ratio).

    python -m workflow_scripts.infer --cell "<dict from Study.cell_params>" --data samples.parquet --out part.parquet

Writes one row per sample: prediction, token counts, realized sparsity, wall-clock timings and peak memory;
the cell spec and provenance go into the parquet schema metadata.
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
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, DTYPES[dtype]),
                                                 attn_implementation="sdpa")
    return model.to(device).eval()


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

    from sparse_kernels.hf.generate import greedy_generate

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
    if cell["method"] != "dense":
        raise NotImplementedError(f"method {cell['method']!r} is not wired into the HF backend yet")
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
            gen = greedy_generate(model, prompts, cell["max_new_tokens"], eos, pad)
            for r, p, toks, why in zip(batch, prompts, gen.tokens, gen.stop):
                out_rows.append({
                    "sample_id": r["sample_id"],
                    "prediction": tokenizer.decode(toks, skip_special_tokens=True),
                    "input_tokens": len(p),
                    "output_tokens": len(toks),
                    "stop_reason": why,
                    "sparsity": 0.0,
                    "density": 1.0,
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
    ])
    write_parquet(pa.Table.from_pylist(out_rows, schema=schema), out_path,
                  {"cell": cell, "device": str(device), "model_load_s": load_s, "provenance": provenance()})
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
