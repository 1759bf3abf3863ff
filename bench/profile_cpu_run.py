"""Where the time of a local study run goes: CPU seconds and wall span per kind of process, and the inference
split of the result files (docs/profile_cpu.md).

    python bench/profile_cpu_run.py [--results results] [--json out.json] -- make run
    python bench/profile_cpu_run.py --results results            # only the result files of a finished run

Runs the command while sampling /proc every 0.25 s (no processes forked: each process's CPU time, start and last
sighting, its descendants only), then prints per kind of process (task data, calibration, model server per load,
`run:` jobs, ...) the processes, CPU seconds and wall span, and the whole machine's busy cores (other users
included, to tell a loaded machine). From the prediction files under ``--results``: the seconds of prefill and
decode per sample-slot (one sample through every cell), a shared prefill counted once (``prefill_shared_by``), by
model, length, task and side (prefill-side cells: own sparse prefill; decode-side cells: the shared dense prefill),
and the decoded tokens per sample by method. A process that lives less than the sampling period can be missed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict

DECODE_SIDE = {"dense", "snapkv", "ada_snapkv", "quest"}


class Sampler(threading.Thread):
    """Samples the CPU time of every process and the machine's CPU counters until stopped."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.procs, self.system, self.stop = period, {}, [], threading.Event()
        self.hz = os.sysconf("SC_CLK_TCK")
        self.btime = next(int(x.split()[1]) for x in open("/proc/stat") if x.startswith("btime"))

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            with open("/proc/stat") as f:
                self.system.append((now, [int(x) for x in f.readline().split()[1:]]))
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        stat = f.read()
                    rest = stat[stat.rindex(")") + 2:].split()
                    key = (int(pid), rest[19])
                    if key not in self.procs:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                        self.procs[key] = {"pid": int(pid), "ppid": int(rest[1]), "cmd": cmd[:500],
                                           "start": self.btime + int(rest[19]) / self.hz}
                    self.procs[key].update(cpu=(int(rest[11]) + int(rest[12])) / self.hz, last=now)
                except (OSError, ValueError, IndexError):
                    continue
            self.stop.wait(self.period)


def kind(cmd: str) -> str | None:
    """The kind of process a command line is (None: not counted, e.g. the shell wrapping a job)."""
    if cmd.startswith(("/bin/sh ", "/bin/bash ", "/usr/bin/bash ", "bash ", "sh ")):
        return None
    if "--target-jobs" in cmd:          # a `run:` job: Snakemake runs it in a Snakemake process of its own
        m = re.search(r"--target-jobs '?(\w+)", cmd)
        return f"run: job {m.group(1) if m else '?'} (own Snakemake process)"
    if "snakemake" in cmd and "--report" in cmd:
        return "snakemake --report"
    if "snakemake" in cmd:
        return "snakemake (scheduler)"
    if "workflow_scripts.server " in cmd:
        m = re.search(r"--server (\S+)", cmd)
        return f"model server {m.group(1) if m else ''}"
    m = re.search(r"workflow_scripts\.(\w+)(?: (data|solve))?", cmd)
    if m:
        return {"make_data": "task data", "server_client": "cell clients", "score": "score"}.get(
            m.group(1), m.group(1) + (f" {m.group(2)}" if m.group(2) else ""))
    return "other python" if "python" in cmd else None


def process_table(sampler: Sampler, root: int, t0: float) -> list[dict]:
    children = defaultdict(list)
    for p in sampler.procs.values():
        children[p["ppid"]].append(p["pid"])
    mine, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in mine:
            mine.add(pid)
            stack += children.get(pid, [])
    rows: dict[str, dict] = {}
    for p in sampler.procs.values():
        k = kind(p["cmd"]) if p["pid"] in mine and p["pid"] != root else None
        if k is None or "cpu" not in p:
            continue
        r = rows.setdefault(k, {"kind": k, "processes": 0, "cpu_s": 0.0, "from_s": 1e18, "to_s": 0.0})
        r["processes"] += 1
        r["cpu_s"] += p["cpu"]
        r["from_s"] = min(r["from_s"], p["start"] - t0)
        r["to_s"] = max(r["to_s"], p["last"] - t0)
    return sorted(rows.values(), key=lambda r: r["from_s"])


