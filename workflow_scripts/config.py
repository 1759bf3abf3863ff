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
from workflow_scripts.gguf_model import spec_errors as gguf_spec_errors
from sparse_kernels.registry import (CALIBRATABLE, COMBINE_SEP, components, is_combined, param_errors,
                                     resolve_params, split_method)
from workflow_scripts.tasks import PROMPT_MODES, TASKS, load_task_class

SCHEMA_PATH = str(Path(__file__).parent / "schemas" / "config.schema.yaml")

RESULTS = "results"
DATA = RESULTS + "/data/tokenizer={tokenizer}/task={task}/length={length}/mode={mode}/samples.parquet"
CELL_KEYS = "model={model}/task={task}/length={length}/method={method}/ratio={ratio}"
PRED = RESULTS + "/predictions/" + CELL_KEYS + "/shard={shard}/part.parquet"
# scores are grouped per (model, task, length): scoring is cheap, and one job per group instead of per cell
# keeps the DAG small (the paper grid: 144 score jobs instead of ~7,000)
SCORE = RESULTS + "/scores/model={model}/task={task}/length={length}/part.parquet"
LOG_INFER = RESULTS + "/logs/infer/" + CELL_KEYS + "/shard={shard}.log"
LOG_DATA = RESULTS + "/logs/data/tokenizer={tokenizer}/task={task}/length={length}/mode={mode}.log"
# calibration (Vertical-Slash / FlexPrefill budgets): its own samples (ids offset by 10**6) and one small JSON per
# (model, length, prefill method, its hyperparameters, prefill ratio); `params` is a short hash of the method's
# hyperparameters per task, so a standalone method and a combined one with the same settings share it.
CALIB_DATA = (RESULTS + "/calibration/data/tokenizer={tokenizer}/task={task}/length={length}/mode={mode}"
              "/samples.parquet")
CALIB_KEYS = "model={model}/length={length}/method={method}/params={phash}/ratio={ratio}"
CALIB = RESULTS + "/calibration/" + CALIB_KEYS + "/calibration.json"
LOG_CALIB = RESULTS + "/logs/calibration/" + CALIB_KEYS + ".log"
LOG_CALIB_DATA = RESULTS + "/logs/calibration/data/tokenizer={tokenizer}/task={task}/length={length}/mode={mode}.log"
CALIBRATION_OFFSET = 10**6  # calibration sample ids start here (evaluation ids: 0 .. samples-1)
AGG_DB = RESULTS + "/aggregate/study.duckdb"
AGG_SAMPLES = RESULTS + "/aggregate/samples.parquet"
AGG_SUMMARY = RESULTS + "/aggregate/summary.parquet"

MODEL_DEFAULTS = {"dtype": "bfloat16", "device": "auto", "chat_template": True}
TOP_DEFAULTS = {"seed": 43, "samples": 100, "shard_size": 25, "prompt_mode": "cot", "max_new_tokens": 1024,
                "batch_size": 1, "task_params": {},
                "datasets_dir": "datasets", "executor": "auto", "calibration": {},
                "model_server": {}}   # model loads per job: workflow_scripts/server_plan.py
CALIBRATION_DEFAULTS = {"samples": 2, "tolerance": 0.05}


class ConfigError(ValueError):
    """Invalid study configuration; the message starts with the offending key."""


def key_path(parts) -> str:
    """``['methods', 'dense', 'ratios', 0]`` -> ``methods.dense.ratios[0]``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def schema_errors(config: dict) -> list[str]:
    """Concise schema violations, each prefixed with the offending key path."""
    import jsonschema
    import yaml

    with open(SCHEMA_PATH) as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{key_path(e.absolute_path)}: {e.message}" for e in errors]


def fmt_ratio(r) -> str:
    """Canonical text of a compression ratio in paths: 1, 2, 7.5, 3.33 ...; a (prefill, decode) pair of a
    combined method: ``10+5``."""
    if isinstance(r, (list, tuple)):
        return COMBINE_SEP.join(fmt_ratio(x) for x in r)
    r = float(r)
    return str(int(r)) if r == int(r) else f"{r:g}"


def _is_ratio(r) -> bool:
    return isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 1


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


class Study:
    def __init__(self, config: dict, workdir: str | os.PathLike = "."):
        self.workdir = Path(workdir)
        self.cfg = {**TOP_DEFAULTS, **config}
        self._check_top()
        self.models = {name: {**MODEL_DEFAULTS, **entry} for name, entry in self.cfg["models"].items()}
        self._check_models()
        self.tokenizer_keys, self.tokenizer_canonical = self._tokenizer_keys()
        self._check_shared_prompts()
        self.ratios = self._ratios()
        self.task_versions = {t: load_task_class(t).version for t in self.cfg["tasks"]}
        self.n_shards = math.ceil(self.cfg["samples"] / self.cfg["shard_size"])
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
                raise ConfigError(f"{key}.ratios[{j}]: compression ratio must be a number >= 1, got {r!r}")
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
        # calibration
        calibrate = entry.get("calibrate")
        if calibrate is not None and pre not in CALIBRATABLE:
            raise ConfigError(f"{key}.calibrate: only {', '.join(CALIBRATABLE)} (or combinations with them) are "
                              "calibrated; remove the key")
        if pre in CALIBRATABLE and calibrate is False:
            pre_params = params.get(pre, {}) if combined else params
            if pre == "flexprefill" and "min_budget" in pre_params:
                raise ConfigError(f"{key}.params{'.' + pre if combined else ''}.min_budget: with calibrate: false "
                                  "the paper's table sets (alpha, min_budget); remove min_budget")
            table = budgets.paper_vs_counts if pre == "vertical_slash" else budgets.paper_flexprefill
            for j, r in enumerate(ratios or []):
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
        return pre in CALIBRATABLE and self.method_entry(method).get("calibrate", True) is not False

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
        cr = self.calibration_ratio(method, ratio)
        if cr is None:
            return None
        pre, phash = self.calibration_key(method)
        return CALIB.format(model=model, length=length, method=pre, phash=phash, ratio=cr)

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
        spec.update(samples=self.calibration_settings()["samples"], first_sample=CALIBRATION_OFFSET)
        return spec

    def calibration_params(self, model: str, length: int, component: str, phash: str, ratio: str) -> dict:
        """Everything that defines one calibration job (model x length x prefill method + params x ratio)."""
        m = self.models[model]
        cal = self.calibration_settings()
        for method in self.cfg["methods"]:          # make sure every calibrated method's key is known
            if self.calibrated(method):
                self.calibration_key(method)
        return {
            "model": model, "model_path": self.model_dir(model), "tokenizer": self.tokenizer_path(model),
            "dtype": m["dtype"], "device": m["device"], "length": int(length),
            "component": component, "ratio": float(ratio), "tasks": list(self.cfg["tasks"]),
            "params_by_task": self._calib_params[(component, phash)],
            "samples": cal["samples"], "tolerance": cal["tolerance"], "seed": self.cfg["seed"],
        }

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
            "executor": self.cfg["executor"],
            **{k: v for k, v in self.prompt_options(model, self.mode(model)).items() if k == "answer_prefill"},
            "max_new_tokens": self.cfg["max_new_tokens"],
            "batch_size": self.cfg["batch_size"],
            "samples": [start, stop],
            "shard": shard,
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
