"""Study configuration: semantic validation and the cell grid (import-light; used by the Snakefile).

The JSON schema (``schemas/config.schema.yaml``) checks structure and types through
``snakemake.utils.validate``; ``Study`` then checks names against the task and method registries and paths
on disk, raising :class:`ConfigError` with the offending key before any job runs.

A *cell* is (model, task, length, method, ratio). Every setting that defines a cell reaches its rule as plain
``params`` (see ``cell_params``), so Snakemake's params trigger reruns exactly the cells whose settings changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sparse_kernels import budgets
from sparse_kernels.hf.support import check_checkpoint
from sparse_kernels.registry import (COMBINE_SEP, calibratable, components, get, is_combined, load_module,
                                     param_errors, resolve_params, split_method)
from workflow_scripts.gguf_model import spec_errors as gguf_spec_errors
from workflow_scripts.tasks import PROMPT_MODES, TASKS, load_task_class
from workflow_scripts.tasks.base import CALIBRATION_OFFSET  # calibration sample ids start here

SCHEMA_PATH = str(Path(__file__).parent / "schemas" / "config.schema.yaml")

RESULTS = "results"
DATA = RESULTS + "/data/tokenizer={tokenizer}/task={task}/length={length}/mode={mode}/samples.parquet"
CELL_KEYS = "model={model}/task={task}/length={length}/method={method}/ratio={ratio}"
PRED = RESULTS + "/predictions/" + CELL_KEYS + "/shard={shard}/part.parquet"
# scores are grouped per (model, task, length): scoring is cheap, and one job per group instead of per cell
# keeps the DAG small (the paper grid: 144 score jobs instead of ~7,000)
SCORE = RESULTS + "/scores/model={model}/task={task}/length={length}/part.parquet"
LOG_INFER = RESULTS + "/logs/infer/" + CELL_KEYS + "/shard={shard}.log"
LOG_SCORE = RESULTS + "/logs/score/model={model}/task={task}/length={length}.log"
LOG_DATA = RESULTS + "/logs/data/tokenizer={tokenizer}/task={task}/length={length}/mode={mode}.log"
# calibration (Vertical-Slash / FlexPrefill budgets): its own samples (ids offset by 10**6) and one JSON per
# (model, length, prefill method, its hyperparameters) holding the budget of every prefill ratio the study runs the
# method at (one model load and one pass of estimation statistics for all of them); `params` is a short hash of the
# method's hyperparameters per task, so a standalone method and a combined one with the same settings share it.
CALIB_DATA = (RESULTS + "/calibration/data/tokenizer={tokenizer}/task={task}/length={length}/mode={mode}"
              "/samples.parquet")
CALIB_KEYS = "model={model}/length={length}/method={method}/params={phash}"
CALIB = RESULTS + "/calibration/" + CALIB_KEYS + "/calibration.json"
LOG_CALIB = RESULTS + "/logs/calibration/" + CALIB_KEYS + ".log"
LOG_CALIB_DATA = RESULTS + "/logs/calibration/data/tokenizer={tokenizer}/task={task}/length={length}/mode={mode}.log"
AGG_DB = RESULTS + "/aggregate/study.duckdb"
AGG_SAMPLES = RESULTS + "/aggregate/samples.parquet"
AGG_SUMMARY = RESULTS + "/aggregate/summary.parquet"

MODEL_DEFAULTS = {"dtype": "bfloat16", "device": "auto", "chat_template": True}
TOP_DEFAULTS = {"seed": 43, "samples": 100, "shard_size": 25, "prompt_mode": "cot", "max_new_tokens": 1024,
                "batch_size": 1, "task_params": {},
                "datasets_dir": "datasets", "executor": "auto", "calibration": {}, "recall": False,
                "model_server": {}}   # model loads per job: workflow_scripts/server_plan.py
CALIBRATION_DEFAULTS = {"samples": 2, "tolerance": 0.05}
# Limits on what a study may ask for, checked before Snakemake builds its DAG (far above the paper's grid: ~32,000
# inference jobs): more inference jobs than this (cells x shards) exhausts memory while planning; a study that
# expands to more values than MAX_CONFIG_VALUES (YAML aliases of aliases) hangs any validation.
MAX_INFER_JOBS = 200_000
MAX_CONFIG_VALUES = 1_000_000
# A tokenizer smaller than the model's vocabulary by more than this fraction is not the model's (checkpoints pad
# the embedding table by well under 10 %: Qwen2.5 0.26 %, Phi-2 1.8 %, DeepSeek-V2 2.3 %).
VOCAB_PADDING = 0.10


class ConfigError(ValueError):
    """Invalid study configuration; the message starts with the offending key."""


def key_path(parts) -> str:
    """``['methods', 'dense', 'ratios', 0]`` -> ``methods.dense.ratios[0]``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


