"""The study database (results/aggregate/study.duckdb, rules/database.smk): every table of the study, the analyses'
too, each table and column commented from workflow_scripts/schemas/tables.yaml, written atomically after the
analyses.

1. a real Snakemake run of a small study (dense, SnapKV at 2x and 4x, Quest at 2x): the database holds every
   analysis table, each equal to the parquet file its rule wrote, and a description of every table and column; an
   edited description rebuilds the database alone; a forced rebuild gives the same tables;
2. ``write_database`` directly: a column without a description fails naming it and leaves the previous database as
   it was; several files of one table are told apart by the ``key=value`` of their names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts import aggregate as agg

DB = "results/aggregate/study.duckdb"
# the parquet file(s) each table of the database is made of (rules/database.smk)
TABLES = {
    "samples": "results/aggregate/samples.parquet",
    "summary": "results/aggregate/summary.parquet",
    "models": "results/analysis/models.parquet",
    "isocost_points": "results/analysis/isocost_points.parquet",
    "max_ratio": "results/analysis/max_ratio.parquet",
    "max_ratio_detail": "results/analysis/max_ratio_detail.parquet",
    "scaling_table3": "results/analysis/scaling_table3.parquet",
    "scaling_table4": "results/analysis/scaling_table4.parquet",
    "scaling_table7": "results/analysis/scaling_table7.parquet",
    "relative_error": "results/analysis/relative_error.parquet",
    "data_card": "results/data_cards/tokenizer=tiny.parquet",
}


def study(model: str) -> dict:
    return {"seed": 43, "samples": 4, "shard_size": 4, "prompt_mode": "direct", "max_new_tokens": 4,
            "models": {"tiny": {"path": model, "dtype": "float32", "device": "cpu"}},
            "tasks": ["ruler_niah"], "lengths": [1024],
            "methods": {"dense": {}, "snapkv": {"ratios": [2, 4]}, "quest": {"ratios": [2]}}}


def frame(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in a fixed order, index dropped, so that two reads of one table compare equal."""
    df = df.reset_index(drop=True)
    return df.sort_values(list(df.columns), key=lambda c: c.astype(str)).reset_index(drop=True)


def test_database_holds_every_table_commented_and_equal_to_its_parquet(workflow, tiny_model):
    workflow.write_config(study(str(tiny_model)))
    workflow.run()
    con = duckdb.connect(str(workflow.path(DB)), read_only=True)
    tables = dict(con.execute("SELECT table_name, comment FROM duckdb_tables() WHERE NOT internal").fetchall())
    assert set(tables) == set(TABLES)
    assert all(tables.values()), {t: c for t, c in tables.items() if not c}
    columns = con.execute("SELECT table_name, column_name, comment FROM duckdb_columns() WHERE NOT internal"
                          ).fetchall()
    assert len(columns) > 100
    undescribed = [(t, c) for t, c, comment in columns if not (comment or "").strip()]
    assert not undescribed, f"columns without a description in workflow_scripts/schemas/tables.yaml: {undescribed}"
    comment = {(t, c): text for t, c, text in columns}
    # the descriptions are those of the one place, a table's own before the shared ones, patterns included
    docs = agg.table_docs()
    assert comment[("samples", "prefill_ms")] == " ".join(docs["tables"]["samples"]["columns"]["prefill_ms"].split())
    assert comment[("summary", "model")] == docs["columns"]["model"]
    assert comment[("isocost_points", "phase")] != comment[("scaling_table3", "phase")]
    deltas = [c for t, c, _ in columns if t == "scaling_table3" and c.startswith("delta_")]
    assert all(comment[("scaling_table3", c)].startswith("offset of this task") for c in deltas)

    # every table holds exactly its parquet file (the analyses' output, not a copy of an older one)
    for name, path in TABLES.items():
        stored = con.execute(f'SELECT * FROM "{name}"').df()
        written = pq.read_table(workflow.path(path)).to_pandas()
        if name == "data_card":                      # one file per tokenizer, its key from the file name
            assert list(stored["tokenizer"].unique()) == ["tiny"]
            stored = stored.drop(columns="tokenizer")
        assert list(stored.columns) == list(written.columns), name
        pd.testing.assert_frame_equal(frame(stored), frame(written), check_dtype=False, obj=name)
    # the relative error at the study's own ratio, the largest common to its sparse methods (2, not SnapKV's 4)
    rel = con.execute("SELECT method, ratio, n_interpolated FROM relative_error ORDER BY method").fetchall()
    assert rel == [("quest", 2.0, 0), ("snapkv", 2.0, 0)]
    assert con.execute("SELECT count(*) FROM max_ratio_detail").fetchone()[0] == 3      # SnapKV 2, 4; Quest 2
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'summary'")
                 .fetchall())
    assert types["length"] == "BIGINT" and types["ratio"] == "DOUBLE"
    con.close()

    # an edited description rebuilds the database alone; a forced rebuild writes the same tables
    assert workflow.planned_jobs() == {}
    before = {n: frame(duckdb.connect(str(workflow.path(DB)), read_only=True).execute(f'SELECT * FROM "{n}"').df())
              for n in TABLES}
    docs_file, saved = Path(agg.TABLE_DOCS), workflow.path("tables.yaml.orig")
    shutil.copy2(docs_file, saved)
    try:               # (Snakemake reruns for a changed input file, not for a newer one with the same checksum)
        with open(docs_file, "a") as f:
            f.write("# an edit\n")
        assert workflow.planned_jobs() == {"database": 1, "all": 1}
    finally:
        shutil.copy2(saved, docs_file)                 # its content and mtime
    workflow.run("--forcerun", "database")
    assert not list(workflow.path("results/aggregate").glob(".*.tmp*"))
    con = duckdb.connect(str(workflow.path(DB)), read_only=True)
    for n, df in before.items():
        pd.testing.assert_frame_equal(frame(con.execute(f'SELECT * FROM "{n}"').df()), df, obj=n)
    con.close()


