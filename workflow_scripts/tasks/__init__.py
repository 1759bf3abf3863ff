"""Task registry (import-light). Each task lives in its own module and is imported on demand."""

from __future__ import annotations

import importlib

# task name -> "module:Class"
TASKS: dict[str, str] = {
    "ruler_niah": "workflow_scripts.tasks.niah:NIAH",
}

PROMPT_MODES = ("cot", "direct")


def task_names() -> list[str]:
    return list(TASKS)


def load_task_class(name: str):
    try:
        target = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
