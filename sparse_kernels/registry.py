"""Names, phases and configurable hyperparameters of the attention methods (import-light: no torch).

Used by the study config validation at DAG-build time. ``tests/test_hf_registry.py`` checks these tables
against the method classes' constructor signatures.

* A **single** method sparsifies one phase (``METHOD_PHASES``).
* A **combined** method is ``"<prefill>+<decode>"``: one prefill method and one KV-compression / decode
  method in the same run (e.g. ``vertical_slash+quest``), with a ratio pair.
"""

from __future__ import annotations

# name -> phase it sparsifies. "none" = dense in both phases.
METHOD_PHASES: dict[str, str] = {
    "dense": "none",
    "vertical_slash": "prefill",
    "flexprefill": "prefill",
    "block_sparse": "prefill",
    "snapkv": "kv_compression",
    "ada_snapkv": "kv_compression",
    "quest": "decode",
}
PREFILL_METHODS = tuple(m for m, p in METHOD_PHASES.items() if p == "prefill")
DECODE_METHODS = tuple(m for m, p in METHOD_PHASES.items() if p in ("kv_compression", "decode"))
COMBINE_SEP = "+"

# Hyperparameters a study may override per method (config ``methods.<name>.params``), with the paper's
# defaults (spec §2). Budget knobs (see BUDGET_PARAMS) are not listed: the cell's ratio sets them.
METHOD_PARAMS: dict[str, dict[str, object]] = {
    "dense": {},
    "vertical_slash": {"last_q": 256, "n_sinks": 4, "n_local": 64, "block_size": 64},
    # min_budget: kept fixed while calibration solves alpha (paper: 512); with calibrate: false the paper's
    # table sets (alpha, min_budget) together, so it may not be given then.
    "flexprefill": {"last_q": 512, "n_sinks": 4, "n_local": 64, "block_size": 64, "min_budget": 512},
    "block_sparse": {"block_size": 16},
    "snapkv": {"window": 256, "kernel_size": 21, "local_window": 128, "n_sinks": 4},
    "ada_snapkv": {"window": 256, "kernel_size": 21, "local_window": 128, "n_sinks": 4, "min_head_ratio": 0.2,
                   "kv_head_shards": 1},
    "quest": {"page_size": 16, "share_pages": False},
}

# Hyperparameters a study may set but that are not part of the resolved defaults (so adding one reruns no
# existing cell): name -> {key: default}. bf16_probs: round the estimation window's softmax probabilities to
# bfloat16 before pooling them into vertical / slash scores, as the official code does with a bf16 model
# (default False: fp32 probabilities; docs/methods.md "Vertical-Slash").
OPT_IN_PARAMS: dict[str, dict[str, object]] = {
    "vertical_slash": {"bf16_probs": False},
    "flexprefill": {"bf16_probs": False},
}

# Task-dependent paper defaults (applied unless the study overrides the key): Vertical-Slash's estimation
# window is 512 queries for NIAH and Story Retrieval, 256 otherwise (spec §2.1, §2.7).
TASK_PARAM_DEFAULTS: dict[str, dict[str, dict[str, object]]] = {
    "vertical_slash": {"last_q": {"ruler_niah": 512, "story_retrieval": 512}},
}

# Constructor arguments fixed by the cell's ratio (with the nominal length), never by config params.
BUDGET_PARAMS: dict[str, tuple[str, ...]] = {
    "dense": (),
    "vertical_slash": ("vertical_size", "slash_size"),
    "flexprefill": ("alpha",),
    "block_sparse": ("top_chunks",),
    "snapkv": ("token_capacity",),
    "ada_snapkv": ("token_capacity",),
    "quest": ("token_budget",),
}
# Budget keys a calibration result may set (replacing the ratio -> budget table).
CALIBRATED_BUDGET_PARAMS: dict[str, tuple[str, ...]] = {
    "vertical_slash": ("vertical_size", "slash_size"),
    "flexprefill": ("alpha", "min_budget"),
}
CALIBRATABLE = tuple(CALIBRATED_BUDGET_PARAMS)


def method_names() -> list[str]:
    return list(METHOD_PHASES)


def phase_of(method: str) -> str:
    return METHOD_PHASES[method]


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
        if pre not in PREFILL_METHODS:
            raise KeyError(f"{pre!r} is not a prefill method ({', '.join(PREFILL_METHODS)})")
        if dec not in DECODE_METHODS:
            raise KeyError(f"{dec!r} is not a KV-compression / decode method ({', '.join(DECODE_METHODS)})")
        return pre, dec
    if method not in METHOD_PHASES:
        raise KeyError(f"unknown method {method!r}; known methods: {', '.join(METHOD_PHASES)} "
                       f"or '<prefill>{COMBINE_SEP}<decode>'")
    phase = METHOD_PHASES[method]
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
    out = dict(METHOD_PARAMS[name])
    for key, per_task in TASK_PARAM_DEFAULTS.get(name, {}).items():
        if task in per_task:
            out[key] = per_task[task]
    out.update(overrides or {})
    return out


def param_errors(name: str, overrides: dict | None) -> list[tuple[str, str]]:
    """[(key, message)] for unknown hyperparameters or values of the wrong type."""
    errors = []
    allowed = {**METHOD_PARAMS[name], **OPT_IN_PARAMS.get(name, {})}
    for key, value in (overrides or {}).items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            budget = BUDGET_PARAMS.get(name, ())
            hint = (f" ({key!r} is set by the cell's compression ratio)" if key in budget else "")
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
