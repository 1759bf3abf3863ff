"""The one place where attention methods are registered (import-light: no torch).

Each method is one :class:`Method` entry: its name, the phase it sparsifies, its class, the hyperparameters a study
may set (with the paper's defaults), the constructor arguments its compression ratio sets (its budget), the budget
keys a calibration may set, and its index-cost terms for the cost model. Everything else reads this table: study
validation (``workflow_scripts/config.py``), method construction (``sparse_kernels/hf/build.py``,
``sparse_kernels/methods.build_method``), calibration, the analyses' phase split
(``workflow_scripts/analysis/__init__.py``) and the cost model (``workflow_scripts/analysis/cost.py``).
``tests/test_hf_config.py`` checks the table against the classes' constructor signatures. docs/extending.md walks
through adding a method.

Methods defined outside this package register themselves with :func:`register` in a Python file that a study names
under ``method_modules`` (config.schema.yaml); the Snakefile loads those files and passes them on to the jobs'
processes in the environment variable ``SFW_METHOD_MODULES``, which this module reads when it is imported.

* A **single** method sparsifies one phase (``phase``).
* A **combined** method is ``"<prefill>+<decode>"``: one prefill method and one KV-compression / decode
  method in the same run (e.g. ``vertical_slash+quest``), with a ratio pair.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PHASES = ("none", "prefill", "kv_compression", "decode")
COMBINE_SEP = "+"
ENV_MODULES = "SFW_METHOD_MODULES"


@dataclass(frozen=True)
class Method:
    """One registered method.

    ``cls``: the class (or ``"module:Class"``, imported on first use) built as ``cls(ratio=, nominal_length=,
    **hyperparameters)``; it turns the ratio into its budget (``budget``: those constructor arguments) and must
    have a ``phase`` attribute equal to ``phase``. ``params``: hyperparameters a study may override
    (``methods.<name>.params``) with their defaults; the default's type is the type a study must give.
    ``task_params``: task-dependent defaults ``{param: {task: value}}``. ``calibrated_budget``: the budget keys a
    calibration may set instead of the ratio table (non-empty = calibratable); ``calibration_only``: params used
    only when calibrating (dropped when the ratio sets the budget). ``index_cost``: ``f(dims, length, ratio,
    options) -> {"prefill_index_flops" | "decode_index_memory" | "decode_index_flops": value}`` (or
    ``"module:function"``), the method's own overhead in the cost model; None = no overhead. ``opt_in``:
    hyperparameters a study may set that stay out of the resolved defaults unless set (a new knob reruns no
    existing cell)."""

    name: str
    phase: str
    cls: type | str | None = None
    params: dict = field(default_factory=dict)
    budget: tuple[str, ...] = ()
    task_params: dict = field(default_factory=dict)
    calibrated_budget: tuple[str, ...] = ()
    calibration_only: tuple[str, ...] = ()
    index_cost: Callable | str | None = None
    # hyperparameters a study may set that are not part of the resolved defaults (so adding one reruns no existing
    # cell): {key: default}
    opt_in: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"method {self.name!r}: phase must be one of {PHASES}, got {self.phase!r}")
        if not re.fullmatch(r"[a-z][a-z_]*", self.name):   # as the study schema's method names
            raise ValueError(f"method name {self.name!r}: lower-case letters and _ only, starting with a letter")
        if self.cls is None and self.phase != "none":
            raise ValueError(f"method {self.name!r}: a sparse method needs its class (cls)")
        for key in set(self.task_params) | set(self.calibration_only):
            if key not in self.params:
                raise ValueError(f"method {self.name!r}: {key!r} is not one of its params")

    def method_class(self) -> type:
        return _resolve(self.cls)

    def index_cost_fn(self) -> Callable | None:
        return None if self.index_cost is None else _resolve(self.index_cost)


def _resolve(ref):
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


METHODS: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add a method to the registry (``replace=True`` to redefine one). Returns it."""
    if not replace and method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(METHODS)} "
                       f"or '<prefill>{COMBINE_SEP}<decode>'") from None


_KC = "workflow_scripts.analysis.cost:"
register(Method("dense", "none"))
register(Method(
    "vertical_slash", "prefill", "sparse_kernels.methods.vertical_slash:VerticalSlash",
    params={"last_q": 256, "n_sinks": 4, "n_local": 64, "block_size": 64},
    budget=("vertical_size", "slash_size"),
    # the estimation window is 512 queries for NIAH and Story Retrieval, 256 otherwise (spec §2.1, §2.7)
    task_params={"last_q": {"ruler_niah": 512, "story_retrieval": 512}},
    calibrated_budget=("vertical_size", "slash_size"),
    index_cost=_KC + "vertical_slash_index_cost",
    # bf16_probs: round the estimation window's softmax probabilities to bfloat16 before pooling them into vertical /
    # slash scores, as the official code does with a bf16 model (default: fp32; docs/methods.md "Vertical-Slash")
    opt_in={"bf16_probs": False},
))
register(Method(
    "flexprefill", "prefill", "sparse_kernels.methods.flexprefill:FlexPrefill",
    # min_budget: kept fixed while calibration solves alpha (paper: 512); with calibrate: false the paper's
    # table sets (alpha, min_budget) together, so it may not be given then.
    params={"last_q": 512, "n_sinks": 4, "n_local": 64, "block_size": 64, "min_budget": 512},
    budget=("alpha",),
    calibrated_budget=("alpha", "min_budget"),
    calibration_only=("min_budget",),
    index_cost=_KC + "flexprefill_index_cost",
    opt_in={"bf16_probs": False},
))
register(Method(
    "block_sparse", "prefill", "sparse_kernels.methods.block_sparse:BlockSparse",
    params={"block_size": 16}, budget=("top_chunks",), index_cost=_KC + "block_sparse_index_cost",
))
register(Method(
    "snapkv", "kv_compression", "sparse_kernels.methods.snapkv:SnapKV",
    params={"window": 256, "kernel_size": 21, "local_window": 128, "n_sinks": 4},
    budget=("token_capacity",), index_cost=_KC + "snapkv_index_cost",
))
register(Method(
    "ada_snapkv", "kv_compression", "sparse_kernels.methods.ada_snapkv:AdaSnapKV",
    params={"window": 256, "kernel_size": 21, "local_window": 128, "n_sinks": 4, "min_head_ratio": 0.2,
            "kv_head_shards": 1},
    budget=("token_capacity",), index_cost=_KC + "snapkv_index_cost",
))
register(Method(
    "quest", "decode", "sparse_kernels.methods.quest:Quest",
    params={"page_size": 16, "share_pages": False}, budget=("token_budget",), index_cost=_KC + "quest_index_cost",
))
del _KC


