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
import contextlib
import io
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


SCHEMA_COLUMNS = (
    ("sample_id", "int64"), ("status", "string"), ("prediction", "string"), ("input_tokens", "int64"),
    ("output_tokens", "int64"), ("stop_reason", "string"), ("sparsity", "float64"), ("density", "float64"),
    ("prefill_ms", "float64"), ("prefill_shared_by", "int64"), ("decode_ms_per_token", "float64"),
    ("batch_size", "int64"), ("peak_mem_mb", "float64"), ("prefill_method", "string"), ("prefill_ratio", "float64"),
    ("decode_method", "string"), ("decode_ratio", "float64"), ("prefill_sparsity", "float64"),
    ("prefill_density", "float64"), ("decode_sparsity", "float64"), ("decode_density", "float64"))
# what cells must have in common to share one dense prefill per sample (besides being decode-side cells)
SHARE_KEYS = ("model_path", "tokenizer", "dtype", "device", "task", "length", "mode", "executor", "answer_prefill",
              "max_new_tokens", "batch_size", "samples")


def share_key(cell: dict, data_path: str) -> tuple | None:
    """Cells with equal keys can share one dense prefill per sample (:func:`run_cells`); None for a cell that
    computes its own prefill: a prefill method (sparse prefill, or a combined cell), or recall measurement (its
    hooks need the prefill's attention events)."""
    from .server_plan import takes_shared_prefill

    if not takes_shared_prefill(cell.get("prefill_method"), bool(cell.get("recall"))):
        return None
    return (data_path, *(repr(cell.get(k)) for k in SHARE_KEYS))


class CellRun:
    """One cell shard in progress: its methods and session, its samples, the rows produced so far, and where its
    messages go (``log``: a text stream; the cell's own log through a model server)."""

    def __init__(self, cell: dict, data_path: str, out_path: str, log=None, metadata: dict | None = None):
        import pyarrow.parquet as pq

        from sparse_kernels.hf.build import build_methods
        from sparse_kernels.hf.session import SparseSession

        self.cell, self.data_path, self.out_path = cell, data_path, out_path
        self.log = log or sys.stdout
        self.metadata = metadata or {}
        start, stop = cell["samples"]
        table = pq.read_table(data_path, columns=["sample_id", "prompt", "input_tokens"])
        self.rows = [r for r in table.to_pylist() if start <= r["sample_id"] < stop]
        if len(self.rows) != stop - start:
            raise RuntimeError(f"{data_path} holds {len(self.rows)} of samples [{start}, {stop})")
        calibration = load_calibration(cell.get("calibration"))
        if calibration:
            from .calibrate import result_for

            if (calibration["method"] != cell.get("prefill_method") or calibration["length"] != cell["length"]
                    or calibration["params_by_task"].get(cell["task"])
                    != cell["method_params"][calibration["method"]]):
                raise RuntimeError(f"{cell['calibration']} calibrates {calibration['method']} (length "
                                   f"{calibration['length']}), not this cell's prefill method")
            calibration = result_for(calibration, cell["prefill_ratio"])
        self.prefill, self.decode = build_methods(cell["method"], cell["ratio"], cell.get("method_params"),
                                                  nominal_length=cell.get("nominal_length", cell["length"]),
                                                  calibrated=calibration["setting"] if calibration else None)
        self.budgets = {"prefill": budget_summary(self.prefill), "decode": budget_summary(self.decode),
                        "calibration": calibration and {k: calibration[k] for k in
                                                        ("setting", "density", "target_density", "relative_error")}}
        self.say(f"methods: {self.budgets}")
        self.recorder = None
        if cell.get("recall"):
            from sparse_kernels.recall import RecallRecorder

            self.recorder = RecallRecorder()
        self.session = SparseSession(self.prefill, self.decode, executor=cell.get("executor", "auto"),
                                     hooks=[self.recorder] if self.recorder else None)
        self.single_phase = None
        if (self.prefill is None) != (self.decode is None):
            self.single_phase = "prefill" if self.prefill is not None else "decode"
        self.out_rows: list[dict] = []

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def talking(self):
        """Everything printed meanwhile (warnings, fault hooks) goes to this cell's log."""
        return _printing_to(self.log)

    @property
    def q_tail(self) -> int:
        """Prompt queries a shared prefill must keep for this cell (its KV compression's scoring window)."""
        return int(getattr(self.decode, "window", 0) or 0) if self.decode is not None else 0

    def generate(self, loaded: "LoadedModel", prompts: list[list[int]], record=None):
        from sparse_kernels.hf.generate import greedy_generate

        eos = eos_ids_of(loaded.model, loaded.tokenizer)
        if self.recorder:
            self.recorder.reset()
        try:
            return greedy_generate(loaded.model, prompts, self.cell["max_new_tokens"], eos, pad_id(loaded, eos),
                                   session=self.session, record=record)
        finally:
            self.session.release()          # (statistics were read; the caches go before the next cell decodes)

    def add(self, batch: list[dict], prompts: list[list[int]], gen, tokenizer, peak_mb: float,
            shared_by: int = 1) -> None:
        """The result rows of one generated batch; ``shared_by``: cells whose rows carry this batch's prefill
        (1: the cell's own)."""
        from sparse_kernels.hf.generate import NONFINITE

        cell, st_all = self.cell, gen.extras["stats"]
        recalls = (recall_columns(self.recorder.rows(len(batch)), self.prefill is not None, self.decode is not None)
                   if self.recorder else [{}] * len(batch))
        for r, p, toks, why, st, rc in zip(batch, prompts, gen.tokens, gen.stop, st_all, recalls):
            if self.single_phase is None and self.prefill is None:          # dense
                sparsity, density = 0.0, 1.0
            elif self.single_phase is None:                                 # combined: two phases, see columns
                sparsity = density = None
            else:
                sparsity, density = st[f"{self.single_phase}_sparsity"], st[f"{self.single_phase}_density"]
            failed = why == NONFINITE
            self.out_rows.append({
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
                "prefill_shared_by": int(shared_by),
                "decode_ms_per_token": gen.decode_s * 1e3 / gen.decode_steps if gen.decode_steps else None,
                "batch_size": len(batch),
                "peak_mem_mb": peak_mb,
                **rc,
            })

    def set_shared_by(self, n_rows: int, shared_by: int) -> None:
        for row in self.out_rows[len(self.out_rows) - n_rows:]:
            row["prefill_shared_by"] = int(shared_by)

    def write(self, loaded: "LoadedModel", extra: dict | None = None) -> None:
        import pyarrow as pa

        from .io import write_parquet
        from .provenance import provenance

        cell, out_rows = self.cell, self.out_rows
        n_failed = sum(r["status"] != "ok" for r in out_rows)
        if n_failed:
            self.say(f"WARNING: {n_failed} of {len(out_rows)} samples produced non-finite (NaN/inf) logits: marked "
                     "failed")
        if out_rows and n_failed == len(out_rows):
            raise RuntimeError(f"every sample of this cell ({len(out_rows)}) produced non-finite (NaN/inf) logits: "
                               f"the model {cell['model_path']} ({cell['dtype']}) or the method's numerics are broken")
        schema = pa.schema([
            *((name, getattr(pa, kind)()) for name, kind in SCHEMA_COLUMNS),
            *([(c, pa.list_(pa.float64()) if c.endswith("_by_layer") else pa.float64()) for c in RECALL_COLUMNS]
              if self.recorder else []),
        ])
        write_parquet(pa.Table.from_pylist(out_rows, schema=schema), self.out_path,
                      {"cell": cell, "device": str(loaded.device), "model_load_s": loaded.load_s,
                       "budgets": self.budgets,
                       "executor": self.session.executor.name if self.session.executor else None,
                       "provenance": provenance(), "layers": self.session.layer_report(),
                       **(extra or {}), **self.metadata})
        self.say(f"wrote {len(out_rows)} rows to {self.out_path}")


