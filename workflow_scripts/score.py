"""Score one cell: apply the task's metric to every prediction of every shard, write one parquet.

    python -m workflow_scripts.score --spec "{'task': ..., 'task_version': ...}" --data samples.parquet \
        --out part.parquet shard0.parquet shard1.parquet ...
"""

from __future__ import annotations

import argparse
import ast
import json


def score_cell(task: str, data_path: str, pred_paths: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .tasks import load_task_class

    cls = load_task_class(task)
    gold = {r["sample_id"]: json.loads(r["gold"])
            for r in pq.read_table(data_path, columns=["sample_id", "gold"]).to_pylist()}
    preds = pa.concat_tables([pq.read_table(p) for p in pred_paths])
    ids = preds.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"duplicate sample ids across shards {pred_paths}")
    scores = [float(cls.score(p, gold[i])) for i, p in zip(ids, preds.column("prediction").to_pylist())]
    return preds.append_column("score", pa.array(scores, pa.float64())).sort_by("sample_id")


def main(argv=None) -> None:
    from .io import read_metadata, write_parquet
    from .provenance import provenance

    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("preds", nargs="+")
    a = ap.parse_args(argv)
    spec = ast.literal_eval(a.spec)
    table = score_cell(spec["task"], a.data, a.preds)
    cell = dict(read_metadata(a.preds[0]).get("cell", {}))
    cell.pop("samples", None)
    cell.pop("shard", None)
    write_parquet(table, a.out, {"cell": cell, "score": spec, "provenance": provenance()})
    print(f"scored {table.num_rows} samples -> {a.out}")


if __name__ == "__main__":
    main()
