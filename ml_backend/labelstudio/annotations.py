"""LS annotations -> training labels: which annotation counts, what is a skip, which labels are unknown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ml_backend.tasktypes import TaskSchema


@dataclass
class LabelStats:
    labelled: int = 0
    cancelled_only: int = 0
    unknown_labels: dict[str, int] = field(default_factory=dict)
    no_known_label: int = 0


def latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The most recently updated annotation that is not a skip and has a result; None if there is none."""
    valid = [a for a in task.get("annotations") or [] if not a.get("was_cancelled") and a.get("result")]
    if not valid:
        return None
    return max(valid, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))


def is_labelled(task: dict[str, Any]) -> bool:
    return latest_annotation(task) is not None


def labelled_examples(
    schema: TaskSchema, tasks: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[list[str]], LabelStats]:
    """Tasks with a usable label and their label lists. Skips (was_cancelled) are not labels; labels that are not
    in the config (renamed or removed choices) are ignored and counted, so the caller can warn."""
    stats = LabelStats()
    kept, labels = [], []
    for task in tasks:
        annotation = latest_annotation(task)
        if annotation is None:
            if any(a.get("was_cancelled") for a in task.get("annotations") or []):
                stats.cancelled_only += 1
            continue
        known, unknown = schema.labels_from_result(annotation["result"])
        for name in unknown:
            stats.unknown_labels[name] = stats.unknown_labels.get(name, 0) + 1
        if not known:
            stats.no_known_label += 1
            continue
        kept.append(task)
        labels.append(known)
        stats.labelled += 1
    return kept, labels, stats
