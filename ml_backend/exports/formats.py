"""Export rows in the formats other labelling tools read: Label Studio JSON, Prodigy JSONL, CVAT XML, CSV.

Pure functions from :class:`ExportItem` rows to bytes, so the CLI and the HTTP route write the same files.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from ml_backend.tasktypes import TaskSchema

#: format name -> (media type, file extension)
FORMATS = {
    "ls-json": ("application/json", "json"),
    "prodigy-jsonl": ("application/x-ndjson", "jsonl"),
    "cvat-xml": ("application/xml", "xml"),
    "csv": ("text/csv", "csv"),
}
HUMAN, MODEL = "human", "model"


class ExportError(ValueError):
    """The export cannot be written as asked (e.g. CVAT XML of a text project)."""


@dataclass
class ExportItem:
    """One task to export: its LS id and data, the input the project labels (text or image URL), the labels to
    write (a human's, or the model's prediction) and where they come from, the model's score, and extra fields
    (why the task is there: reason, confidence, flips, ...)."""

    task_id: int
    data: dict[str, Any]
    input: str
    labels: list[str]
    source: str | None
    score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def check_format(fmt: str, schema: TaskSchema) -> None:
    """Raise :class:`ExportError` for an unknown format or one that cannot hold this project's data (before any
    task is read)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    if fmt == "cvat-xml" and schema.kind != "image":
        raise ExportError("CVAT XML holds image annotations; this project labels text (use ls-json, csv or prodigy)")


def ls_json(items: Sequence[ExportItem], schema: TaskSchema, model_version: str) -> bytes:
    """Label Studio tasks, importable into another LS project with the same label config: human labels become
    annotations, the model's labels predictions (pre-annotations with the version's score). The source task id
    and the export's fields go into the task's ``meta``."""
    tasks = []
    for item in items:
        task: dict[str, Any] = {"data": item.data, "meta": {"source_task": item.task_id, **item.meta}}
        if item.labels and item.source == HUMAN:
            task["annotations"] = [{"result": schema.make_result(item.labels)}]
        elif item.labels:
            prediction: dict[str, Any] = {"result": schema.make_result(item.labels), "model_version": model_version}
            if item.score is not None:
                prediction["score"] = item.score
            task["predictions"] = [prediction]
        tasks.append(task)
    return json.dumps(tasks, indent=1, ensure_ascii=False).encode()


def prodigy_jsonl(items: Sequence[ExportItem], schema: TaskSchema) -> bytes:
    """Prodigy tasks, one JSON object a line: ``text`` or ``image``; the label set as ``options`` (choice
    interface) with the chosen ones in ``accept``, a single label also as ``label``; ``answer: accept`` for
    human labels; ``meta`` holds the score and the LS task id (Prodigy shows meta under the task)."""
    lines = []
    for item in items:
        row: dict[str, Any] = {("text" if schema.kind == "text" else "image"): item.input}
        row["options"] = [{"id": label, "text": label} for label in schema.labels]
        row["accept"] = list(item.labels)
        if len(item.labels) == 1:
            row["label"] = item.labels[0]
        if item.source == HUMAN:
            row["answer"] = "accept"
        row["meta"] = {"score": item.score, "task_id": item.task_id, "source": item.source, **item.meta}
        lines.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def cvat_xml(
    items: Sequence[ExportItem], schema: TaskSchema, name: str, size_of: Callable[[ExportItem], tuple[int, int]]
) -> bytes:
    """CVAT for images 1.1 (annotation mode): one ``<image>`` per task with its size, one ``<tag>`` (CVAT's
    image-level label) per label, ``source="manual"`` for human labels and ``"auto"`` for the model's. CVAT
    labels images only, so a text project is refused."""
    check_format("cvat-xml", schema)
    root = ElementTree.Element("annotations")
    ElementTree.SubElement(root, "version").text = "1.1"
    meta = ElementTree.SubElement(root, "meta")
    task = ElementTree.SubElement(meta, "task")
    for tag, text in (("id", "0"), ("name", name), ("size", str(len(items))), ("mode", "annotation")):
        ElementTree.SubElement(task, tag).text = text
    ElementTree.SubElement(task, "overlap").text = "0"
    labels = ElementTree.SubElement(task, "labels")
    for label in schema.labels:
        node = ElementTree.SubElement(labels, "label")
        ElementTree.SubElement(node, "name").text = label
        ElementTree.SubElement(node, "attributes")
    ElementTree.SubElement(meta, "dumped").text = time.strftime("%Y-%m-%d %H:%M:%S.000000+00:00", time.gmtime())
    for i, item in enumerate(items):
        width, height = size_of(item)
        image = ElementTree.SubElement(
            root, "image", id=str(i), name=item.input.rsplit("/", 1)[-1] or str(item.task_id)
        )
        image.set("width", str(width))
        image.set("height", str(height))
        for label in item.labels:
            ElementTree.SubElement(image, "tag", label=label, source="manual" if item.source == HUMAN else "auto")
    ElementTree.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(root, encoding="utf-8")


def csv_table(items: Sequence[ExportItem]) -> bytes:
    """One row per task: id, input, labels (``|``-joined), source, score, then every extra field seen."""
    extra = list(dict.fromkeys(k for item in items for k in item.meta))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["task_id", "input", "labels", "source", "score", *extra])
    for item in items:
        writer.writerow(
            [
                item.task_id,
                item.input,
                "|".join(item.labels),
                item.source or "",
                "" if item.score is None else item.score,
                *["" if item.meta.get(k) is None else item.meta[k] for k in extra],
            ]
        )
    return buf.getvalue().encode()
