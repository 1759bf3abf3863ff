"""Automatic budget calibration of Vertical-Slash and FlexPrefill (beyond the paper, which tuned by hand).

Two steps, each a Snakemake rule (``rules/calibrate.smk``):

    python -m workflow_scripts.calibrate data  --spec "<dict>" --out samples.parquet
    python -m workflow_scripts.calibrate solve --spec "<dict>" --out calibration.json DATA.parquet ...

``data`` writes calibration samples of one (tokenizer, task, length, prompt mode) exactly like the task-data
step, but with sample ids ``CALIBRATION_OFFSET + i`` (seeds ``seed + 10**6 + i``), so they never coincide with
evaluation samples (ids ``0 .. samples-1``).

``solve`` loads the model once, runs its dense prefill over those samples (all tasks of the study pooled), records
the method's selection statistics per (sample, layer) — the vertical / slash scores its budget is taken from —
and, for every ratio in the spec, solves for the budget whose **realized density** hits ``1 / ratio`` within
``tolerance`` (relative); all ratios share the statistics and the memo of evaluated settings, and on a GPU the
statistics stay on the device, where each candidate is evaluated with the methods' GPU selection:

* the measure is ``density_computed``: the fraction of causal query-key pairs the kernel actually computes
  (tiles clipped to the causal triangle and the sequence), averaged over samples, layers and heads — the
  same number each result row reports as ``density``. The paper's own V-S measure counts whole 64x64 tiles,
  including their parts above the diagonal, so it can be negative at short lengths and is not monotone in the
  budget; the uniform measure is monotone, which bisection needs, and comparable across all methods;
* Vertical-Slash: verticals = slashes = k (as the paper), bisection over integer k. Each extra slash adds up
  to one 64-wide tile per query block, so at short lengths density jumps; if the closest k misses the
  tolerance, slashes stay at the largest k below the target and the vertical count alone is bisected upward
  (fine-grained: one column per step). The JSON says which (``refined``);
* FlexPrefill: bisection over alpha in [0, 1] with ``min_budget`` fixed (paper: 512). When even alpha = 0
  is too dense (short lengths, high ratios) alpha stays 0 and min_budget is bisected, never below one block
  (block_size, 64: the method refuses smaller values, whose official behaviour is not reproduced) (the paper's own
  high-compression points are alpha = 0 with min_budget = the V-S count); if that misses, alpha is bisected
  again on top of the largest min_budget below the target;
* a target below the smallest reachable density (the forced sinks and local window) or outside the tolerance
  after refinement is an error naming the reachable range: no silent mis-calibration.

Calibration uses the dense model's attention statistics (one forward per sample); the realized density in the
sparse run, reported per row, can therefore differ slightly from the calibration value.
"""

from __future__ import annotations

import argparse
import ast
import json
import time

from sparse_kernels.budgets import nearest_k
from workflow_scripts.config import fmt_ratio
from workflow_scripts.tasks.base import CALIBRATION_OFFSET


class CalibrationError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------- data
def generate_calibration_data(spec: dict) -> list[dict]:
    """``make_data.generate`` for sample ids ``first_sample + i`` (default CALIBRATION_OFFSET + i)."""
    from .make_data import generate

    return generate({**spec, "first_sample": int(spec.get("first_sample", CALIBRATION_OFFSET))})


