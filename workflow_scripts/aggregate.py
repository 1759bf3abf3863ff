"""Aggregate per-cell score files with DuckDB into a database file and parquet tables.

Tables (also written as parquet):
* ``samples``: one row per (cell, sample) — hive keys model/task/length + the score-file columns (method, ratio, …);
* ``summary``: one row per cell — n (scored samples), failed (samples without a score: NaN/inf logits, see
  ``status`` in ``samples``), mean score, standard error (sd/sqrt(n), ddof=1), mean sparsity, timings (and mean
  recall / oracle recall when the study measures attention recall).

Only the files of the current study are read (an explicit list), so stale cells left in ``results/`` from an
earlier config never leak into the aggregate.
"""

from __future__ import annotations

import os
from pathlib import Path

HIVE_TYPES = {"model": "VARCHAR", "task": "VARCHAR", "length": "BIGINT"}

SUMMARY_SQL = """
SELECT model, task, length, method, ratio, prefill_ratio, decode_ratio,
       count(score)                              AS n,
       count(*) - count(score)                   AS failed,
       avg(score)                                AS mean,
       coalesce(stddev_samp(score) / sqrt(count(score)), 0) AS se,
       avg(sparsity)                             AS mean_sparsity,
       avg(density)                              AS mean_density,
       avg(input_tokens)                         AS mean_input_tokens,
       avg(output_tokens)                        AS mean_output_tokens,
       avg(prefill_ms / coalesce(batch_size, 1)) AS mean_prefill_ms,   -- per sample (a row holds its batch's)
       avg(decode_ms_per_token)                  AS mean_decode_ms_per_token,
       max(peak_mem_mb)                          AS max_peak_mem_mb{recall}
FROM samples
GROUP BY ALL
ORDER BY model, task, length, method, ratio, prefill_ratio, decode_ratio
"""


def aggregate(score_files: list[str], db_path: str, samples_path: str, summary_path: str) -> None:
    """Write the database and both parquet tables, each atomically; the database only once DuckDB has written
    it completely: an explicit CHECKPOINT (DuckDB swallows an error of the checkpoint it makes on close, e.g. a
    full disk, leaving an empty database and its WAL), no WAL left, and its tables read back."""
    import duckdb

    from .io import atomic_path

    if not score_files:
        raise ValueError("no score files to aggregate")
    hive_types = "{" + ", ".join(f"'{k}': {v}" for k, v in HIVE_TYPES.items()) + "}"
    files = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in score_files) + "]"
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    for stale in Path(db_path).parent.glob(f".{Path(db_path).name}.*.tmp.wal"):   # a killed earlier attempt's
        stale.unlink(missing_ok=True)
    with atomic_path(db_path) as tmp_db:
        os.unlink(tmp_db)  # duckdb creates the file itself
        wal = Path(f"{tmp_db}.wal")
        try:
            con = duckdb.connect(str(tmp_db))
            try:
                con.execute(f"""
                    CREATE TABLE samples AS
                    SELECT * FROM read_parquet({files}, hive_partitioning = true,
                                                  hive_types = {hive_types}, union_by_name = true)
                    ORDER BY model, task, length, method, ratio, sample_id
                """)
                columns = {d[0] for d in con.execute("SELECT * FROM samples LIMIT 0").description}
                recall = (",\n       avg(recall) AS mean_recall, avg(oracle_recall) AS mean_oracle_recall"
                          if "recall" in columns else "")      # a study with `recall: true`
                con.execute(f"CREATE TABLE summary AS {SUMMARY_SQL.format(recall=recall)}")
                counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("samples", "summary")}
                con.execute("CHECKPOINT")
                for table, path in (("samples", samples_path), ("summary", summary_path)):
                    with atomic_path(path) as tmp:
                        con.execute(f"COPY {table} TO '{tmp}' (FORMAT parquet)")
            finally:
                con.close()
            if wal.exists():
                raise OSError(f"DuckDB left its write-ahead log {wal}: the database was not written completely")
            con = duckdb.connect(str(tmp_db), read_only=True)
            try:
                back = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in counts}
            finally:
                con.close()
            if back != counts:
                raise OSError(f"{db_path}: tables read back as {back}, written {counts}")
        finally:
            wal.unlink(missing_ok=True)
