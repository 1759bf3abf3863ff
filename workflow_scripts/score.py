"""Score one (model, task, length) group: apply the task's metric to every prediction of every cell.

    python -m workflow_scripts.score --spec "{'task': ..., 'task_version': ...}" --data samples.parquet \
        --out part.parquet pred1.parquet pred2.parquet ...

Each output row is a prediction row plus ``method``, ``ratio`` (from the cell spec stored with the predictions)
and ``score`` (null for a failed sample: ``status`` other than "ok").
"""

from __future__ import annotations

import argparse
import ast
import json


def score_group(task: str, data_path: str, pred_paths: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .io import read_metadata
    from .tasks import load_task_class

    cls = load_task_class(task)
    data = pq.read_table(data_path, columns=["sample_id", "gold", "answer"]).to_pylist()
    gold = {r["sample_id"]: json.loads(r["gold"]) for r in data}
    answer = {r["sample_id"]: r["answer"] for r in data}       # the gold answer, kept beside each score (audits)
    tables = []
    seen: set[tuple] = set()
    for path in pred_paths:
        table = pq.read_table(path)
        cell = read_metadata(path)["cell"]
        if cell["task"] != task:
            raise RuntimeError(f"{path} holds task {cell['task']!r}, expected {task!r}")
        ids = table.column("sample_id").to_pylist()
        # combined prefill+decode cells carry a [prefill, decode] ratio pair: their numeric ratios live in the
        # prediction rows (prefill_ratio, decode_ratio); `ratio` is null for them
        combined = isinstance(cell["ratio"], (list, tuple))
        ratio = None if combined else float(cell["ratio"])
        for i in ids:
            key = (cell["method"], cell.get("ratio_key", str(cell["ratio"])), i)
            if key in seen:
                raise RuntimeError(f"sample {i} of {cell['method']}@{cell['ratio']} appears twice ({path})")
            seen.add(key)
        # a failed sample (status other than "ok", e.g. NaN logits) has no score, never a 0
        status = (table.column("status").to_pylist() if "status" in table.column_names else ["ok"] * len(ids))
        scores = [float(cls.score(p, gold[i])) if st == "ok" else None
                  for i, p, st in zip(ids, table.column("prediction").to_pylist(), status)]
        n = table.num_rows
        table = table.append_column("method", pa.array([cell["method"]] * n, pa.string()))
        table = table.append_column("ratio", pa.array([ratio] * n, pa.float64()))
        table = table.append_column("gold_answer", pa.array([answer[i] for i in ids], pa.string()))
        tables.append(table.append_column("score", pa.array(scores, pa.float64())))
    return pa.concat_tables(tables, promote_options="default").sort_by(
        [("method", "ascending"), ("ratio", "ascending"), ("prefill_ratio", "ascending"),
         ("decode_ratio", "ascending"), ("sample_id", "ascending")])


def main(argv=None) -> None:
    from .io import write_parquet
    from .provenance import provenance

    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("preds", nargs="+")
    a = ap.parse_args(argv)
    spec = ast.literal_eval(a.spec)
    table = score_group(spec["task"], a.data, a.preds)
    write_parquet(table, a.out, {"score": spec, "provenance": provenance()})
    print(f"scored {table.num_rows} predictions -> {a.out}")


if __name__ == "__main__":
    main()
