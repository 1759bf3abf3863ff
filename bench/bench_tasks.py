"""Benchmark task generation: all nine tasks x N samples at one length with a corpus-trained BPE tokenizer.

    .venv/bin/python bench/bench_tasks.py [--samples 100] [--length 32768] [--vocab 8192] [--mode cot]

QA tasks read made-up fixture files (``qa_data.write_fixtures``) written to a temporary directory, sized to
fill the length. Prints the wall time per task (generation only: ``Task.build`` for every sample, including
the task's one-off preparation such as counting dataset documents), this process's CPU time (all threads) and
the totals, with the machine's load average (other processes slow the wall time down); every prompt is
checked to lie in the length window (that check is not timed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts.tasks import TASKS, load_task_class  # noqa: E402
from workflow_scripts.tasks.base import MIN_FRACTION, Renderer  # noqa: E402
from workflow_scripts.tasks.qa_data import write_fixtures  # noqa: E402
from workflow_scripts.tasks.testing import corpus_tokenizer  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--mode", default="cot")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--hashes", metavar="FILE",
                    help="write the sha256 of every generated row to FILE (JSON), to compare outputs across versions")
    a = ap.parse_args(argv)
    hashes: dict[str, str] = {}

    t0 = time.perf_counter()
    tok = corpus_tokenizer(a.vocab)
    print(f"tokenizer: BPE vocab {len(tok)} trained on tokenizer_corpus in {time.perf_counter() - t0:.1f}s")
    scale = max(1, a.length // 32768)
    with tempfile.TemporaryDirectory() as data:
        write_fixtures(data, n_squad=400 * scale, n_quality=60 * scale, n_toefl=350 * scale)
        total = total_cpu = 0.0
        failures = 0
        load0 = os.getloadavg()[0]
        for name in a.tasks.split(","):
            renderer = Renderer(tok)
            task = load_task_class(name)(renderer, a.length, a.mode, seed=43, datasets_dir=data)
            samples, elapsed = [], 0.0
            cpu0 = time.process_time()
            for i in range(a.samples):
                t = time.perf_counter()
                samples.append(task.build(i))
                elapsed += time.perf_counter() - t
            cpu = time.process_time() - cpu0
            bad = [s.sample_id for s in samples
                   if not (MIN_FRACTION * a.length <= renderer.count(s.prompt) == s.input_tokens <= a.length)]
            failures += len(bad)
            for s in samples:
                row = json.dumps(s.row(), sort_keys=True).encode()
                hashes[f"{name}/{a.length}/{a.mode}/{s.sample_id}"] = hashlib.sha256(row).hexdigest()
            mean_len = sum(s.input_tokens for s in samples) / len(samples)
            flag = f"  OUT OF WINDOW: {bad}" if bad else ""
            print(f"{name:16s} {elapsed:7.2f}s  {1000 * elapsed / a.samples:7.1f} ms/sample  (cpu {cpu:6.2f}s)  "
                  f"mean {mean_len:9.1f} tokens ({mean_len / a.length:.1%}){flag}")
            total += elapsed
            total_cpu += cpu
    print(f"{'total':16s} {total:7.2f}s  (cpu {total_cpu:.2f}s) for {len(a.tasks.split(','))} tasks x {a.samples} "
          f"samples at {a.length} tokens ({a.mode}); load average {os.getloadavg()[0]:.2f} at the end, "
          f"{load0:.2f} at the start")
    if a.hashes:
        Path(a.hashes).write_text(json.dumps(hashes, indent=0, sort_keys=True))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
