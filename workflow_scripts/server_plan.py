"""Model loads: which inference cells share one model-server job, and what that job requests (import-light).

Every inference cell (model, task, length, method, ratio, shard) stays its own Snakemake job with its own output
file, params and log. Cells of one *load group* are thin clients of one model-server job
(``workflow_scripts.server``), which loads the model once and runs the cells' inference on request. The server's
output is a Snakemake ``service`` (the rendezvous file ``results/model_server/<id>.json``), so Snakemake runs the
server together with the cells that need to run (one *group job*: one SLURM job through the SLURM profile) and
stops it when they are done.

Which cells share a load (``model_server`` in the study config):

* ``group``: the cell keys that define a load group, ``model`` always among them (default ``[model]``: every
  cell of one model); ``[model, length]`` keeps lengths apart; ``[model, task, length, method, ratio, shard]`` gives
  one load per cell;
* a group is split, in a fixed order (length, task, method, ratio, shard: loads of one length where possible, so
  the GPU count fits), into loads of at most ``max_cells`` cell shards and at most ``max_hours`` of estimated work
  (:meth:`LoadPlan.cell_minutes`), so one load fits a partition's time limit and the grid still runs in parallel.

Neither the grouping nor the estimates are rerun triggers: a cell's recorded input is ``<service>``, whatever its
server (see ``rules/infer.smk``).

GPUs per load (models with ``device: cuda``): ``models.<name>.gpus`` if given, else :func:`gpus_needed` for the
longest length of the load: weights + KV cache + prefill activations over ``gpu_memory_gb`` per GPU (90 % usable,
2 GiB reserved). The server spreads the model over the GPUs it gets (``device_map="auto"`` with ``max_memory``
per visible GPU, see ``workflow_scripts/infer.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GROUP_KEYS = ("model", "task", "length", "method", "ratio", "shard")
DEFAULTS = {"group": ["model"], "max_cells": 200, "max_hours": 24.0, "gpu_memory_gb": 80.0, "share_prefill": True}
ADDRESS = "results/model_server/{server}.json"
LOG = "results/logs/model_server/{server}.log"
SALVAGE_DIR = "results/model_server/salvage"
# The servers' Unix sockets: a directory only its owner can enter (workflow_scripts/server.py); relative to the
# study's working directory, so the path stays short of the 108-byte limit of socket addresses.
SOCKET_DIR = "results/model_server/sockets"
SERVER_PATTERN = r"model=[^/]+(/(task|length|method|ratio|shard|part)=[^/]+)*"

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2**30
GPU_USABLE = 0.9            # fraction of a GPU's memory the estimate fills
GPU_RESERVED = 2 * GIB      # CUDA context, allocator fragmentation, per GPU
# Throughput assumed by the runtime estimate (dense attention, one device at a time: a model spread over several
# GPUs with device_map runs its layers one GPU after the other). Conservative for A100/H100 in bf16.
THROUGHPUT = {"cuda": {"flops": 1.5e14, "bytes_per_s": 1.5e12}, "cpu": {"flops": 5e10, "bytes_per_s": 1e10}}
RUNTIME_SAFETY = 1.5


def log_of_address(address_file: str) -> str | None:
    """The server log belonging to a rendezvous file (``ADDRESS`` -> ``LOG``)."""
    prefix, suffix = ADDRESS.split("{server}")
    path = os.path.normpath(address_file)
    if path.startswith(prefix) and path.endswith(suffix):
        return LOG.format(server=path[len(prefix):len(path) - len(suffix)])
    return None


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


# ---------------------------------------------------------------------------------------------- model size
@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


@lru_cache(maxsize=None)
def model_shape(path: str) -> ModelShape | None:
    """Size of a decoder-only HF checkpoint from its config.json (None if it has none yet, e.g. a model the
    workflow builds). Parameters: the safetensors index's total size when present, else counted from the
    architecture (embeddings, attention with q/k/v biases, gated MLP, norms, untied LM head)."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    shape = shape_from_config(cfg)
    if shape is None:
        return None
    index = Path(path) / "model.safetensors.index.json"
    stored = cfg.get("torch_dtype") or cfg.get("dtype")
    if index.is_file() and stored in DTYPE_BYTES:
        try:
            params = int(json.loads(index.read_text())["metadata"]["total_size"]) // DTYPE_BYTES[stored]
            shape = dataclasses.replace(shape, params=params)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return shape


