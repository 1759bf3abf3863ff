"""Sparse attention methods and kernels.

A *method* decides what to keep (blocks, vertical columns and slash diagonals, tokens per kv head, pages);
shared executors compute attention from that selection. `registry` is import-light (no torch) so the
Snakefile can validate configs quickly.
"""
