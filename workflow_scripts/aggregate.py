"""Aggregate per-cell score files with DuckDB into parquet tables, and gather the study's tables into one database.

Tables (``aggregate`` writes the first two as parquet; ``write_database`` puts every table of the study, the
analyses' too, into ``results/aggregate/study.duckdb``):
* ``samples``: one row per (cell, sample) — hive keys model/task/length + the score-file columns (method, ratio, …);
* ``summary``: one row per cell — n (scored samples), failed (samples without a score: NaN/inf logits, see
  ``status`` in ``samples``), mean score, standard error (sd/sqrt(n), ddof=1), mean sparsity, timings (and mean
  recall / oracle recall when the study measures attention recall);
* the analysis tables (rules/analysis.smk) and the data cards (rules/data.smk), one table each.

Every table and column of the database carries a comment (DuckDB ``COMMENT ON``: ``SELECT table_name, comment FROM
duckdb_tables()``, ``... FROM duckdb_columns()``), taken from one place, ``schemas/tables.yaml``; a column without a
description there is an error, so the database never holds a column nobody described.

Only the files of the current study are read (an explicit list), so stale cells left in ``results/`` from an
earlier config never leak into the aggregate.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

HIVE_TYPES = {"model": "VARCHAR", "task": "VARCHAR", "length": "BIGINT"}
TABLE_DOCS = str(Path(__file__).parent / "schemas" / "tables.yaml")   # table and column descriptions

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


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def aggregate(score_files: list[str], samples_path: str, summary_path: str) -> None:
    """Write the ``samples`` and ``summary`` tables as parquet, each atomically."""
    import duckdb

    from .io import atomic_path

    if not score_files:
        raise ValueError("no score files to aggregate")
    hive_types = "{" + ", ".join(f"'{k}': {v}" for k, v in HIVE_TYPES.items()) + "}"
    files = "[" + ", ".join(_sql_str(f) for f in score_files) + "]"
    con = duckdb.connect()
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
        for table, path in (("samples", samples_path), ("summary", summary_path)):
            with atomic_path(path) as tmp:
                con.execute(f"COPY {table} TO {_sql_str(tmp)} (FORMAT parquet)")
    finally:
        con.close()


@cache
def table_docs(path: str = TABLE_DOCS) -> dict:
    """``{"columns": {column: description}, "tables": {table: {"comment": ..., "columns": {...}}}}`` from
    ``schemas/tables.yaml``: the shared column descriptions and each table's own (which win)."""
    import yaml

    docs = yaml.safe_load(Path(path).read_text())
    return {"columns": docs.get("columns") or {}, "tables": docs.get("tables") or {}}


def comments(table: str, columns: list[str], docs: dict | None = None) -> tuple[str, dict[str, str]]:
    """The comment of ``table`` and of each of its ``columns``; a ValueError names every one without a description
    in ``schemas/tables.yaml`` (the database documents each column it holds)."""
    docs = docs or table_docs()
    entry = docs["tables"].get(table)
    if not entry or not entry.get("comment"):
        raise ValueError(f"table {table!r} has no description in {TABLE_DOCS} (tables.{table}.comment)")
    own = entry.get("columns") or {}
    found = {c: _described(c, own) or _described(c, docs["columns"]) for c in columns}
    missing = [c for c, text in found.items() if not text]
    if missing:
        raise ValueError(f"table {table!r}: no description of the column(s) {', '.join(missing)} in {TABLE_DOCS} "
                         f"(add them under tables.{table}.columns, or under columns when shared)")
    return entry["comment"].strip(), {c: " ".join(t.split()) for c, t in found.items()}


def _described(column: str, described: dict) -> str | None:
    """The description of ``column`` in ``described``: its own key, else the first glob key matching it."""
    from fnmatch import fnmatchcase

    if described.get(column):
        return described[column]
    return next((text for key, text in described.items() if "*" in key and fnmatchcase(column, key) and text),
                None)