def shape_from_config(cfg: dict) -> ModelShape | None:
    """The architecture of a config.json's content, parameters counted from it (embeddings, attention with q/k/v
    biases, gated MLP, norms, untied LM head unless tie_word_embeddings); None when a size key is missing."""
    try:
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    attn = hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim + (heads + 2 * kv_heads) * head_dim
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    params = layers * per_layer + vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2) + hidden
    return ModelShape(params, layers, hidden, inter, heads, kv_heads, head_dim, vocab)


def memory_need(shape: ModelShape, dtype: str, length: int, new_tokens: int, batch: int) -> dict[str, int]:
    """Bytes a model needs at a prompt length: weights, KV cache (prompt + new tokens, all layers) and the
    transient prefill activations of one layer (gated MLP: 3 x intermediate, ~8 x hidden for the rest)."""
    b = DTYPE_BYTES[dtype]
    return {
        "weights": shape.params * b,
        "kv_cache": 2 * shape.layers * shape.kv_heads * shape.head_dim * (length + new_tokens) * b * batch,
        "activations": batch * length * (3 * shape.intermediate + 8 * shape.hidden) * b,
    }


def gpus_needed(need: dict[str, int], gpu_memory_gb: float) -> int:
    usable = gpu_memory_gb * GIB * GPU_USABLE - GPU_RESERVED
    return max(1, math.ceil(sum(need.values()) / usable))


def sample_seconds(shape: ModelShape, dtype: str, length: int, new_tokens: int, device: str) -> tuple[float, float]:
    """(prefill s, decode s) of one sample: dense prefill FLOPs (2 x params x L plus causal attention
    2 x layers x d x L^2) at the device's FLOP rate; every decode step reading the weights and the KV cache at its
    memory bandwidth."""
    t = THROUGHPUT["cuda" if device == "cuda" else "cpu"]
    b = DTYPE_BYTES[dtype]
    d = shape.heads * shape.head_dim
    prefill = (2 * shape.params * length + 2 * shape.layers * d * length**2) / t["flops"]
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * (length + new_tokens) * b
    decode = new_tokens * (shape.params * b + kv) / t["bytes_per_s"]
    return prefill, decode


def takes_shared_prefill(prefill_method: str | None, recall: bool) -> bool:
    """Whether a cell can take its dense prefill from the one its task, length and shard share: no prefill method
    (sparse prefill or combined cell) and no recall measurement (its hooks need the prefill's attention events).
    The one rule the load plan, the estimate and the server's grouping (``infer.share_key``) follow."""
    return prefill_method in (None, "dense") and not recall


# ---------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Load:
    """One model load = one model-server job."""
    id: str                      # e.g. "model=qwen7b/length=16384/part=2"
    model: str
    lengths: tuple[int, ...]
    cells: tuple[tuple, ...]     # (model, task, length, method, ratio, shard) keys it serves
    minutes: float               # estimated work: load + every cell
    gpus: int

    @property
    def group(self) -> str:
        """Snakemake group name (readable in SLURM job comments and log directories)."""
        return "load_" + re.sub(r"[^A-Za-z0-9._-]+", "_", self.id.replace("=", "-"))


