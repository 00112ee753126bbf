"""``<Choices>``: one class per task (softmax), or any subset of the labels (``choice="multiple"``, sigmoids)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml_backend.core.strategies import Strategy, normalized_uncertainty
from ml_backend.tasktypes.base import TaskSchema, TaskType


class _Choices(TaskType):
    control = "Choices"

    def labels_from_result(self, schema: TaskSchema, result: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        chosen: list[str] = []
        for region in result or []:
            if isinstance(region, dict) and region.get("from_name") == schema.from_name:
                chosen.extend((region.get("value") or {}).get("choices") or [])
        known = [c for c in chosen if c in schema.labels]
        return (known if self.multilabel else known[:1]), [c for c in chosen if c not in schema.labels]

    def make_result(self, schema: TaskSchema, chosen: list[str]) -> list[dict[str, Any]]:
        if not chosen:
            return []
        return [
            {"from_name": schema.from_name, "to_name": schema.to_name, "type": "choices", "value": {"choices": chosen}}
        ]

    def uncertainty(self, probs: np.ndarray, strategy: Strategy) -> np.ndarray:
        return normalized_uncertainty(probs, strategy, multilabel=self.multilabel)


class SingleChoice(_Choices):
    name = "choices"
    multilabel = False
    description = "one <Choices> (single)"

    def matches(self, control_tag: str, attrs: dict[str, Any]) -> bool:
        return control_tag == self.control and attrs.get("choice") != "multiple"

    def encode_targets(self, schema: TaskSchema, labels: list[list[str]]) -> np.ndarray:
        index = {name: i for i, name in enumerate(schema.labels)}
        return np.array([index[names[0]] for names in labels], dtype=np.int64)

    def can_train(self, y: np.ndarray) -> str | None:
        if len(y) == 0:
            return "no labelled tasks yet"
        if len(np.unique(y)) < 2:
            return f"all {len(y)} labels are the same class; need at least 2 classes"
        return None

    def decisions(self, schema: TaskSchema, probs: np.ndarray) -> list[list[str]]:
        return [[schema.labels[int(row.argmax())]] for row in probs]

    def balance_classes(self, probs: np.ndarray) -> np.ndarray:
        return probs.argmax(axis=1)


class MultiChoice(_Choices):
    name = "multichoices"
    multilabel = True
    description = 'one <Choices choice="multiple"> (multi-label)'

    def matches(self, control_tag: str, attrs: dict[str, Any]) -> bool:
        return control_tag == self.control and attrs.get("choice") == "multiple"

    def encode_targets(self, schema: TaskSchema, labels: list[list[str]]) -> np.ndarray:
        index = {name: i for i, name in enumerate(schema.labels)}
        y = np.zeros((len(labels), len(schema.labels)), dtype=np.int64)
        for row, names in enumerate(labels):
            y[row, [index[n] for n in names]] = 1
        return y

    def can_train(self, y: np.ndarray) -> str | None:
        return "no labelled tasks yet" if len(y) == 0 else None

    def decisions(self, schema: TaskSchema, probs: np.ndarray) -> list[list[str]]:
        return [[schema.labels[c] for c in np.flatnonzero(row >= 0.5)] for row in probs]
