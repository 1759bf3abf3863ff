"""Task registry (import-light). Each task lives in its own module and is imported on demand."""

from __future__ import annotations

import importlib

# task name -> "module:Class"
TASKS: dict[str, str] = {
    "ruler_niah": "workflow_scripts.tasks.niah:NIAH",
    "ruler_vt": "workflow_scripts.tasks.vt:VariableTracking",
    "ruler_cwe": "workflow_scripts.tasks.cwe:CommonWords",
    "qa_squad": "workflow_scripts.tasks.qa:SquadQA",
    "qa_quality": "workflow_scripts.tasks.qa:QualityQA",
    "qa_toefl": "workflow_scripts.tasks.qa:ToeflQA",
    "story_retrieval": "workflow_scripts.tasks.story:StoryRetrieval",
    "story_multihop": "workflow_scripts.tasks.story:StoryMultiHop",
    "story_filtering": "workflow_scripts.tasks.story:StoryFiltering",
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