@contextlib.contextmanager
def _printing_to(stream):
    if stream is None or stream is sys.stdout:
        yield
        return
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        yield


def pad_id(loaded: "LoadedModel", eos: set[int]) -> int:
    tok = loaded.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else min(eos)


class _Tee(io.TextIOBase):
    """A text stream writing to several (the shared progress of a group of cells goes to each cell's log)."""

    def __init__(self, streams):
        self.streams = list(streams)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


@dataclass
class Job:
    """A cell shard to run: its spec, data, output, where its messages go and extra output metadata."""
    cell: dict
    data: str
    out: str
    log: object = None
    metadata: dict | None = None


def run_cells(jobs: list[Job], threads: int = 1, loaded: LoadedModel | None = None, share: bool = True,
              on_done=None) -> dict[str, BaseException | None]:
    """Run cell shards with one loaded model; returns {output path: None, or the exception that failed it}.

    With ``share`` the jobs of one :func:`share_key` (the decode-side cells of one task, length and shard) run
    sample-major: each batch of samples gets one dense prefill (``generate.shared_prefill``), then every such
    cell decodes from it in turn, with its own KV compression / Quest selection / dense decode on its own copy
    of the prompt cache; their rows record the shared prefill's time and ``prefill_shared_by`` (the number of
    cells that used it). The other jobs run one after the other, each with its own prefill. A cell that fails
    does not stop the others. ``on_done(output path, exception or None)`` is called as each cell ends."""
    import torch

    torch.set_num_threads(max(1, threads))
    results: dict[str, BaseException | None] = {}
    runs: list[CellRun] = []
    for job in jobs:
        try:
            with _printing_to(job.log):
                runs.append(CellRun(job.cell, job.data, job.out, job.log, job.metadata))
        except Exception as e:                      # noqa: BLE001 - fails that cell only
            results[job.out] = _with_traceback(e, job.log)
    if runs and loaded is None:
        loaded = load(runs[0].cell)
        for r in runs:
            r.say(f"loaded {r.cell['model_path']} on {loaded.device} in {loaded.load_s:.1f}s")
    for r in list(runs):
        if not loaded.matches(r.cell):
            results[r.out_path] = _with_traceback(RuntimeError(
                f"cell needs {[r.cell.get(k) for k in ('model_path', 'dtype', 'device')]}, the loaded model is "
                f"{loaded.spec}"), r.log)
            runs.remove(r)
    groups: dict = {}
    for r in runs:
        key = share_key(r.cell, r.data_path) if share else None
        groups.setdefault(key if key is not None else id(r), []).append(r)
    if on_done is not None:
        for out, err in results.items():
            on_done(out, err)
    for group in groups.values():
        ended = _run_group(group, loaded)
        results.update(ended)
        if on_done is not None:
            for out, err in ended.items():
                on_done(out, err)
    return results


