"""Run one inference job: a shard of one cell (model, task, length, method, ratio).

    python -m workflow_scripts.infer --cell "<dict from Study.cell_params>" --data samples.parquet --out part.parquet

Writes one row per sample: prediction, token counts, realized sparsity, wall-clock timings and peak memory;
the cell spec, the resolved budgets and provenance go into the parquet schema metadata.

Every method (dense too) runs through ``sparse_kernels.hf``: the model is loaded with our attention
implementation and generation is the shared greedy loop with a :class:`SparseSession`.

The workflow runs cells through a model server (``workflow_scripts.server``), which loads the model once and
calls :func:`run` with it for every cell of its load group; this command line loads the model itself (one cell).
A model on several visible GPUs is spread over them (``device_map="auto"``, ``max_memory`` per GPU from
:func:`gpu_max_memory`; needs the ``accelerate`` package).

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

Attention recall columns (only when the study sets ``recall: true``; ``sparse_kernels/recall.py``): the share of
the dense attention probability mass the method's selection keeps, and the same for the oracle selection of
equal budget — ``prefill_recall`` / ``prefill_oracle_recall`` (mean over layers, heads and query rows),
``decode_recall`` / ``decode_oracle_recall`` (mean over layers, heads and decode steps), 1 for a dense phase
(null for a decode-side method when the sample had no decode step); ``recall`` / ``oracle_recall`` those of the
sparsified phase (dense: 1; null for combined cells); ``*_recall_by_layer`` lists (mean over heads) per phase
(null for a dense phase). Measuring needs the session's per-layer hook, so these cells decode on the regular
path (no static decode / CUDA graph) and their timings are not comparable with cells without recall.
"""

from __future__ import annotations

import argparse
import ast
import resource
import sys
import time
from dataclasses import dataclass

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def load_model(path: str, dtype: str, device, max_memory: dict | None = None):
    """The checkpoint with our attention implementation (plain SDPA outside a sparse session). With
    ``max_memory`` ({gpu index: bytes}) the model is spread over those GPUs (``device_map="auto"``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sparse_kernels.hf import register

    kwargs = {}
    if max_memory:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise RuntimeError("spreading a model over several GPUs (device_map) needs the `accelerate` package: "
                               "pip install accelerate") from None
        kwargs = {"device_map": "auto", "max_memory": dict(max_memory)}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, DTYPES[dtype]),
                                                 attn_implementation=register(), **kwargs)
    return (model if max_memory else model.to(device)).eval()


def gpu_max_memory(totals: list[int], reserve_bytes: int = 0, usable: float = 0.9,
                   overhead: int = 2 * 2**30) -> dict[int, int]:
    """Weight budget per visible GPU for ``device_map="auto"``: its memory x ``usable``, less a share of the
    KV cache + activations (``reserve_bytes``, spread like the layers) and a fixed overhead; at least 10 %."""
    n = len(totals)
    return {i: int(max(0.1 * t, usable * t - reserve_bytes / n - overhead)) for i, t in enumerate(totals)}


@dataclass
class LoadedModel:
    """A model and its tokenizer, loaded once (by a cell's own job or by a model server)."""
    model: object
    tokenizer: object
    device: object
    load_s: float
    spec: dict            # model_path, tokenizer, dtype, device it was loaded with
    gpus: int = 0

    KEYS = ("model_path", "tokenizer", "dtype", "device")     # what a cell must share with the loaded model

    def matches(self, cell: dict) -> bool:
        return all(cell.get(k) == self.spec.get(k) for k in self.KEYS)


def load(spec: dict) -> LoadedModel:
    """Load ``spec``'s model (``model_path``, ``tokenizer``, ``dtype``, ``device``; optional ``reserve_bytes``):
    on every visible GPU when ``device`` is cuda and several are visible, else on the one device."""
    import torch
    from transformers import AutoTokenizer

    device = resolve_device(spec["device"])
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    max_memory = None
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if n_gpus > 1:
        totals = [torch.cuda.get_device_properties(i).total_memory for i in range(n_gpus)]
        max_memory = gpu_max_memory(totals, int(spec.get("reserve_bytes") or 0))
        device = torch.device("cuda", 0)
    model = load_model(spec["model_path"], spec["dtype"], device, max_memory)
    return LoadedModel(model, tokenizer, device, time.perf_counter() - t0, {k: spec[k] for k in LoadedModel.KEYS},
                       n_gpus)


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
            "min_head_ratio", "kernel_size", "local_window", "n_sinks", "n_local", "bf16_probs")
    return {"name": method.name, **{k: getattr(method, k) for k in keep if hasattr(method, k)}}