# ---------------------------------------------------------------------------------------------- before the schema
def config_size_error(config, limit: int = MAX_CONFIG_VALUES) -> str | None:
    """An error naming the key where the config grows past ``limit`` values (each alias counted where it is used,
    as validation sees it), or None. Iterative and stops at the limit, so an alias bomb cannot hang it."""
    count, stack = 0, [((), config)]
    while stack:
        path, node = stack.pop()
        count += 1
        if count > limit:
            return (f"{key_path(path)}: the study expands to more than {limit:,} values (YAML aliases referring to "
                    "aliases?); write the values out")
        if isinstance(node, dict):
            stack.extend((path + (k,), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((path + (i,), v) for i, v in enumerate(node))
    return None


def yaml_file_errors(path: str | os.PathLike, limit: int = MAX_CONFIG_VALUES) -> list[str]:
    """Duplicate keys (YAML keeps the last silently) and alias bombs in a study file, each naming the file, the
    line and the key; read without building the data (the node graph, each node once)."""
    import yaml

    try:
        with open(path) as f:
            root = yaml.compose(f, Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError) as e:
        return [f"{path}: {e}"]
    errors: list[str] = []
    size: dict[int, int] = {}
    seen: set[int] = set()

    def visit(node, where: str) -> int:
        if id(node) in size:
            return size[id(node)]
        if id(node) in seen:       # a recursive alias
            errors.append(f"{path}:{node.start_mark.line + 1}: {where or '(top level)'}: a recursive YAML alias")
            return limit + 1
        seen.add(id(node))
        n = 1
        if isinstance(node, yaml.MappingNode):
            keys: dict = {}
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                sub = f"{where}.{key}" if where else str(key)
                if key is not None and key in keys and key != "<<":
                    errors.append(f"{path}:{k.start_mark.line + 1}: {sub}: duplicate key (also on line "
                                  f"{keys[key]}); YAML would keep only the last")
                keys.setdefault(key, k.start_mark.line + 1)
                n += visit(v, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                n += visit(v, f"{where}[{i}]")
        size[id(node)] = n = min(n, limit + 1)
        return n

    if root is not None and visit(root, "") > limit and not errors:
        errors.append(f"{path}: the study expands to more than {limit:,} values (YAML aliases referring to "
                      "aliases?); write the values out")
    return errors


def coerce_overrides(config: dict, overrides: dict) -> None:
    """Values given with ``snakemake --config key=value`` arrive as strings, inside lists and mappings too
    (``lengths=[2048]`` -> ``['2048']``); read them as YAML, as a study file would be."""
    import yaml

    def parse(value):
        if isinstance(value, str):
            try:
                return yaml.safe_load(value)
            except yaml.YAMLError:
                return value
        if isinstance(value, list):
            return [parse(v) for v in value]
        if isinstance(value, dict):
            return {k: parse(v) for k, v in value.items()}
        return value

    for key, value in overrides.items():
        if key in config and config[key] is not None and not isinstance(config[key], dict):
            config[key] = parse(config[key])


def schema_errors(config: dict) -> list[str]:
    """Concise schema violations, each prefixed with the offending key path."""
    import jsonschema
    import yaml

    with open(SCHEMA_PATH) as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{key_path(e.absolute_path)}: {e.message}" for e in errors]


def load_method_modules(config: dict, environ=os.environ) -> list[str]:
    """Import the study's ``method_modules`` (files relative to the working directory, or module names), which
    register more methods (docs/extending.md), and pass them on to the jobs' processes through
    ``SFW_METHOD_MODULES`` (sparse_kernels/registry.py loads them on import). Returns the references as passed on."""
    from sparse_kernels.registry import ENV_MODULES

    refs = []
    for i, ref in enumerate(config.get("method_modules") or []):
        ref = str(Path(ref).resolve()) if ref.endswith(".py") else ref
        try:
            load_module(ref)
        except Exception as err:   # any error of the user's module, reported with its key
            raise ConfigError(f"method_modules[{i}]: cannot load {config['method_modules'][i]!r}: "
                              f"{type(err).__name__}: {err}") from None
        refs.append(ref)
    known = [r for r in environ.get(ENV_MODULES, "").split(os.pathsep) if r]
    if refs:
        environ[ENV_MODULES] = os.pathsep.join(dict.fromkeys(known + refs))
    return refs


def fmt_ratio(r) -> str:
    """Canonical text of a compression ratio in paths: 1, 2, 7.5, 3.33 ...; a (prefill, decode) pair of a
    combined method: ``10+5``."""
    if isinstance(r, (list, tuple)):
        return COMBINE_SEP.join(fmt_ratio(x) for x in r)
    r = float(r)
    return str(int(r)) if r == int(r) else f"{r:g}"


def _is_ratio(r) -> bool:
    return isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r >= 1


def ratio_text_error(r) -> str | None:
    """Why a (finite, >= 1) ratio cannot name a cell's path exactly, or None (paths hold fmt_ratio's text, which
    must read back as the same number and match the ratio wildcard)."""
    text = fmt_ratio(r)
    if not re.fullmatch(r"\d+(\.\d+)?", text) or float(text) != float(r):
        return f"{r!r} cannot be written exactly in a path (as {text!r}); use at most 6 significant digits"
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "tok"


@dataclass(frozen=True)
class Cell:
    model: str
    task: str
    length: int
    method: str
    ratio: str   # canonical text, see fmt_ratio


# Files that define what a tokenizer folder produces (AutoTokenizer.from_pretrained), and config.json's model_type,
# which picks the tokenizer class when tokenizer_config.json names none (Qwen2Tokenizer rebuilds its pre-tokenizer).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "vocab.json", "vocab.txt", "merges.txt")


# Of those, the files that can define a tokenizer on their own (the rest only add to one).
TOKENIZER_DEFINING_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                            "vocab.txt")


def has_tokenizer_files(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in TOKENIZER_DEFINING_FILES)


def tokenizer_fingerprint(folder: Path) -> str | None:
    """SHA-1 over the tokenizer files of ``folder`` (names and bytes) and config.json's model_type; None when
    the folder has no tokenizer file yet (e.g. a model the workflow builds itself)."""
    h = hashlib.sha1()
    found = False
    for name in TOKENIZER_FILES:
        f = folder / name
        if f.is_file():
            found = True
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    if not found:
        return None
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError, AttributeError):
        model_type = ""
    h.update(b"model_type\0" + str(model_type).encode())
    return h.hexdigest()


def _model_config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    return cfg if isinstance(cfg, dict) else {}


def context_length(model_cfg: dict) -> int | None:
    """Positions the model supports: max_position_embeddings, times rope_scaling.factor when the config extends
    it (YaRN, linear, dynamic: e.g. Qwen2.5 to 128K), or None when the config does not say."""
    n = model_cfg.get("max_position_embeddings")
    if not isinstance(n, int):
        return None
    scaling = model_cfg.get("rope_scaling")
    if isinstance(scaling, dict) and isinstance(scaling.get("factor"), (int, float)) and scaling["factor"] > 1:
        base = scaling.get("original_max_position_embeddings") or n
        return max(n, int(base * scaling["factor"]))
    return n


def tokenizer_size(folder: Path) -> int | None:
    """Token ids a tokenizer folder can produce (largest id + 1), from tokenizer.json or vocab.json; None if
    neither says."""
    for name in ("tokenizer.json", "vocab.json"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        ids: list[int] = []
        if name == "vocab.json" and isinstance(data, dict):
            ids = [v for v in data.values() if isinstance(v, int)]
        elif isinstance(data, dict):
            vocab = (data.get("model") or {}).get("vocab")
            if isinstance(vocab, dict):
                ids = [v for v in vocab.values() if isinstance(v, int)]
            elif isinstance(vocab, list):
                ids = [len(vocab) - 1]
            ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t.get("id"), int)]
        return max(ids) + 1 if ids else None
    return None


