"""Pipeline steps of the sparse-frontier workflow (task data, inference, scoring, aggregation, charts).

Modules imported by the Snakefile at DAG-build time (`config`, `paths`, `tasks` registry) must stay
import-light: no torch, transformers, pandas or duckdb at import time.
"""
