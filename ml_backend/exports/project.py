"""Which tasks of a project to export (the queue's next tasks, the labelled ones, the hard examples) and their
rows: the selection comes from the project's versions (``learning.insights``), the task data from Label Studio.

The one path behind ``ml-backend export`` and ``GET /projects/{id}/export``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ml_backend.exports.formats import (
    FORMATS,
    HUMAN,
    MODEL,
    ExportError,
    ExportItem,
    check_format,
    csv_table,
    cvat_xml,
    ls_json,
    prodigy_jsonl,
)
from ml_backend.labelstudio.annotations import labelled_examples
from ml_backend.labelstudio.client import LabelStudioClient
from ml_backend.learning.insights import next_tasks, project_report
from ml_backend.learning.registry import Registry
from ml_backend.learning.service import LABEL_SEPARATOR, ProjectState

WHAT = ("next", "labelled", "hard")


@dataclass
class Export:
    content: bytes
    media_type: str
    filename: str
    count: int


def _labels(joined: str | None) -> list[str]:
    """A stored ``|``-joined label set as a list ("" or None: no label, an untrained version's)."""
    return joined.split(LABEL_SEPARATOR) if joined else []


def _input(state: ProjectState, data: dict[str, Any]) -> str:
    """The text or image URL a task is labelled on; "" when its data lacks it (the row still carries the data)."""
    try:
        return state.schema.task_input(data)
    except ValueError:
        return ""


def _rows(
    state: ProjectState, ls: LabelStudioClient, picks: list[tuple[int, list[str], str | None, float | None, dict]]
) -> list[ExportItem]:
    """Export rows for (task id, labels, source, score, extra fields), with each task's data read from LS."""
    data = {t["id"]: t.get("data") or {} for t in ls.tasks_by_id(state.record.project_id, [p[0] for p in picks])}
    return [
        ExportItem(task, data[task], _input(state, data[task]), labels, source, score, meta)
        for task, labels, source, score, meta in picks
        if task in data
    ]


def collect(
    what: str, state: ProjectState, registry: Registry, ls: LabelStudioClient, limit: int | None
) -> list[ExportItem]:
    """The rows of one export kind:

    - ``next``: the queue's next tasks with the model's label (a pre-annotation), score and reason;
    - ``labelled``: every labelled task with its human label, and what the current version predicts for it;
    - ``hard``: possible label errors (human label, the model's confident other label), then the tasks whose
      predicted label keeps flipping between versions (the model's current label).
    """
    project_id, current = state.record.project_id, state.version
    if what == "next":
        pool = registry.pool_predictions(project_id, current.version)
        picks = [
            (t["task"], _labels(t["predicted"]), MODEL, t["score"], {"rank": t["rank"], "reason": t["reason"]})
            for t in next_tasks(project_id, pool, current, state.config, None, limit)
        ]
        return _rows(state, ls, picks)
    if what == "labelled":
        kept, labels, _ = labelled_examples(state.schema, list(ls.iter_tasks(project_id, labelled_only=True)))
        own = registry.label_predictions(project_id, current.version) if current.trained else None
        model = {t: (p, float(c)) for t, p, c in zip(own.task_ids, own.predicted, own.confidence)} if own else {}
        items = []
        for task, names in list(zip(kept, labels))[:limit]:
            data = task.get("data") or {}
            predicted, confidence = model.get(task["id"], (None, None))
            meta = {"model_label": predicted, "model_confidence": confidence}
            items.append(ExportItem(task["id"], data, _input(state, data), names, HUMAN, meta=meta))
        return items
    if what == "hard":
        hard = project_report(registry, state.record, state.config, current, None, n_hard=limit or 100)["hard_examples"]
        picks = [
            (
                d["task"],
                _labels(d["human"]),
                HUMAN,
                None,
                {"why": "possible label error", "model_label": d["predicted"], "model_confidence": d["confidence"]},
            )
            for d in hard["disagreements"]
        ]
        seen = {p[0] for p in picks}
        flipping = [f for f in hard["flips"] if f["task"] not in seen]
        picks += [
            (f["task"], _labels(f["labels"][-1]), MODEL, None, {"why": "predictions flip", "flips": f["flips"]})
            for f in flipping
        ]
        return _rows(state, ls, picks[:limit])
    raise ExportError(f"unknown export {what!r}; choose from {list(WHAT)}")


def image_size(fetch: Callable[[str, int | None], Path]) -> Callable[[ExportItem], tuple[int, int]]:
    """Width and height of a task's image (CVAT needs them), read from the file header after an LS download."""

    def size(item: ExportItem) -> tuple[int, int]:
        with Image.open(fetch(item.input, item.task_id)) as img:
            return img.size

    return size


def export_project(
    what: str,
    fmt: str,
    state: ProjectState,
    registry: Registry,
    ls: LabelStudioClient,
    limit: int | None = None,
) -> Export:
    """One export file of the project (see :func:`collect` and ``formats``)."""
    check_format(fmt, state.schema)
    items = collect(what, state, registry, ls, limit)
    name = f"project-{state.record.project_id}-{what}"
    if fmt == "ls-json":
        content = ls_json(items, state.schema, state.version.version)
    elif fmt == "prodigy-jsonl":
        content = prodigy_jsonl(items, state.schema)
    elif fmt == "cvat-xml":
        content = cvat_xml(items, state.schema, name, image_size(ls.fetch_file))
    else:
        content = csv_table(items)
    media_type, extension = FORMATS[fmt]
    return Export(content, media_type, f"{name}.{extension}", len(items))
