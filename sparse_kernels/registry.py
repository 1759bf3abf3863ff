"""Names and phases of the attention methods the workflow can run (import-light: no torch)."""

from __future__ import annotations

# name -> phase it sparsifies. "none" = dense in both phases.
METHOD_PHASES: dict[str, str] = {
    "dense": "none",
}


def method_names() -> list[str]:
    return list(METHOD_PHASES)


def phase_of(method: str) -> str:
    return METHOD_PHASES[method]