class _Field(Mapping):
    """Read-only, always current view ``{method name: one field of its entry}`` (``only``: entries to include)."""

    def __init__(self, attr: str, only: Callable[[Method], bool] = lambda m: True):
        self._attr, self._only = attr, only

    def _names(self):
        return [n for n, m in METHODS.items() if self._only(m)]

    def __getitem__(self, name):
        if name not in METHODS or not self._only(METHODS[name]):
            raise KeyError(name)
        return getattr(METHODS[name], self._attr)

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())

    def __repr__(self):
        return repr(dict(self))


METHOD_PHASES: Mapping[str, str] = _Field("phase")
METHOD_PARAMS: Mapping[str, dict] = _Field("params")
BUDGET_PARAMS: Mapping[str, tuple[str, ...]] = _Field("budget")
TASK_PARAM_DEFAULTS: Mapping[str, dict] = _Field("task_params", lambda m: bool(m.task_params))
CALIBRATED_BUDGET_PARAMS: Mapping[str, tuple[str, ...]] = _Field("calibrated_budget", lambda m: bool(m.calibrated_budget))
OPT_IN_PARAMS: Mapping[str, dict] = _Field("opt_in", lambda m: bool(m.opt_in))


def method_names() -> list[str]:
    return list(METHODS)


def phase_of(method: str) -> str:
    return get(method).phase


def prefill_methods() -> tuple[str, ...]:
    return tuple(n for n, m in METHODS.items() if m.phase == "prefill")


def decode_methods() -> tuple[str, ...]:
    """KV-compression and decode methods (the decode side of a combined method)."""
    return tuple(n for n, m in METHODS.items() if m.phase in ("kv_compression", "decode"))


def calibratable() -> tuple[str, ...]:
    return tuple(CALIBRATED_BUDGET_PARAMS)


def is_combined(method: str) -> bool:
    return COMBINE_SEP in method


def split_method(method: str) -> tuple[str | None, str | None]:
    """(prefill component, decode-side component) of a method name; None for a dense phase.

    Raises KeyError / ValueError with a readable message for unknown or ill-formed names."""
    if is_combined(method):
        parts = method.split(COMBINE_SEP)
        if len(parts) != 2:
            raise ValueError(f"combined method {method!r} must be '<prefill>{COMBINE_SEP}<decode>'")
        pre, dec = parts
        if pre not in prefill_methods():
            raise KeyError(f"{pre!r} is not a prefill method ({', '.join(prefill_methods())})")
        if dec not in decode_methods():
            raise KeyError(f"{dec!r} is not a KV-compression / decode method ({', '.join(decode_methods())})")
        return pre, dec
    phase = get(method).phase
    if phase == "prefill":
        return method, None
    if phase in ("kv_compression", "decode"):
        return None, method
    return None, None


def components(method: str) -> list[str]:
    """The method names a (possibly combined) method is made of; [] for dense."""
    return [c for c in split_method(method) if c is not None]


def resolve_params(name: str, overrides: dict | None, task: str | None = None) -> dict:
    """Full hyperparameter dict of one (single) method: paper defaults, task-dependent defaults, overrides."""
    m = get(name)
    out = dict(m.params)
    for key, per_task in m.task_params.items():
        if task in per_task:
            out[key] = per_task[task]
    out.update(overrides or {})
    return out


def param_errors(name: str, overrides: dict | None) -> list[tuple[str, str]]:
    """[(key, message)] for unknown hyperparameters or values of the wrong type."""
    errors = []
    m = get(name)
    allowed = {**m.params, **m.opt_in}
    for key, value in (overrides or {}).items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            hint = (f" ({key!r} is set by the cell's compression ratio)" if key in m.budget else "")
            errors.append((key, f"unknown hyperparameter {key!r} of {name}{hint}; known: {known}"))
            continue
        default = allowed[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = True
        if not ok:
            errors.append((key, f"{key} of {name} must be a {type(default).__name__}, got {value!r}"))
    return errors


def load_module(ref: str) -> None:
    """Import a file (``.py`` path) or an importable module that registers methods; each file only once."""
    if ref.endswith(".py"):
        path = Path(ref).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"method module {ref!r}: no such file")
        name = "sfw_methods_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        importlib.import_module(ref)


def load_modules_from_env() -> None:
    for ref in filter(None, os.environ.get(ENV_MODULES, "").split(os.pathsep)):
        load_module(ref)


load_modules_from_env()