# ---------------------------------------------------------------------------------------------- statistics
def collect_scores(model, prompts_by_task: dict[str, list[list[int]]], methods_by_task: dict,
                   on_device: bool = False) -> dict[str, list]:
    """{task: [(vscore [H, n], sscore [H, n]) per (sample, layer)]} from the model's dense prefill: each
    task's method instance computes its own statistics (its estimation window may be task-dependent).
    The scores go to the CPU unless ``on_device`` (a :class:`DensityModel` then evaluates settings where they
    are: on a GPU with the methods' GPU selection)."""
    from sparse_kernels.hf.generate import greedy_generate
    from sparse_kernels.hf.session import SparseSession

    out: dict[str, list] = {}
    for task, prompts in prompts_by_task.items():
        method = methods_by_task[task]
        rows: list = []

        def hook(ev, method=method, rows=rows):
            if ev.phase == "prefill" and ev.sparse:     # (sliding-window layers never run the method)
                for b in range(ev.q.shape[0]):
                    v, s = method.row_scores(ev.q[b], ev.k[b], ev.scale)
                    v, s = v.float(), s.float()
                    rows.append((v, s) if on_device else (v.cpu(), s.cpu()))

        session = SparseSession(None, None, executor="auto", hooks=[hook])
        for p in prompts:
            greedy_generate(model, [p], 1, set(), 0, session=session)
        out[task] = rows
    return out


class DensityModel:
    """Realized density (``density_computed``, mean over samples x layers x heads) of a setting."""

    def __init__(self, method: str, scores: dict[str, list], params_by_task: dict[str, dict]):
        self.method = method
        # scores on a GPU (collect_scores(on_device=True)): the methods' GPU selection (block index kernel)
        self.accelerated = any(v.is_cuda for rows in scores.values() for v, _ in rows)
        self.scores = scores
        self.params = params_by_task
        self.memo: dict[tuple, float] = {}
        self.per_sample: dict[tuple, list[float]] = {}

    def _build(self, task: str, setting: dict):
        from sparse_kernels.hf.build import build_one

        params = dict(self.params[task])
        if self.method == "flexprefill":
            params.pop("min_budget", None)
        m = build_one(self.method, 2.0, params, None, calibrated=setting)
        if self.accelerated:
            from sparse_kernels.triton import accelerate

            m = accelerate(m)
        return m

    def __call__(self, **setting) -> float:
        key = tuple(sorted(setting.items()))
        if key not in self.memo:
            vals = []
            for task, rows in self.scores.items():
                sel = self._build(task, setting).selection_from_scores(rows)
                vals.append(sel.density_computed().double())        # [rows, H]
            import torch

            allv = torch.cat(vals)
            self.memo[key] = float(allv.mean())
            self.per_sample[key] = [float(x) for x in allv.mean(-1)]
        return self.memo[key]

    @property
    def max_length(self) -> int:
        return max(v.shape[-1] for rows in self.scores.values() for v, _ in rows)


def _nearest_int(f, target: float, lo: int, hi: int) -> tuple[int, int]:
    """(k_best, k_below): the k in [lo, hi] with f(k) nearest ``target`` (f non-decreasing) and the largest k
    with f(k) < target (lo - 1 if none; (hi, hi) when even f(hi) < target)."""
    best, crossing = nearest_k(f, target, lo, hi)
    if crossing == hi and f(hi) < target:
        return hi, hi
    return best, crossing - 1


def _bisect_float(f, target: float, lo: float, hi: float, tol: float, iters: int = 40) -> float:
    """x in [lo, hi] with f(x) closest to target found by bisection (f non-decreasing); stops early once
    within the relative tolerance."""
    best = min((lo, hi), key=lambda x: abs(f(x) - target))
    for _ in range(iters):
        if abs(f(best) - target) <= tol * target:
            break
        mid = (lo + hi) / 2
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid
        best = min((best, lo, hi, mid), key=lambda x: abs(f(x) - target))
        if hi - lo < 1e-7:
            break
    return best


def _ok(d: float, target: float, tol: float) -> bool:
    return abs(d - target) <= tol * target + 1e-12


