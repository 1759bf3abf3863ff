"""Cell description (method name, ratio, hyperparameters, nominal length, calibration) -> method instances."""

from __future__ import annotations

from ..budgets import is_dense_ratio
from ..registry import get, split_method
from .session import SparseSession


def _component_params(params: dict | None, name: str, single: bool) -> dict:
    params = dict(params or {})
    if name in params and isinstance(params[name], dict):
        return dict(params[name])
    if single and not any(isinstance(v, dict) for v in params.values()):
        return params          # flat dict for a single method
    return {}


def build_one(name: str, ratio: float, params: dict | None = None, nominal_length: int | None = None,
              calibrated: dict | None = None):
    """One method instance. ``calibrated`` (Vertical-Slash / FlexPrefill only) holds the explicit budget a
    calibration solved for (``vertical_size``/``slash_size`` or ``alpha``/``min_budget``); it replaces the
    table lookup from ``ratio``. Ratio 1 is always the method's dense setting."""
    from ..methods import build_method

    kw = dict(params or {})
    if calibrated and not is_dense_ratio(ratio):
        allowed = get(name).calibrated_budget
        extra = set(calibrated) - set(allowed)
        if extra:
            raise ValueError(f"calibration of {name} sets unknown budget keys {sorted(extra)}")
        kw.update(calibrated)
        return build_method(name, **kw)
    for key in get(name).calibration_only:   # calibration knobs (FlexPrefill's min_budget: the table fixes it)
        kw.pop(key, None)
    return build_method(name, ratio=float(ratio), nominal_length=nominal_length, **kw)


def build_methods(method: str, ratio, params: dict | None = None, nominal_length: int | None = None,
                  calibrated: dict | None = None):
    """(prefill method | None, decode-side method | None) of a cell.

    ``method``: a registry name (``dense``, ``vertical_slash``, ``quest``, ...) or a combined name
    ``<prefill>+<decode>``; ``ratio``: a number, or a ``(prefill_ratio, decode_ratio)`` pair for combined
    names; ``params``: ``{component_name: {hyperparameter: value}}`` (a flat dict is accepted for a single
    method); ``calibrated``: the prefill component's calibrated budget (see :func:`build_one`)."""
    pre, dec = split_method(method)
    if pre is None and dec is None:
        return None, None
    single = (pre is None) != (dec is None)
    if single:
        r_pre = r_dec = float(ratio)
    else:
        if not isinstance(ratio, (list, tuple)) or len(ratio) != 2:
            raise ValueError(f"combined method {method!r} needs a (prefill, decode) ratio pair, got {ratio!r}")
        r_pre, r_dec = float(ratio[0]), float(ratio[1])
    p = build_one(pre, r_pre, _component_params(params, pre, single), nominal_length, calibrated) if pre else None
    d = build_one(dec, r_dec, _component_params(params, dec, single), nominal_length) if dec else None
    return p, d


def make_session(method: str, ratio, params: dict | None = None, nominal_length: int | None = None,
                 calibrated: dict | None = None, executor="auto") -> SparseSession:
    pre, dec = build_methods(method, ratio, params, nominal_length, calibrated)
    return SparseSession(pre, dec, executor=executor)


__all__ = ["build_one", "build_methods", "make_session"]