def inference_table(results: str) -> dict:
    """Per sample-slot seconds of prefill (shared ones once) and decode from the prediction files."""
    import pyarrow.parquet as pq

    batches, tokens = [], defaultdict(lambda: [0, 0])
    for path in glob.glob(f"{results}/predictions/**/part.parquet", recursive=True):
        keys = dict(re.findall(r"(\w+)=([^/]+)", path))
        rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["sample_id"])
        size = max(r["batch_size"] for r in rows)
        for i in range(0, len(rows), size):     # the rows of one generated batch share its timings
            b = rows[i:i + size]
            batches.append({**keys, "n": len(b), "prefill_s": b[0]["prefill_ms"] / 1e3 / b[0]["prefill_shared_by"],
                            "decode_s": (b[0]["decode_ms_per_token"] or 0) * max(r["output_tokens"] for r in b) / 1e3})
            tokens[(keys["task"], keys["method"])][0] += sum(r["output_tokens"] for r in b)
            tokens[(keys["task"], keys["method"])][1] += len(b)
    if not batches:
        return {}
    cells = defaultdict(int)
    for b in batches:
        cells[tuple(b[k] for k in ("model", "task", "length", "method", "ratio"))] += b["n"]
    slots = max(cells.values())
    out = {"cells": len(cells), "samples_per_cell": slots, "by": {}}
    for by in ("all", "model", "length", "task", "side"):
        acc = defaultdict(lambda: [0.0, 0.0])
        for b in batches:
            side = "decode-side" if b["method"] in DECODE_SIDE else "prefill-side"
            key = {"all": "all", "side": side}.get(by, b.get(by))
            acc[key][0] += b["prefill_s"] / slots
            acc[key][1] += b["decode_s"] / slots
        out["by"][by] = {k: {"prefill_s": round(v[0], 2), "decode_s": round(v[1], 2)} for k, v in sorted(acc.items())}
    out["tokens_per_sample"] = {f"{t}/{m}": round(s / n, 1) for (t, m), (s, n) in sorted(tokens.items())}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results")
    ap.add_argument("--json")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    report: dict = {}
    if command:
        sampler = Sampler()
        sampler.start()
        t0 = time.time()
        proc = subprocess.Popen(command)
        rc = proc.wait()
        wall = time.time() - t0
        sampler.stop.set()
        sampler.join()
        busy = [sum(c) - c[3] - c[4] for _, c in (sampler.system[0], sampler.system[-1])]
        total = sum(sampler.system[-1][1]) - sum(sampler.system[0][1])
        rows = process_table(sampler, proc.pid, t0)
        report.update(command=command, returncode=rc, wall_s=round(wall, 1), processes=rows,
                      cpu_s=round(sum(r["cpu_s"] for r in rows), 1),
                      machine_busy_cores=round(os.cpu_count() * (busy[1] - busy[0]) / max(total, 1), 2))
        print(f"{' '.join(command)}: exit {rc}, wall {wall:.1f} s, CPU of its processes {report['cpu_s']} s; "
              f"the machine's cores busy on average: {report['machine_busy_cores']} of {os.cpu_count()}")
        for r in rows:
            print(f"  {r['kind']:60s} {r['processes']:4d} proc  {r['cpu_s']:7.1f} CPU-s  "
                  f"{r['from_s']:6.1f}-{r['to_s']:6.1f} s")
    inf = inference_table(a.results)
    report["inference"] = inf
    if inf:
        print(f"inference, {inf['cells']} cells x {inf['samples_per_cell']} samples: seconds per sample-slot "
              "(one sample through every cell; a shared prefill once)")
        for by, table in inf["by"].items():
            print(f"  by {by}: " + "; ".join(f"{k} {v['prefill_s']} prefill + {v['decode_s']} decode"
                                            for k, v in table.items()))
        print("  decoded tokens per sample: " + ", ".join(f"{k} {v}" for k, v in inf["tokens_per_sample"].items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    sys.exit(report.get("returncode", 0))


if __name__ == "__main__":
    main()