def solve_vertical_slash(dm: DensityModel, ratio: float, tol: float) -> dict:
    target = 1.0 / ratio
    n = dm.max_length
    f = lambda k: dm(vertical_size=k, slash_size=k)  # noqa: E731
    low = f(1)
    if target < low * (1 - tol):
        raise CalibrationError(f"vertical_slash: ratio {ratio:g} needs density {target:.4f}, below the smallest "
                               f"reachable {low:.4f} at this length (forced sinks / local diagonals)")
    k, k_below = _nearest_int(f, target, 1, n)
    setting = {"vertical_size": k, "slash_size": k}
    refined = False
    if not _ok(f(k), target, tol) and k_below >= 1:
        ks = k_below
        g = lambda kv: dm(vertical_size=kv, slash_size=ks)  # noqa: E731
        kv, _ = _nearest_int(g, target, ks, n)
        if abs(g(kv) - target) < abs(f(k) - target):
            setting, refined = {"vertical_size": kv, "slash_size": ks}, True
    return _result(dm, setting, ratio, tol, refined)


def solve_flexprefill(dm: DensityModel, ratio: float, tol: float, min_budget: int) -> dict:
    """alpha with ``min_budget`` fixed, else alpha 0 and min_budget bisected down to one block (``block_size``,
    64), never below it (the method refuses it)."""
    target = 1.0 / ratio
    n = dm.max_length
    floor = min(int(next(iter(dm.params.values())).get("block_size", 64)), n)
    mb = max(min(int(min_budget), n), floor)
    h0 = dm(alpha=0.0, min_budget=mb)
    refined = False
    if h0 <= target * (1 + tol):
        a = _bisect_float(lambda x: dm(alpha=x, min_budget=mb), target, 0.0, 1.0, tol)
        setting = {"alpha": a, "min_budget": mb}
    else:
        low = dm(alpha=0.0, min_budget=floor)
        if target < low * (1 - tol):
            raise CalibrationError(f"flexprefill: ratio {ratio:g} needs density {target:.4f}, below the smallest "
                                   f"reachable {low:.4f} at this length (forced sinks / local diagonals, "
                                   f"min_budget >= one block of {floor})")
        f = lambda m: dm(alpha=0.0, min_budget=m)  # noqa: E731
        m, m_below = _nearest_int(f, target, floor, mb)
        setting = {"alpha": 0.0, "min_budget": m}
        if not _ok(f(m), target, tol) and m_below >= floor:
            a = _bisect_float(lambda x: dm(alpha=x, min_budget=m_below), target, 0.0, 1.0, tol)
            if abs(dm(alpha=a, min_budget=m_below) - target) < abs(f(m) - target):
                setting, refined = {"alpha": a, "min_budget": m_below}, True
    return _result(dm, setting, ratio, tol, refined)


def _result(dm: DensityModel, setting: dict, ratio: float, tol: float, refined: bool) -> dict:
    target = 1.0 / ratio
    d = dm(**setting)
    res = {"setting": setting, "ratio": ratio, "target_density": target, "density": d,
           "relative_error": (d - target) / target, "tolerance": tol, "refined": refined,
           "per_sample_density": dm.per_sample[tuple(sorted(setting.items()))],
           "evaluations": len(dm.memo)}
    if not _ok(d, target, tol):
        tried = sorted(dm.memo.values())
        raise CalibrationError(
            f"{dm.method}: no setting reaches density {target:.4f} (ratio {ratio:g}) within ±{tol:.0%}; closest "
            f"{d:.4f} with {setting}; densities seen: {[round(x, 4) for x in tried]}")
    return res


def solve(method: str, dm: DensityModel, ratio: float, tol: float, params: dict) -> dict:
    if method == "vertical_slash":
        return solve_vertical_slash(dm, ratio, tol)
    if method == "flexprefill":
        return solve_flexprefill(dm, ratio, tol, int(params.get("min_budget", 512)))
    raise ValueError(f"{method} is not calibrated")