def safetensors_error(f: Path) -> str | None:
    """Why a .safetensors file is unreadable (header, or shorter than its header says), or None. Reads the header
    only: corrupt tensor bytes are found when the model loads."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(size - 8, 100 * 2**20):
                return f"{f} is not a safetensors file (or is truncated): header length {n}, file {size} bytes"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        return f"{f}: unreadable safetensors header ({e})"
    if not isinstance(header, dict):
        return f"{f}: unreadable safetensors header"
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if size < 8 + n + end:
        return f"{f} is truncated: {size} bytes, its header describes {8 + n + end}"
    return None


def weights_error(folder: Path) -> str | None:
    """Why a checkpoint folder has no loadable weights (none, a missing shard, a truncated safetensors file), or
    None. PyTorch .bin files are only checked to exist."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            return f"{index}: unreadable weight index ({e})"
        files = [folder / s for s in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            return f"{index} lists weight files that are missing: {', '.join(missing[:5])}"
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("pytorch_model*.bin")) or (folder / "model.bin").is_file():
            return None
        return (f"{str(folder)!r} has no weights (model.safetensors, sharded *.safetensors with their index, or "
                "pytorch_model*.bin)")
    for f in files:
        if (why := safetensors_error(f)) is not None:
            return why
    return None


class Study:
    def __init__(self, config: dict, workdir: str | os.PathLike = ".", check_paths: bool = True):
        """``check_paths=False``: plan a study whose checkpoints are not there yet (the GPU-hour estimate)."""
        self.workdir = Path(workdir)
        self.cfg = {**TOP_DEFAULTS, **config}
        self._check_top()
        self.models = {name: {**MODEL_DEFAULTS, **entry} for name, entry in self.cfg["models"].items()}
        if check_paths:
            self._check_models()
        self.tokenizer_keys, self.tokenizer_canonical = self._tokenizer_keys()
        self._check_shared_prompts()
        self.ratios = self._ratios()
        self.task_versions = {t: load_task_class(t).version for t in self.cfg["tasks"]}
        self.n_shards = math.ceil(self.cfg["samples"] / self.cfg["shard_size"])
        self._check_size()
        self._calib_keys: dict[str, tuple[str, str]] = {}
        self._calib_params: dict[tuple[str, str], dict] = {}

    # ------------------------------------------------------------------ validation
    def _check_top(self) -> None:
        c = self.cfg
        for i, t in enumerate(c["tasks"]):
            if t not in TASKS:
                raise ConfigError(f"tasks[{i}]: unknown task {t!r}; known tasks: {', '.join(TASKS)}")
        for t in c["task_params"]:
            if t not in TASKS:
                raise ConfigError(f"task_params.{t}: unknown task {t!r}; known tasks: {', '.join(TASKS)}")
            try:
                load_task_class(t)(None, 1024, "cot", **c["task_params"][t])
            except ValueError as e:
                raise ConfigError(f"task_params.{t}: {e}") from None
        for m, entry in c["methods"].items():
            self._check_method(m, entry or {})
        if c["prompt_mode"] not in PROMPT_MODES:
            raise ConfigError(f"prompt_mode: must be one of {PROMPT_MODES}")
        cell = (c.get("analysis") or {}).get("recall_cell")
        if cell is not None:
            if not c["recall"]:
                raise ConfigError("analysis.recall_cell: only used with `recall: true`; set it or remove the key")
            for key, known in (("model", c["models"]), ("task", c["tasks"]), ("length", c["lengths"])):
                if key in cell and cell[key] not in known:
                    raise ConfigError(f"analysis.recall_cell.{key}: {cell[key]!r} is not one of the study's "
                                      f"{key}s ({', '.join(map(str, known))})")

    def _check_method(self, m: str, entry: dict) -> None:
        key = f"methods.{m}"
        try:
            pre, dec = split_method(m)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{key}: {e.args[0]}") from None
        combined = is_combined(m)
        ratios = entry.get("ratios")
        for j, r in enumerate(ratios or []):
            if combined:
                if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(_is_ratio(x) for x in r)):
                    raise ConfigError(f"{key}.ratios[{j}]: a combined method takes [prefill_ratio, decode_ratio] "
                                      f"pairs of numbers >= 1, got {r!r}")
            elif not _is_ratio(r):
                raise ConfigError(f"{key}.ratios[{j}]: compression ratio must be a finite number >= 1, got {r!r}")
            for x in (r if combined else [r]):
                if (why := ratio_text_error(x)) is not None:
                    raise ConfigError(f"{key}.ratios[{j}]: {why}")
        if m == "dense":
            if ratios not in (None, [1], [1.0]):
                raise ConfigError(f"methods.dense.ratios: dense runs at ratio 1 only, got {ratios}")
        elif not ratios:
            raise ConfigError(f"{key}.ratios: list at least one compression ratio (>= 1)")
        texts = [fmt_ratio(r) for r in ratios or []]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"{key}.ratios: duplicate ratios after formatting: {texts}")
        # hyperparameters
        params = entry.get("params") or {}
        comps = components(m)
        if combined:
            for comp, sub in params.items():
                if comp not in comps:
                    raise ConfigError(f"{key}.params.{comp}: not a component of {m} (give params per component: "
                                      f"{', '.join(comps)})")
                if not isinstance(sub, dict):
                    raise ConfigError(f"{key}.params.{comp}: must be a mapping of hyperparameters")
                for k, msg in param_errors(comp, sub):
                    raise ConfigError(f"{key}.params.{comp}.{k}: {msg}")
        else:
            if m == "dense" and params:
                k = next(iter(params))
                raise ConfigError(f"{key}.params.{k}: dense has no hyperparameters")
            for k, msg in param_errors(m, params):
                raise ConfigError(f"{key}.params.{k}: {msg}")
        pre_params = (params.get(pre) or {}) if combined else params
        if pre == "flexprefill":
            hp = resolve_params(pre, pre_params)
            if hp["min_budget"] < hp["block_size"]:
                raise ConfigError(f"{key}.params{'.' + pre if combined else ''}.min_budget: must be at least one block "
                                  f"(block_size = {hp['block_size']}; the official FlexPrefill code's behaviour below "
                                  f"it is not reproduced), got {hp['min_budget']}")
        # calibration
        calibrate = entry.get("calibrate")
        if calibrate is not None and pre not in calibratable():
            raise ConfigError(f"{key}.calibrate: only {', '.join(calibratable())} (or combinations with them) are "
                              "calibrated; remove the key")
        if pre in calibratable() and calibrate is False:
            for k in get(pre).calibration_only:
                if k in pre_params:
                    raise ConfigError(f"{key}.params{'.' + pre if combined else ''}.{k}: with calibrate: false "
                                      f"the paper's table sets the budget ({', '.join(get(pre).budget)}, {k}); "
                                      f"remove {k}")
            table = {"vertical_slash": budgets.paper_vs_counts, "flexprefill": budgets.paper_flexprefill}.get(pre)
            for j, r in enumerate((ratios or []) if table else []):
                rp = r[0] if combined else r
                if budgets.is_dense_ratio(rp):
                    continue
                for L in self.cfg["lengths"]:
                    try:
                        table(L, float(rp))
                    except KeyError as e:
                        raise ConfigError(f"{key}.calibrate: false uses the paper's {pre} table (Qwen2.5), which "
                                          f"has no entry for length {L}, ratio {fmt_ratio(rp)}: {e.args[0]}; "
                                          "set calibrate: true") from None
        # budgets that cannot work at some length
        for comp in comps:
            if comp not in ("snapkv", "ada_snapkv"):
                continue
            hp = resolve_params(comp, params.get(comp, {}) if combined else params)
            floor_ = hp["local_window"] + hp["n_sinks"]
            for j, r in enumerate(ratios or []):
                rd = r[1] if combined else r
                if budgets.is_dense_ratio(rd):
                    continue
                for L in self.cfg["lengths"]:
                    cap = budgets.snapkv_capacity(L, float(rd))
                    if cap <= floor_:
                        raise ConfigError(f"{key}.ratios[{j}]: {comp} capacity {cap} at length {L} must exceed "
                                          f"local_window + n_sinks = {floor_}; use a smaller ratio")

    def _check_size(self) -> None:
        n_cells = (len(self.models) * len(self.cfg["tasks"]) * len(self.cfg["lengths"])
                   * sum(len(r) for r in self.ratios.values()))
        if n_cells * self.n_shards > MAX_INFER_JOBS:
            raise ConfigError(f"samples: {self.cfg['samples']} samples in shards of shard_size {self.cfg['shard_size']} "
                              f"make {n_cells:,} cells x {self.n_shards:,} shards = {n_cells * self.n_shards:,} "
                              f"inference jobs, more than {MAX_INFER_JOBS:,}; raise shard_size or lower samples")

    def _check_models(self) -> None:
        for name, m in self.models.items():
            key = f"models.{name}"
            path = self.workdir / m["path"]
            if "gguf" in m:
                if m.get("build"):
                    raise ConfigError(f"{key}: give either build or gguf")
                for err in gguf_spec_errors(m["gguf"]):
                    raise ConfigError(f"{key}.gguf: {err}")
            if not (m.get("build") or m.get("gguf")):
                if not path.is_dir():
                    raise ConfigError(f"{key}.path: model directory {m['path']!r} does not exist")
                if not (path / "config.json").is_file():
                    raise ConfigError(f"{key}.path: {m['path']!r} has no config.json (not a HF checkpoint)")
                if (why := weights_error(path)) is not None:
                    raise ConfigError(f"{key}.path: {why}")
                lacking = check_checkpoint(path)
                if lacking:
                    raise ConfigError(f"{key}: {m['path']!r} uses attention features the sparse session does not "
                                      f"implement: {'; '.join(lacking)}")
            tok = m.get("tokenizer")
            if tok is not None:
                if not has_tokenizer_files(self.workdir / tok):
                    raise ConfigError(f"{key}.tokenizer: no tokenizer files in {tok!r}")
            elif not (m.get("build") or m.get("gguf")) and not has_tokenizer_files(path):
                raise ConfigError(f"{key}.tokenizer: {m['path']!r} has no tokenizer files; set models.{name}.tokenizer")
            if m.get("build"):
                continue
            model_cfg = _model_config(path)
            vocab = model_cfg.get("vocab_size")
            tok_dir = self.workdir / (tok if tok is not None else m["path"])
            n_tok = tokenizer_size(tok_dir)
            if isinstance(vocab, int) and n_tok is not None:
                tkey = f"{key}.tokenizer" if tok is not None else f"{key}.path"
                if n_tok > vocab:
                    raise ConfigError(f"{tkey}: the tokenizer in {str(tok_dir)!r} has {n_tok} tokens, more than the "
                                      f"model's vocab_size {vocab} ({path / 'config.json'}): not this model's tokenizer")
                if n_tok < (1 - VOCAB_PADDING) * vocab:
                    raise ConfigError(f"{tkey}: the tokenizer in {str(tok_dir)!r} has {n_tok} tokens, far fewer than "
                                      f"the model's vocab_size {vocab} ({path / 'config.json'}): not this model's "
                                      "tokenizer")
            context = context_length(model_cfg)
            if context is not None:
                for i, L in enumerate(self.cfg["lengths"]):
                    if L + self.cfg["max_new_tokens"] > context:
                        raise ConfigError(f"lengths[{i}]: {L} + max_new_tokens {self.cfg['max_new_tokens']} exceeds "
                                          f"the {context}-token context of {key} (max_position_embeddings"
                                          f"{' x rope_scaling.factor' if model_cfg.get('rope_scaling') else ''} in "
                                          f"{path / 'config.json'})")

    def _check_shared_prompts(self) -> None:
        """Models sharing task data (same tokenizer content) must read the same prompts."""
        seen: dict[tuple[str, str], tuple[str, dict]] = {}
        for name in self.models:
            mode = self.mode(name)
            key = (self.tokenizer_key(name), mode)
            opts = {**self.prompt_options(name, mode), "chat_template": bool(self.models[name]["chat_template"])}
            if key in seen and seen[key][1] != opts:
                raise ConfigError(f"models.{name}: shares its tokenizer with models.{seen[key][0]} but sets other "
                                  f"prompt options ({opts} vs {seen[key][1]}); give them the same bos / "
                                  "answer_prefill / chat_template")
            seen.setdefault(key, (name, opts))

    def _tokenizer_keys(self) -> tuple[dict[str, str], dict[str, str]]:
        """(tokenizer path -> readable stable key, tokenizer path -> the path that generates its data). Paths whose tokenizers have identical content (see
        ``tokenizer_fingerprint``: e.g. a model family with a copy of one tokenizer in every folder) get one key,
        so they share task data; the key names the group's first path in sorted order (``data_tokenizer_path``),
        with a short hash when two different tokenizers have folders of the same name."""
        groups: dict[str, list[str]] = {}
        for p in sorted({self.tokenizer_path(n) for n in self.models}):
            groups.setdefault(tokenizer_fingerprint(self.workdir / p) or f"path:{p}", []).append(p)
        by_base: dict[str, list[tuple[str, list[str]]]] = {}
        for fp, ps in groups.items():
            by_base.setdefault(_slug(Path(ps[0]).name), []).append((fp, ps))
        keys: dict[str, str] = {}
        for base, entries in by_base.items():
            for fp, ps in entries:
                key = base if len(entries) == 1 else f"{base}-{hashlib.sha1(ps[0].encode()).hexdigest()[:6]}"
                keys.update({p: key for p in ps})
        return keys, {p: ps[0] for ps in groups.values() for p in ps}

    def _ratios(self) -> dict[str, dict[str, float | tuple[float, float]]]:
        """method -> {ratio text: ratio} (a (prefill, decode) tuple for combined methods)."""
        out = {}
        for m, entry in self.cfg["methods"].items():
            rs = [1.0] if m == "dense" else (entry or {}).get("ratios", [])
            out[m] = {fmt_ratio(r): (tuple(float(x) for x in r) if isinstance(r, (list, tuple)) else float(r))
                      for r in rs}
        return out

    # ------------------------------------------------------------------ methods of a cell
    def method_entry(self, method: str) -> dict:
        return self.cfg["methods"][method] or {}

    def method_params(self, method: str, task: str) -> dict:
        """{component: full hyperparameters} (paper defaults, task-dependent defaults, study overrides)."""
        params = self.method_entry(method).get("params") or {}
        comb = is_combined(method)
        return {c: resolve_params(c, params.get(c, {}) if comb else params, task) for c in components(method)}

    def phase_ratios(self, method: str, ratio: str) -> tuple[float, float]:
        """(prefill ratio, decode ratio) of a cell; 1 for a dense phase."""
        r = self.ratios[method][ratio]
        pre, dec = split_method(method)
        if is_combined(method):
            return float(r[0]), float(r[1])
        return (float(r) if pre else 1.0), (float(r) if dec else 1.0)

    def calibrated(self, method: str) -> bool:
        pre, _ = split_method(method)
        return pre in calibratable() and self.method_entry(method).get("calibrate", True) is not False

    def calibration_ratio(self, method: str, ratio: str) -> str | None:
        """Prefill-ratio text of the calibration a cell depends on, or None (not calibrated / ratio 1)."""
        if not self.calibrated(method):
            return None
        rp = self.phase_ratios(method, ratio)[0]
        return None if budgets.is_dense_ratio(rp) else fmt_ratio(rp)

    def calibration_key(self, method: str) -> tuple[str, str]:
        """(prefill component, params hash) naming the calibration of a calibrated method's prefill part."""
        if method not in self._calib_keys:
            pre, _ = split_method(method)
            by_task = {t: self.method_params(method, t)[pre] for t in self.cfg["tasks"]}
            text = repr(sorted((t, sorted(p.items())) for t, p in by_task.items()))
            phash = hashlib.sha1(text.encode()).hexdigest()[:8]
            self._calib_keys[method] = (pre, phash)
            self._calib_params[(pre, phash)] = by_task
        return self._calib_keys[method]

    def calibration_path(self, model: str, length: int | str, method: str, ratio: str) -> str | None:
        """The calibration file a cell reads its budget from (None: not calibrated, or a dense prefill ratio)."""
        if self.calibration_ratio(method, ratio) is None:
            return None
        pre, phash = self.calibration_key(method)
        return CALIB.format(model=model, length=length, method=pre, phash=phash)

    def _calibrations(self) -> dict[tuple[str, str], set[float]]:
        """{(prefill component, params hash): prefill ratios} of every calibration the study needs (memoised;
        makes every calibrated method's key and hyperparameters known)."""
        if "_calib_ratios" not in self.__dict__:
            memo: dict[tuple[str, str], set[float]] = {}
            for method in self.cfg["methods"]:
                if self.calibrated(method):
                    ratios = memo.setdefault(self.calibration_key(method), set())
                    ratios.update(float(cr) for r in self.ratios[method]
                                  if (cr := self.calibration_ratio(method, r)) is not None)
            self._calib_ratios = memo
        return self._calib_ratios

    def calibration_ratios(self, component: str, phash: str) -> list[float]:
        """Every prefill ratio (sorted) the study runs the calibration (component, phash) at."""
        return sorted(self._calibrations().get((component, phash), ()))

    def calibration_data_path(self, model: str, task: str, length: int | str) -> str:
        return CALIB_DATA.format(tokenizer=self.tokenizer_key(model), task=task, length=length, mode=self.mode(model))

    def calibration_settings(self) -> dict:
        return {**CALIBRATION_DEFAULTS, **(self.cfg.get("calibration") or {})}

    # ------------------------------------------------------------------ grid
    # (per-model lookups are memoised: Snakemake calls them for every job while it builds the DAG)
    def tokenizer_path(self, model: str) -> str:
        return self._per_model("tokenizer_path", model, lambda m: os.path.normpath(m.get("tokenizer") or m["path"]))

    def data_tokenizer_path(self, model: str) -> str:
        """The tokenizer path that generates the model's task data: the first (sorted) of the configured paths
        with the same tokenizer content."""
        return self.tokenizer_canonical[self.tokenizer_path(model)]

    def tokenizer_key(self, model: str) -> str:
        return self._per_model("tokenizer_key", model, lambda m: self.tokenizer_keys[self.tokenizer_path(model)])

    def runtime_label(self) -> str:
        """Where the study's cells run, for the isoTime chart: e.g. "cpu, torch executor" per distinct model
        device (``executor: auto`` as ``sparse_kernels.hf.executors.resolve_executor_name`` resolves it: the
        Triton kernels on CUDA, torch elsewhere)."""
        ex = self.cfg["executor"]
        seen = dict.fromkeys(
            f"{d}, {(('triton' if d == 'cuda' else 'torch') if ex in (None, 'auto') else ex)} executor"
            for d in (m["device"] for m in self.models.values()))
        return "; ".join(seen)

    def mode(self, model: str) -> str:
        return self._per_model("mode", model, lambda m: m.get("prompt_mode") or self.cfg["prompt_mode"])

    def _per_model(self, what: str, model: str, compute) -> str:
        memo = self.__dict__.setdefault("_memo", {}).setdefault(what, {})
        if model not in memo:
            memo[model] = compute(self.models[model])
        return memo[model]

    def cells(self) -> list[Cell]:
        return [
            Cell(model, task, int(length), method, ratio)
            for model in self.models
            for task in self.cfg["tasks"]
            for length in self.cfg["lengths"]
            for method in self.cfg["methods"]
            for ratio in self.ratios[method]
        ]

    def shard_range(self, shard: int) -> tuple[int, int]:
        size = self.cfg["shard_size"]
        return shard * size, min((shard + 1) * size, self.cfg["samples"])

    def data_path(self, model: str, task: str, length: int | str) -> str:
        return DATA.format(tokenizer=self.tokenizer_key(model), task=task, length=length, mode=self.mode(model))

    def shared_data_pattern(self) -> str | None:
        """DATA with {task} and {length} left as wildcards when every model reads the same task data (one
        tokenizer and prompt mode for all), else None."""
        keys = {(self.tokenizer_key(m), self.mode(m)) for m in self.models}
        if len(keys) != 1:
            return None
        tokenizer, mode = keys.pop()
        return DATA.format(tokenizer=tokenizer, task="{task}", length="{length}", mode=mode)

    def model_dir(self, model: str) -> str:
        return self._per_model("model_dir", model, lambda m: os.path.normpath(m["path"]))

    def build_targets(self) -> dict[str, str]:
        """Model directories the workflow creates itself: path -> build recipe."""
        return {self.model_dir(n): ("gguf" if m.get("gguf") else m["build"]) for n, m in self.models.items()
                if m.get("build") or m.get("gguf")}

    def gguf_spec(self, model_dir: str) -> dict:
        """The ``gguf`` entry of the model whose checkpoint folder is ``model_dir`` (rule convert_gguf)."""
        return next(m["gguf"] for n, m in self.models.items() if m.get("gguf") and self.model_dir(n) == model_dir)

    # ------------------------------------------------------------------ params (rerun triggers)
    def data_params(self, tokenizer: str, task: str, length: int, mode: str) -> dict:
        model = next(n for n in self.models if self.tokenizer_key(n) == tokenizer)
        return {
            "task": task,
            "task_version": self.task_versions[task],
            "task_params": dict(self.cfg["task_params"].get(task, {})),
            # only tasks reading natural datasets depend on where they live
            "datasets_dir": self.cfg["datasets_dir"] if load_task_class(task).uses_datasets else None,
            "length": int(length),
            "mode": mode,
            "samples": self.cfg["samples"],
            "seed": self.cfg["seed"],
            "tokenizer": self.data_tokenizer_path(model),
            "chat_template": bool(self.models[model]["chat_template"]),
            **self.prompt_options(model, mode),
        }

    def prompt_options(self, model: str, mode: str) -> dict:
        """The model entry's prompt keys that change the text it reads (only those set, so the data of
        models without them stays byte-identical): ``bos`` (bool; unset = the tokenizer decides, see
        ``tasks.base.wants_bos``) and ``answer_prefill`` (direct mode only: the assistant turn opened with it)."""
        m = self.models[model]
        out = {}
        if m.get("bos") is not None:
            out["bos"] = bool(m["bos"])
        if m.get("answer_prefill") and mode == "direct":
            out["answer_prefill"] = str(m["answer_prefill"])
        return out

    def calibration_data_params(self, tokenizer: str, task: str, length: int, mode: str) -> dict:
        spec = self.data_params(tokenizer, task, length, mode)
        # reserved: tasks over a finite question pool (QA) take calibration questions from the pool's end, never
        # one of the study's evaluation questions
        spec.update(samples=self.calibration_settings()["samples"], first_sample=CALIBRATION_OFFSET,
                    reserved=self.cfg["samples"])
        return spec

    def calibration_params(self, model: str, length: int, component: str, phash: str) -> dict:
        """Everything that defines one calibration job (model x length x prefill method + params, every ratio)."""
        return {**self.calibration_identity(model, length, component, phash),
                "ratios": self.calibration_ratios(component, phash)}

    def calibration_identity(self, model: str, length: int, component: str, phash: str) -> dict:
        """What a calibration's budgets depend on (all but the list of ratios solved, which only adds budgets)."""
        m = self.models[model]
        cal = self.calibration_settings()
        self._calibrations()                        # every calibrated method's key and hyperparameters known
        return {
            "model": model, "model_path": self.model_dir(model), "tokenizer": self.tokenizer_path(model),
            "dtype": m["dtype"], "device": m["device"], "length": int(length),
            "component": component, "tasks": list(self.cfg["tasks"]),
            "task_versions": [self.task_versions[t] for t in self.cfg["tasks"]],
            "params_by_task": self._calib_params[(component, phash)],
            "samples": cal["samples"], "tolerance": cal["tolerance"], "seed": self.cfg["seed"],
        }

    def calibration_fingerprint(self, model: str, length: int | str, method: str, ratio: str) -> str | None:
        """Short hash of the calibration identity a cell's budget comes from: part of the cell's params, so a cell
        reruns when its calibration's settings change, but not when the study only adds ratios (its calibration
        file, read as an `ancient` input, is then rewritten with the same budgets plus new ones)."""
        if self.calibration_ratio(method, ratio) is None:
            return None
        key = (model, int(length), *self.calibration_key(method))
        memo = self.__dict__.setdefault("_calib_fingerprints", {})
        if key not in memo:
            ident = self.calibration_identity(*key)
            memo[key] = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        return memo[key]

    def calibration_targets(self) -> list[str]:
        return sorted({p for c in self.cells()
                       if (p := self.calibration_path(c.model, c.length, c.method, c.ratio)) is not None})

    def cell_params(self, model: str, task: str, length: int, method: str, ratio: str, shard: int) -> dict:
        """Everything that defines one inference job, as plain builtins (Snakemake's params trigger)."""
        m = self.models[model]
        start, stop = self.shard_range(shard)
        pre, dec = split_method(method)
        rp, rd = self.phase_ratios(method, ratio)
        r = self.ratios[method][ratio]
        return {
            "model": model,
            "model_path": self.model_dir(model),
            "tokenizer": self.tokenizer_path(model),
            "dtype": m["dtype"],
            "device": m["device"],
            "task": task,
            "length": int(length),
            "mode": self.mode(model),
            "method": method,
            # a number; for a combined method the [prefill, decode] pair (see prefill_ratio / decode_ratio)
            "ratio": list(r) if isinstance(r, tuple) else r,
            "ratio_key": ratio,
            "prefill_method": pre or "dense",
            "prefill_ratio": rp,
            "decode_method": dec or "dense",
            "decode_ratio": rd,
            "method_params": self.method_params(method, task),
            "nominal_length": int(length),   # budgets are fixed per configuration, as in the paper
            "calibration": self.calibration_path(model, length, method, ratio),
            "calibration_identity": self.calibration_fingerprint(model, length, method, ratio),
            "executor": self.cfg["executor"],
            **{k: v for k, v in self.prompt_options(model, self.mode(model)).items() if k == "answer_prefill"},
            "max_new_tokens": self.cfg["max_new_tokens"],
            "batch_size": self.cfg["batch_size"],
            "samples": [start, stop],
            "shard": shard,
            # only when on: a study without it keeps the params (and results) it had before the key existed
            **({"recall": True} if self.cfg["recall"] else {}),
        }

    def score_params(self, task: str) -> dict:
        return {"task": task, "task_version": self.task_versions[task]}

    # ------------------------------------------------------------------ targets
    def pred_paths(self, cell: Cell) -> list[str]:
        return [PRED.format(**cell.__dict__, shard=s) for s in range(self.n_shards)]

    def group_pred_paths(self, model: str, task: str, length: int | str) -> list[str]:
        """Prediction files of every cell (all methods, ratios, shards) of one (model, task, length)."""
        return [p for method in self.cfg["methods"] for ratio in self.ratios[method]
                for p in self.pred_paths(Cell(model, task, int(length), method, ratio))]

    def group_pred_patterns(self) -> list[str]:
        """``group_pred_paths`` with {model}, {task} and {length} left as wildcards: the same methods, ratios
        and shards in every group, so the score rule lists them without an input function."""
        return [PRED.format(model="{model}", task="{task}", length="{length}", method=method, ratio=ratio, shard=s)
                for method in self.cfg["methods"] for ratio in self.ratios[method] for s in range(self.n_shards)]

    def score_paths(self) -> list[str]:
        return [SCORE.format(model=m, task=t, length=L)
                for m in self.models for t in self.cfg["tasks"] for L in self.cfg["lengths"]]


def wildcard_patterns(study: Study) -> dict[str, str]:
    """Wildcard constraints. Tasks, methods and modes (a few names each) are listed exactly. Models and tokenizers
    are one path segment: Snakemake re-reads each output pattern, constraints included, for every job it plans,
    so an alternation of every model name (one per model, hundreds in a large study) made the dry run slower
    by seconds; an unknown model name in a requested path still fails (in the input function that looks it up)."""
    def alt(names) -> str:
        return "|".join(re.escape(str(n)) for n in sorted(names, key=str))
    return {
        "model": r"[^/]+",
        "task": alt(study.cfg["tasks"]),
        "method": alt(study.cfg["methods"]),
        "tokenizer": r"[^/]+",
        "mode": alt(PROMPT_MODES),
        "length": r"\d+",
        "ratio": r"\d+(\.\d+)?(\+\d+(\.\d+)?)?",
        "shard": r"\d+",
    }