def _parquet(path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_undescribed_column_fails_and_keeps_the_previous_database(tmp_path):
    card = {"task": "ruler_niah", "mode": "direct", "samples": 2, "lengths": "1024", "mean_tokens": 20.5,
            "min_tokens": 20, "max_tokens": 21}
    a = _parquet(tmp_path / "cards" / "tokenizer=a.parquet", [card])
    b = _parquet(tmp_path / "x=y" / "tokenizer=b.5.parquet", [{**card, "task": "story_retrieval"}, card])
    models = _parquet(tmp_path / "models.parquet", [{"model": "m", "n_params": 2.0e6}])
    db = tmp_path / "out" / "study.duckdb"
    agg.write_database({"data_card": [a, b], "models": models}, str(db))      # (a folder's "x=y" is no key)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT tokenizer, task FROM data_card ORDER BY ALL").fetchall() == [
        ("a", "ruler_niah"), ("b.5", "ruler_niah"), ("b.5", "story_retrieval")]
    assert con.execute("SELECT comment FROM duckdb_columns() WHERE table_name = 'data_card' AND "
                       "column_name = 'tokenizer'").fetchone()[0].startswith("tokenizer key")
    con.close()
    good = db.read_bytes()

    # a column nobody described: the error names it and where to describe it; the database stays as it was
    bad = _parquet(tmp_path / "bad.parquet", [{"model": "m", "n_params": 2.0e6, "flux_capacity": 1.21}])
    with pytest.raises(ValueError, match=r"table 'models': no description of the column\(s\) flux_capacity in "
                                         r".*tables\.yaml"):
        agg.write_database({"data_card": [a, b], "models": bad}, str(db))
    assert db.read_bytes() == good
    assert sorted(p.name for p in db.parent.iterdir()) == ["study.duckdb"]
    # a table nobody described
    with pytest.raises(ValueError, match="table 'scratch' has no description"):
        agg.write_database({"scratch": models}, str(db))
    # files of one table without a key=value in their paths to tell their rows apart
    with pytest.raises(ValueError, match="no tokenizer=... in the file name"):
        agg.write_database({"data_card": [a, _parquet(tmp_path / "other.parquet", [card])]}, str(db))
    assert db.read_bytes() == good