def eos_ids_of(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update(src if isinstance(src, (list, tuple)) else [src])
    return ids


def model_cuda_devices(model) -> list:
    return sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=lambda d: d.index or 0)


def reset_peak_memory(device, cuda_devices=()) -> None:
    """Start a cell's peak-memory measurement (a model server runs many cells in one process): CUDA peak stats,
    or on Linux the process's peak RSS (VmHWM, reset through /proc/self/clear_refs)."""
    import torch

    if device.type == "cuda":
        for d in cuda_devices or [device]:
            torch.cuda.reset_peak_memory_stats(d)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device, cuda_devices=()) -> float:
    import torch

    if device.type == "cuda":
        return sum(torch.cuda.max_memory_allocated(d) for d in (cuda_devices or [device])) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024        # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB (peak since process start)


RECALL_COLUMNS = ("recall", "oracle_recall", "prefill_recall", "prefill_oracle_recall", "decode_recall",
                  "decode_oracle_recall", "prefill_recall_by_layer", "prefill_oracle_recall_by_layer",
                  "decode_recall_by_layer", "decode_oracle_recall_by_layer")


def recall_columns(rows: list[dict], sparse_prefill: bool, sparse_decode: bool) -> list[dict]:
    """The result columns (RECALL_COLUMNS) of RecallRecorder rows: a dense phase keeps everything (recall 1,
    no per-layer list); ``recall`` / ``oracle_recall`` are the sparsified phase's (dense: 1, combined: null)."""
    out = []
    for row in rows:
        row = dict(row)
        for phase, sparse in (("prefill", sparse_prefill), ("decode", sparse_decode)):
            if not sparse:
                row.update({f"{phase}_recall": 1.0, f"{phase}_oracle_recall": 1.0})
        if sparse_prefill and sparse_decode:
            row["recall"] = row["oracle_recall"] = None
        else:
            phase = "prefill" if sparse_prefill else "decode"
            row["recall"], row["oracle_recall"] = row[f"{phase}_recall"], row[f"{phase}_oracle_recall"]
        out.append({c: row.get(c) for c in RECALL_COLUMNS})
    return out


