"""Task types: one file per kind of labelling, one small interface (``base.TaskType``).

Registered here in the order a label config is matched against them. Spans (``<Labels>`` on text) and boxes
(``<RectangleLabels>`` on images) arrive as new files implementing ``TaskType`` and one line below.
"""

from __future__ import annotations

from typing import Any

from ml_backend.tasktypes.base import TaskSchema, TaskType
from ml_backend.tasktypes.choices import MultiChoice, SingleChoice

TASK_TYPES: tuple[TaskType, ...] = (SingleChoice(), MultiChoice())
SINGLE_CHOICE = TASK_TYPES[0]

__all__ = ["TASK_TYPES", "SINGLE_CHOICE", "TaskSchema", "TaskType", "for_control", "task_type"]


def task_type(name: str) -> TaskType:
    for t in TASK_TYPES:
        if t.name == name:
            return t
    raise ValueError(f"unknown task type {name!r}; known: {[t.name for t in TASK_TYPES]}")


def for_control(control_tag: str, attrs: dict[str, Any]) -> TaskType | None:
    """The task type that learns this LS control, or None."""
    return next((t for t in TASK_TYPES if t.matches(control_tag, attrs)), None)