def _with_traceback(exc: BaseException, log=None) -> BaseException:
    """``exc`` with its formatted traceback attached (``sfw_traceback``: what a model server sends the cell's
    client)."""
    import traceback

    exc.sfw_traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return exc


def _run_group(group: list[CellRun], loaded: LoadedModel) -> dict[str, BaseException | None]:
    """Run cells of one share key sample-major (several), or one cell on its own."""
    import torch
    from tqdm import tqdm

    from sparse_kernels.hf.generate import shared_prefill
    from sparse_kernels.hf.session import SparseSession

    torch.manual_seed(0)
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    eos = eos_ids_of(model, tokenizer)
    lead = group[0]
    cell = lead.cell
    shared = len(group) > 1
    names = ", ".join(r.cell["method"] + ("" if r.cell["method"] == "dense" else f"@{r.cell['ratio_key']}")
                      for r in group)
    for r in group:
        r.say(f"using {cell['model_path']} loaded once on {device} in {loaded.load_s:.1f}s; eos={sorted(eos)}"
              + (f"; one dense prefill per sample shared by {len(group)} cells ({names})" if shared else ""))
    cuda_devices = model_cuda_devices(model) if device.type == "cuda" else []
    reset_peak_memory(device, cuda_devices)
    failed: dict[str, BaseException] = {}
    alive = list(group)
    q_tail = max(r.q_tail for r in group)
    rows, bs = lead.rows, cell["batch_size"]
    desc = f"{cell['model']}/{cell['task']}/{cell['length']}/" + (f"{len(group)} cells" if shared else cell["method"])
    everyone = _Tee(r.log or sys.stdout for r in group)
    with tqdm(total=len(rows), desc=desc, file=everyone, mininterval=2) as bar:
        for b in range(0, len(rows), bs):
            batch = rows[b:b + bs]
            prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in batch]
            record = None
            if shared:
                try:
                    with _printing_to(everyone):
                        record = shared_prefill(model, prompts, pad_id(loaded, eos), cell["max_new_tokens"],
                                                SparseSession(executor=cell.get("executor", "auto")), q_tail)
                except Exception as e:              # noqa: BLE001 - every cell of the group needs it
                    for r in alive:
                        failed[r.out_path] = _with_traceback(e, r.log)
                    alive = []
                    break
            done = []
            for r in list(alive):
                try:
                    with r.talking():
                        gen = r.generate(loaded, prompts, record)
                    r.add(batch, prompts, gen, tokenizer, peak_memory_mb(device, cuda_devices), len(alive))
                    done.append(r)
                except Exception as e:              # noqa: BLE001 - fails this cell only
                    failed[r.out_path] = _with_traceback(e, r.log)
                    alive.remove(r)
                    _free_cuda(device)
            if shared:
                for r in done:
                    r.set_shared_by(len(batch), len(done))
            del record
            bar.update(len(batch))
    results: dict[str, BaseException | None] = dict(failed)
    for r in alive:
        try:
            with r.talking():
                r.write(loaded, {"prefill_shared": {"cells": len(group), "q_tail": q_tail} if shared else None})
            results[r.out_path] = None
        except BaseException as e:                  # noqa: B902 - a fault hook's SystemExit fails this cell only
            if isinstance(e, KeyboardInterrupt):
                raise
            results[r.out_path] = _with_traceback(e, r.log)
    return results


def _free_cuda(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def run(cell: dict, data_path: str, out_path: str, threads: int = 1, loaded: LoadedModel | None = None,
        metadata: dict | None = None) -> None:
    """Run one cell shard and write its parquet (raises what failed it). ``loaded``: a model loaded earlier for
    this cell's model; else the model is loaded here. ``metadata``: extra entries for the parquet metadata."""
    err = run_cells([Job(cell, data_path, out_path, None, metadata)], threads, loaded)[out_path]
    if err is not None:
        raise err


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
