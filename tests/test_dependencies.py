"""Declared dependencies match the code: every third-party package that workflow_scripts/ or sparse_kernels/ imports
is a dependency in pyproject.toml (or an optional extra, for the GPU-only imports) and pinned exactly in
requirements.txt; no extra offers a package that no code imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def imported_distributions() -> set[str]:
    """Distributions (PyPI names) of the top-level modules the package code imports, outside the stdlib."""
    mods = set()
    for path in [*(ROOT / "workflow_scripts").rglob("*.py"), *(ROOT / "sparse_kernels").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    mods -= set(sys.stdlib_module_names) | {"workflow_scripts", "sparse_kernels", "__future__"}
    dists = packages_distributions()
    missing = sorted(m for m in mods if m not in dists and m != "accelerate")   # accelerate: not installed on CPU
    assert not missing, f"imported modules of no installed distribution: {missing}"
    return {_name(dists[m][0]) for m in mods if m in dists} | ({"accelerate"} & mods)


def test_every_import_is_declared_and_pinned():
    deps = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = {_name(r) for reqs in PYPROJECT["project"]["optional-dependencies"].values() for r in reqs}
    used = imported_distributions()
    assert "numpy" in used
    assert not used - deps - extras, f"imported but not declared in pyproject.toml: {sorted(used - deps - extras)}"
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", line), f"requirements.txt: not an exact pin: {line}"
            pins[_name(line)] = line
    assert not (deps | {"tabulate"}) - set(pins), f"dependencies not pinned: {sorted(deps - set(pins))}"
    # pandas needs tabulate for DataFrame.to_markdown (workflow_scripts/analyze.py), so it is declared too
    assert "to_markdown" in (ROOT / "workflow_scripts" / "analyze.py").read_text() and "tabulate" in deps


def test_extras_offer_only_what_code_uses():
    used = imported_distributions()
    for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items():
        if extra == "test":
            continue
        unused = {_name(r) for r in reqs} - used
        assert not unused, f"extra [{extra}] offers packages no code imports: {sorted(unused)}"