def _path_keys(path: str) -> dict[str, str]:
    """The ``key=value`` of a file's name without its suffix, e.g. ``tokenizer=Qwen2.5-7B.parquet``: {tokenizer:
    Qwen2.5-7B} (the folders are not read: the study's own folder may hold a ``=``)."""
    stem = Path(path).stem
    return dict([stem.split("=", 1)]) if re.fullmatch(r"[A-Za-z_]\w*=[^=]+", stem) else {}


def _select(path: str, keys: list[str]) -> str:
    """A SELECT of one parquet file; with ``keys``, the path's values of those keys as leading columns."""
    values = _path_keys(path)
    missing = [k for k in keys if k not in values]
    if missing:
        raise ValueError(f"{path}: no {'/'.join(missing)}=... in the file name to tell its rows apart from the "
                         "other files of the table")
    lead = "".join(f"{_sql_str(values[k])} AS {k}, " for k in keys)
    return f"SELECT {lead}* FROM read_parquet({_sql_str(path)}, hive_partitioning = false)"   # (no folder keys)


def write_database(tables: dict[str, str | list[str]], db_path: str) -> None:
    """Write ``db_path`` holding one table per entry of ``tables`` (name -> a parquet file, or a list of files whose
    rows are told apart by the ``key=value`` of their file names, which becomes a leading column: the data card of
    each tokenizer, ``tokenizer=<key>.parquet``), every table and column commented (``comments``).

    Atomic: the file is written beside its target and renamed onto it only once DuckDB has written it completely: an
    explicit CHECKPOINT (DuckDB swallows an error of the checkpoint it makes on close, e.g. a full disk, leaving an
    empty database and its WAL), no WAL left, and its tables and comments read back. A rerun rebuilds the whole
    file from the parquet tables, so it never holds a stale or half-updated table."""
    import duckdb

    from .io import atomic_path

    if not tables:
        raise ValueError("no tables for the database")
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    for stale in Path(db_path).parent.glob(f".{Path(db_path).name}.*.tmp.wal"):   # a killed earlier attempt's
        stale.unlink(missing_ok=True)
    with atomic_path(db_path) as tmp_db:
        os.unlink(tmp_db)  # duckdb creates the file itself
        wal = Path(f"{tmp_db}.wal")
        try:
            con = duckdb.connect(str(tmp_db))
            try:
                written = {}
                for name, paths in tables.items():
                    if isinstance(paths, (str, os.PathLike)):
                        paths, keys = [paths], []
                    else:                   # files of one table: the key of their names becomes a column
                        paths = list(paths)
                        keys = sorted(set().union(*(_path_keys(p) for p in paths)))
                        if not keys:
                            raise ValueError(f"table {name!r}: no key=value in the names of its files {paths} to "
                                             "tell their rows apart")
                    query = "\nUNION ALL BY NAME\n".join(_select(str(p), keys) for p in paths)
                    con.execute(f'CREATE TABLE "{name}" AS {query}')
                    columns = [d[0] for d in con.execute(f'SELECT * FROM "{name}" LIMIT 0').description]
                    table_comment, column_comments = comments(name, columns)
                    con.execute(f'COMMENT ON TABLE "{name}" IS {_sql_str(table_comment)}')
                    for column, text in column_comments.items():
                        con.execute(f'COMMENT ON COLUMN "{name}"."{column}" IS {_sql_str(text)}')
                    written[name] = (con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0], len(columns))
                con.execute("CHECKPOINT")
            finally:
                con.close()
            if wal.exists():
                raise OSError(f"DuckDB left its write-ahead log {wal}: the database was not written completely")
            con = duckdb.connect(str(tmp_db), read_only=True)
            try:
                back = {t: (con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0],
                            con.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = ? "
                                        "AND comment IS NOT NULL AND comment <> ''", [t]).fetchone()[0])
                        for t in written}
            finally:
                con.close()
            if back != written:
                raise OSError(f"{db_path}: tables (rows, commented columns) read back as {back}, written {written}")
        finally:
            wal.unlink(missing_ok=True)