# ---------------------------------------------------------------------------------------------- job
def run_solve(spec: dict, data_paths: list[str], out_path: str) -> dict:
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from sparse_kernels.hf.build import build_one

    from .infer import load_model, resolve_device

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    device = resolve_device(spec["device"])
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    model = load_model(spec["model_path"], spec["dtype"], device)
    t_load = time.perf_counter() - t0
    tasks = spec["tasks"]
    if len(tasks) != len(data_paths):
        raise ValueError(f"{len(tasks)} tasks but {len(data_paths)} calibration data files")
    prompts: dict[str, list[list[int]]] = {}
    ids: dict[str, list[int]] = {}
    for task, path in zip(tasks, data_paths):
        rows = pq.read_table(path, columns=["sample_id", "prompt"]).to_pylist()[: spec["samples"]]
        if any(r["sample_id"] < CALIBRATION_OFFSET for r in rows):
            raise RuntimeError(f"{path}: calibration data must use sample ids >= {CALIBRATION_OFFSET}")
        prompts[task] = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
        ids[task] = [r["sample_id"] for r in rows]
    method = spec["component"]
    params_by_task = {t: spec["params_by_task"][t] for t in tasks}
    probes = {}
    for t in tasks:
        p = dict(params_by_task[t])
        if method == "flexprefill":
            p.pop("min_budget", None)
        probes[t] = build_one(method, 2.0, p, None, calibrated=(
            {"vertical_size": 1, "slash_size": 1} if method == "vertical_slash"
            else {"alpha": 0.0, "min_budget": int(p.get("block_size", 64))}))
    # on a GPU the statistics stay there and every candidate budget is evaluated with the methods' GPU selection
    scores = collect_scores(model, prompts, probes, on_device=device.type == "cuda")
    t_scores = time.perf_counter() - t0
    dm = DensityModel(method, scores, params_by_task)
    any_params = params_by_task[tasks[0]]
    results, errors = {}, {}
    for ratio in spec["ratios"]:       # one set of statistics, a memo of evaluated settings shared by all ratios
        try:
            results[fmt_ratio(ratio)] = solve(method, dm, float(ratio), float(spec["tolerance"]), any_params)
        except CalibrationError as e:
            errors[fmt_ratio(ratio)] = str(e)
    if errors:
        raise CalibrationError("; ".join(f"ratio {r}: {e}" for r, e in errors.items()))
    return {"method": method, "params_by_task": params_by_task, "model": spec["model"], "length": spec["length"],
            "measure": "density_computed", "samples": ids, "results": results, "evaluations": len(dm.memo),
            "device": str(device),
            "seconds": {"load": t_load, "scores": t_scores - t_load, "total": time.perf_counter() - t0}}


def result_for(calibration: dict, ratio: float) -> dict:
    """The budget of prefill ratio ``ratio`` in a calibration file's content."""
    key = fmt_ratio(ratio)
    if key not in calibration["results"]:
        raise KeyError(f"calibration of {calibration['method']} at length {calibration['length']} has no ratio "
                       f"{key} (ratios: {', '.join(calibration['results'])})")
    return calibration["results"][key]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--spec", required=True)
    d.add_argument("--out", required=True)
    s = sub.add_parser("solve")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("data", nargs="+")
    a = ap.parse_args(argv)
    spec = ast.literal_eval(a.spec)
    from .io import atomic_path, write_parquet

    if a.cmd == "data":
        import pyarrow as pa

        rows = generate_calibration_data(spec)
        write_parquet(pa.Table.from_pylist(rows), a.out, {"spec": spec})
        print(f"wrote {len(rows)} calibration samples to {a.out}")
        return
    res = run_solve(spec, a.data, a.out)
    with atomic_path(a.out) as tmp:
        tmp.write_text(json.dumps(res, indent=1, sort_keys=True))
    for r in res["results"].values():
        print(f"{res['method']} ratio {r['ratio']:g}: {r['setting']} -> density {r['density']:.4f} "
              f"(target {r['target_density']:.4f}, {r['relative_error']:+.2%})")
    print(f"{len(res['results'])} ratios, {res['evaluations']} settings evaluated on {res['device']}; seconds: "
          f"{ {k: round(v, 1) for k, v in res['seconds'].items()} }")


if __name__ == "__main__":
    main()

