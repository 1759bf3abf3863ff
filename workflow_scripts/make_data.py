"""Generate the samples of one (tokenizer, task, length, prompt mode) and write them as parquet.

    python -m workflow_scripts.make_data --spec "<dict from Study.data_params>" --out samples.parquet
"""

from __future__ import annotations

import argparse
import ast
import time

from tqdm import tqdm

from .io import write_parquet
from .provenance import provenance
from .tasks import load_task_class
from .tasks.base import MIN_FRACTION, Renderer


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def generate(spec: dict) -> list[dict]:
    tok = load_tokenizer(spec["tokenizer"])
    renderer = Renderer(tok, use_chat_template=spec["chat_template"], bos=spec.get("bos"),
                        prefill=spec.get("answer_prefill", ""))
    task = load_task_class(spec["task"])(renderer, spec["length"], spec["mode"], seed=spec["seed"],
                                        datasets_dir=spec.get("datasets_dir"), reserved=int(spec.get("reserved", 0)),
                                        **spec["task_params"])
    rows = []
    low = MIN_FRACTION * spec["length"]
    first = int(spec.get("first_sample", 0))        # calibration data uses ids disjoint from evaluation
    for i in tqdm(range(first, first + spec["samples"]), desc=f"{spec['task']}@{spec['length']}", mininterval=5):
        row = task.build(i).row()
        # the final check is independent of the generator: re-tokenise the stored prompt
        n = renderer.count(row["prompt"])
        if not (n == row["input_tokens"] and low <= n <= spec["length"]):
            raise RuntimeError(f"sample {i}: prompt has {n} tokens, outside [{low:.0f}, {spec['length']}]")
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True, help="Python-literal dict (Study.data_params)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    spec = ast.literal_eval(a.spec)
    import pyarrow as pa

    t0 = time.time()
    rows = generate(spec)
    table = pa.Table.from_pylist(rows)
    # Only the spec goes into the file, so the same spec gives byte-identical data; provenance goes to the log.
    write_parquet(table, a.out, {"spec": spec})
    print(f"provenance: {provenance()}")
    print(f"wrote {len(rows)} samples to {a.out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