class LoadPlan:
    def __init__(self, study, shapes: dict | None = None):
        """``shapes``: {model: ModelShape} for models whose checkpoint is not there yet (the GPU-hour estimate)."""
        self.study = study
        self._shapes = dict(shapes or {})
        self.settings = {**DEFAULTS, **(study.cfg.get("model_server") or {})}
        keys = list(self.settings["group"])
        if "model" not in keys or not set(keys) <= set(GROUP_KEYS):
            raise ValueError(f"model_server.group: keys from {list(GROUP_KEYS)} including 'model', got {keys}")
        self.keys = [k for k in GROUP_KEYS if k in keys]
        self.loads: dict[str, Load] = {}
        self.server_of: dict[tuple, str] = {}
        self._plan()

    # -- estimates
    def shape(self, model: str) -> ModelShape | None:
        return self._shapes.get(model) or model_shape(self.study.model_dir(model))

    def cell_minutes(self, model: str, length: int, shard: int) -> tuple[float, float]:
        """Estimated (prefill, decode) minutes of one cell shard (dense attention, every sample decoding
        max_new_tokens)."""
        shape = self.shape(model)
        if shape is None:
            return 0.5, 0.5
        m = self.study.models[model]
        start, stop = self.study.shard_range(shard)
        pre, dec = sample_seconds(shape, m["dtype"], length, self.study.cfg["max_new_tokens"], m["device"])
        return RUNTIME_SAFETY * (stop - start) * pre / 60, RUNTIME_SAFETY * (stop - start) * dec / 60

    def load_minutes(self, model: str) -> float:
        shape = self.shape(model)
        size = shape.params * DTYPE_BYTES[self.study.models[model]["dtype"]] if shape else 0
        return 2.0 + size / 0.5e9 / 60          # reading the checkpoint at >= 0.5 GB/s

    def memory_need(self, model: str, length: int) -> dict[str, int] | None:
        shape = self.shape(model)
        if shape is None:
            return None
        cfg = self.study.cfg
        need = memory_need(shape, self.study.models[model]["dtype"], length, cfg["max_new_tokens"],
                           cfg["batch_size"])
        if sum(len(self.study.ratios[m]) for m in cfg["methods"] if self.shares_prefill(m)) > 1:
            # the shared dense prefill's prompt cache lives beside the private copy of the cell decoding from it;
            # a decode has no prefill activations, so the peak grows only by what the copy exceeds them by
            prompt = need["kv_cache"] * length // (length + cfg["max_new_tokens"])
            need["shared_prompt"] = max(0, prompt - need["activations"])
        return need

    def gpus(self, model: str, length: int) -> int:
        """GPUs of a load of ``model`` up to prompt length ``length``: 0 unless ``device: cuda``."""
        m = self.study.models[model]
        if m["device"] != "cuda":
            return 0
        if m.get("gpus"):
            return int(m["gpus"])
        need = self.memory_need(model, length)
        return 1 if need is None else gpus_needed(need, float(self.settings["gpu_memory_gb"]))

    # -- grouping
    def _plan(self) -> None:
        study, keys = self.study, self.keys
        groups: dict[tuple, list[tuple]] = {}
        tasks = {t: i for i, t in enumerate(study.cfg["tasks"])}
        cells = sorted(study.cells(), key=lambda c: (c.length, tasks[c.task]))   # stable: config order after
        order = {(c.method, c.ratio): i for i, c in enumerate(cells)}
        # (length, task, shard) units, methods in config order within each: the decode-side cells of a unit share
        # one dense prefill per sample when they are served by one load (workflow_scripts/infer.run_cells)
        keyed = sorted(((c.model, c.task, c.length, c.method, c.ratio, shard) for c in cells
                        for shard in range(study.n_shards)),
                       key=lambda k: (k[2], tasks[k[1]], k[5], order[(k[3], k[4])]))
        for cell in keyed:
            gk = tuple(cell[GROUP_KEYS.index(k)] for k in keys)
            groups.setdefault(gk, []).append(cell)
        max_cells = int(self.settings["max_cells"])
        max_minutes = float(self.settings["max_hours"]) * 60
        cell_min: dict[tuple, tuple[float, float]] = {}
        for gk, group in groups.items():
            model = group[0][0]
            load_min = self.load_minutes(model)
            units: dict[tuple, list[tuple]] = {}
            for cell in group:
                units.setdefault((cell[1], cell[2], cell[5]), []).append(cell)
            chunks: list[list[tuple]] = [[]]
            minutes = [load_min]
            shared_in: list[set] = [set()]       # units whose shared prefill the chunk already pays for

            def new_chunk():
                chunks.append([])
                minutes.append(load_min)
                shared_in.append(set())

            def add(cell, full, unit=None, decode=None):
                """Add a cell costing ``full`` minutes, or ``decode`` when its unit's shared prefill is already
                paid for in the chunk."""
                cost = decode if unit is not None and unit in shared_in[-1] else full
                if chunks[-1] and (len(chunks[-1]) >= max_cells or minutes[-1] + cost > max_minutes):
                    new_chunk()
                    cost = full
                chunks[-1].append(cell)
                minutes[-1] += cost
                if unit is not None:
                    shared_in[-1].add(unit)

            for ukey, unit in units.items():
                key = (model, unit[0][2], unit[0][5])
                if key not in cell_min:
                    cell_min[key] = self.cell_minutes(model, unit[0][2], unit[0][5])
                pre, dec = cell_min[key]
                shared = [c for c in unit if self.shares_prefill(c[3])]
                # the unit's decode-side cells in one load where they fit (one shared prefill), then the others
                t = pre + dec * len(shared)
                if shared and chunks[-1] and len(shared) <= max_cells and load_min + t <= max_minutes \
                        and (len(chunks[-1]) + len(shared) > max_cells or minutes[-1] + t > max_minutes):
                    new_chunk()
                for cell in shared:
                    add(cell, pre + dec, ukey, dec)
                for cell in unit:
                    if cell not in shared:
                        add(cell, pre + dec)
            base = "/".join(f"{k}={v}" for k, v in zip(keys, gk))
            for i, (chunk, mins) in enumerate(zip(chunks, minutes)):
                lid = base if len(chunks) == 1 else f"{base}/part={i}"
                lengths = tuple(sorted({c[2] for c in chunk}))
                self.loads[lid] = Load(lid, model, lengths, tuple(chunk), mins, self.gpus(model, max(lengths)))
                for cell in chunk:
                    self.server_of[cell] = lid

    # -- the shared prefill
    def shares_prefill(self, method: str) -> bool:
        """Whether ``method``'s cells take their dense prefill from the one shared by the decode-side cells of
        their task, length and shard (workflow_scripts/infer.share_key: no prefill method, no recall)."""
        from sparse_kernels.registry import split_method

        return bool(self.settings["share_prefill"]) and takes_shared_prefill(split_method(method)[0],
                                                                             bool(self.study.cfg.get("recall")))

    def prefills_per_sample(self) -> dict[tuple, tuple[int, int, float]]:
        """{(model, task, length): (cells, prefill-side cells, shared prefills)} per sample: without sharing one
        prefill per cell; with it, one per prefill-side cell plus the shared ones, one per load that serves
        decode-side cells of the sample's shard (one, since a load keeps a (task, length, shard) unit whole unless
        max_cells is smaller than it)."""
        cells: dict[tuple, int] = {}
        own: dict[tuple, int] = {}
        loads: dict[tuple, set] = {}
        for (model, task, length, method, ratio, shard), lid in self.server_of.items():
            if shard == 0:
                cells[(model, task, length)] = cells.get((model, task, length), 0) + 1
            if self.shares_prefill(method):
                loads.setdefault((model, task, length, shard), set()).add(lid)
            elif shard == 0:
                own[(model, task, length)] = own.get((model, task, length), 0) + 1
        shards = self.study.n_shards
        out = {}
        for key, n in cells.items():
            shared = sum(len(loads.get((*key, s), ())) for s in range(shards)) / shards
            out[key] = (n, own.get(key, 0), shared)
        return out

    # -- lookups for the rules
    def local_threads(self, cores: int | None) -> int:
        """Torch threads of a server in a local run: the cores shared among the loads, at least one each."""
        return max(1, int(cores or 1) // max(len(self.loads), 1))

    def local_pool_extra(self, cores: int | None) -> int:
        """Workers the local executor needs beyond its own (service_inputs.widen_local_pool): each load that can
        run at once (cores / server threads) is a group job holding one worker plus one per job (server + cells)."""
        at_once = min(len(self.loads), max(1, int(cores or 1) // self.local_threads(cores)))
        largest = sorted((len(load.cells) + 2 for load in self.loads.values()), reverse=True)
        return sum(largest[:at_once])

    @property
    def share_flag(self) -> str:
        """The server's --share-prefill argument (model_server.share_prefill)."""
        return "true" if self.settings["share_prefill"] else "false"

    def server(self, model: str, task: str, length, method: str, ratio: str, shard) -> str:
        return self.server_of[(model, task, int(length), method, ratio, int(shard))]

    @staticmethod
    def address(server: str) -> str:
        return ADDRESS.format(server=server)

    @staticmethod
    def log(server: str) -> str:
        return LOG.format(server=server)

    def runtime(self, server: str, attempt: int = 1) -> int:
        """Minutes requested for a server job: its estimated work x attempt, capped at max_hours."""
        cap = float(self.settings["max_hours"]) * 60
        return max(5, math.ceil(min(self.loads[server].minutes * attempt, cap)))

    def mem_mb(self, server: str, attempt: int = 1) -> int:
        """Host memory: the whole model + working set for a CPU model, a loading buffer for a GPU model."""
        load = self.loads[server]
        need = self.memory_need(load.model, max(load.lengths))
        if self.study.models[load.model]["device"] == "cuda" or need is None:
            base = 16000
        else:
            base = max(4000, math.ceil((sum(need.values()) + GPU_RESERVED) / 2**20))
        return base * attempt

    def remove_stale(self) -> list[str]:
        """Remove rendezvous files (and sockets) left by servers that died with their Snakemake on this host.

        A server removes its own when its Snakemake goes away (its watchdog); this catches the rest (both killed
        at once). Snakemake would take such a file as the server's incomplete output, force the server and skip
        the jobs after it. Empty files are old placeholders (no longer needed, see workflow_scripts/service_inputs.py).
        Only files whose server is known dead (same host, no such process) are removed.
        """
        removed = []
        root = os.path.dirname(ADDRESS)
        if not os.path.isdir(root):
            return removed
        host = socket.gethostname()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in (SALVAGE_DIR, SOCKET_DIR)]
            for name in filenames:
                if not name.endswith(".json"):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    text = Path(path).read_text()
                    info = json.loads(text) if text.strip() else {}
                except (OSError, ValueError):
                    continue
                if info and (info.get("host") != host or pid_alive(info.get("pid"))):
                    continue
                with contextlib.suppress(OSError):      # (an empty file this young: a server's shell writing it)
                    if not info and time.time() - os.stat(path).st_mtime < 60:
                        continue
                for p in (path, info.get("address")):
                    if p and not p.startswith("@") and os.path.lexists(p):
                        with contextlib.suppress(OSError):
                            os.unlink(p)
                removed.append(path)
        return removed

    def ensure_placeholders(self) -> None:
        """An empty file at every server's rendezvous path unless one exists.

        Cells take the rendezvous file as ``ancient`` input: Snakemake does not rerun a cell because its server
        runs, as long as the file exists when the DAG is built. Snakemake deletes service outputs after their
        group; this recreates them when the Snakefile is loaded. A server replaces the placeholder on start.
        """
        made = set()
        for server in self.loads:
            path = ADDRESS.format(server=server)
            if os.path.lexists(path):
                continue
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            try:
                with open(path, "x"):
                    pass
            except FileExistsError:
                pass