def run(cell: dict, data_path: str, out_path: str, threads: int = 1, loaded: LoadedModel | None = None,
        metadata: dict | None = None) -> None:
    """Run one cell shard and write its parquet. ``loaded``: a model loaded earlier (by a model server) for
    this cell's model; else the model is loaded here. ``metadata``: extra entries for the parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from tqdm import tqdm

    from sparse_kernels.hf.build import build_methods
    from sparse_kernels.hf.generate import NONFINITE, greedy_generate
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
    if calibration:
        from .calibrate import result_for

        if (calibration["method"] != cell.get("prefill_method") or calibration["length"] != cell["length"]
                or calibration["params_by_task"].get(cell["task"]) != cell["method_params"][calibration["method"]]):
            raise RuntimeError(f"{cell['calibration']} calibrates {calibration['method']} (length "
                               f"{calibration['length']}), not this cell's prefill method")
        calibration = result_for(calibration, cell["prefill_ratio"])
    prefill, decode = build_methods(cell["method"], cell["ratio"], cell.get("method_params"),
                                    nominal_length=cell.get("nominal_length", cell["length"]),
                                    calibrated=calibration["setting"] if calibration else None)
    budgets = {"prefill": budget_summary(prefill), "decode": budget_summary(decode),
               "calibration": calibration and {k: calibration[k] for k in
                                               ("setting", "density", "target_density", "relative_error")}}
    print(f"methods: {budgets}", flush=True)
    recorder = None
    if cell.get("recall"):
        from sparse_kernels.recall import RecallRecorder

        recorder = RecallRecorder()
    session = SparseSession(prefill, decode, executor=cell.get("executor", "auto"),
                            hooks=[recorder] if recorder else None)
    single_phase = None
    if (prefill is None) != (decode is None):
        single_phase = "prefill" if prefill is not None else "decode"
    if loaded is None:
        loaded = load(cell)
        print(f"loaded {cell['model_path']} on {loaded.device} in {loaded.load_s:.1f}s", flush=True)
    elif not loaded.matches(cell):
        raise RuntimeError(f"cell needs {[cell.get(k) for k in ('model_path', 'dtype', 'device')]}, the loaded "
                           f"model is {loaded.spec}")
    else:
        print(f"using {cell['model_path']} loaded once on {loaded.device} in {loaded.load_s:.1f}s", flush=True)
    model, tokenizer, device, load_s = loaded.model, loaded.tokenizer, loaded.device, loaded.load_s
    eos = eos_ids_of(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    print(f"eos={sorted(eos)}", flush=True)

    cuda_devices = model_cuda_devices(model) if device.type == "cuda" else []
    reset_peak_memory(device, cuda_devices)
    out_rows = []
    bs = cell["batch_size"]
    with tqdm(total=len(rows), desc=f"{cell['model']}/{cell['task']}/{cell['length']}/{cell['method']}",
              file=sys.stderr, mininterval=2) as bar:
        for b in range(0, len(rows), bs):
            batch = rows[b:b + bs]
            prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in batch]
            if recorder:
                recorder.reset()
            gen = greedy_generate(model, prompts, cell["max_new_tokens"], eos, pad, session=session)
            recalls = (recall_columns(recorder.rows(len(batch)), prefill is not None, decode is not None)
                       if recorder else [{}] * len(batch))
            for r, p, toks, why, st, rc in zip(batch, prompts, gen.tokens, gen.stop, gen.extras["stats"], recalls):
                if single_phase is None and prefill is None:           # dense
                    sparsity, density = 0.0, 1.0
                elif single_phase is None:                             # combined: two phases, see columns
                    sparsity = density = None
                else:
                    sparsity, density = st[f"{single_phase}_sparsity"], st[f"{single_phase}_density"]
                failed = why == NONFINITE
                out_rows.append({
                    "sample_id": r["sample_id"],
                    # a sample whose logits went NaN / inf has no prediction, and is never scored (score.py)
                    "status": "failed: non-finite logits" if failed else "ok",
                    # (the answer prefill ends the prompt: the answer is the prefill + what the model wrote)
                    "prediction": None if failed else (cell.get("answer_prefill", "")
                                                       + tokenizer.decode(toks, skip_special_tokens=True)),
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
                    "peak_mem_mb": peak_memory_mb(device, cuda_devices),
                    **rc,
                })
            bar.update(len(batch))
    n_failed = sum(r["status"] != "ok" for r in out_rows)
    if n_failed:
        print(f"WARNING: {n_failed} of {len(out_rows)} samples produced non-finite (NaN/inf) logits: marked failed",
              flush=True)
    if out_rows and n_failed == len(out_rows):
        raise RuntimeError(f"every sample of this cell ({len(out_rows)}) produced non-finite (NaN/inf) logits: the "
                           f"model {cell['model_path']} ({cell['dtype']}) or the method's numerics are broken")
    schema = pa.schema([
        ("sample_id", pa.int64()), ("status", pa.string()), ("prediction", pa.string()), ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()), ("stop_reason", pa.string()), ("sparsity", pa.float64()),
        ("density", pa.float64()), ("prefill_ms", pa.float64()), ("decode_ms_per_token", pa.float64()),
        ("batch_size", pa.int64()), ("peak_mem_mb", pa.float64()),
        ("prefill_method", pa.string()), ("prefill_ratio", pa.float64()), ("decode_method", pa.string()),
        ("decode_ratio", pa.float64()), ("prefill_sparsity", pa.float64()), ("prefill_density", pa.float64()),
        ("decode_sparsity", pa.float64()), ("decode_density", pa.float64()),
        *([(c, pa.list_(pa.float64()) if c.endswith("_by_layer") else pa.float64()) for c in RECALL_COLUMNS]
          if recorder else []),
    ])
    write_parquet(pa.Table.from_pylist(out_rows, schema=schema), out_path,
                  {"cell": cell, "device": str(device), "model_load_s": load_s, "budgets": budgets,
                   "executor": session.executor.name if session.executor else None, "provenance": provenance(),
                   "layers": session.layer_report(),
                   **(metadata or {})})
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
