"""The task-type seam: what a kind of labelling (choices, spans, boxes, ...) must say about itself.

Everything the rest of the backend does not know about a task type goes through :class:`TaskType`: which label
config controls it learns, how an annotation's result becomes training targets, what the head predicts (one
softmax over classes, or one sigmoid per output), how model outputs become an LS result, and how per-element
uncertainty (per class, per token, per box) becomes one score per task. A new task type is a new file here plus
one line in ``tasktypes/__init__.py``; nothing else is if-else'd on it. Pure Python and numpy.
"""

from __future__ import annotations

import html
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ml_backend.core.metrics import class_counts
from ml_backend.core.strategies import Strategy

_TAG_RE = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class TaskSchema:
    """What a project labels, as parsed from its label config: the task type, the control (``from_name``), the
    object it labels (``to_name``, a text or an image read from task data ``$value_key``) and the label set."""

    task_type: str
    kind: Literal["text", "image"]
    from_name: str
    to_name: str
    object_tag: str
    value_key: str
    labels: tuple[str, ...]

    @property
    def task(self) -> TaskType:
        from ml_backend.tasktypes import task_type  # the registry imports the implementations, which import us

        return task_type(self.task_type)

    @property
    def multilabel(self) -> bool:
        return self.task.multilabel

    def task_input(self, data: dict[str, Any]) -> str:
        """The raw input of a task: the text itself, or the image URL; raises ValueError if unusable."""
        if not isinstance(data, dict) or self.value_key not in data:
            raise ValueError(
                f"task data has no {self.value_key!r} key (the config's {self.object_tag} reads ${self.value_key})"
            )
        value = data[self.value_key]
        if not isinstance(value, str):
            raise ValueError(f"task data {self.value_key!r} must be a string, got {type(value).__name__}")
        if self.object_tag == "HyperText":
            value = html.unescape(_TAG_RE.sub(" ", value))
        value = value.strip()
        if not value:
            raise ValueError(f"task data {self.value_key!r} is empty")
        return value

    def labels_from_result(self, result: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        return self.task.labels_from_result(self, result)

    def make_result(self, chosen: list[str]) -> list[dict[str, Any]]:
        return self.task.make_result(self, chosen)


class TaskType(ABC):
    """One kind of labelling. Subclasses are stateless; one instance of each is registered."""

    #: stored in the project's schema and versions
    name: str
    #: the LS control tag it learns (``Choices``, ``Labels``, ``RectangleLabels``, ...)
    control: str
    #: one sigmoid per output (True) or one softmax over the outputs (False)
    multilabel: bool
    #: what ``SUPPORTED`` says about it in error messages
    description: str

    @abstractmethod
    def matches(self, control_tag: str, attrs: dict[str, Any]) -> bool:
        """Whether this task type learns an LS control with this tag and attributes."""

    def n_outputs(self, schema: TaskSchema) -> int:
        return len(schema.labels)

    @abstractmethod
    def labels_from_result(self, schema: TaskSchema, result: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """(known labels, unknown labels) of our control in an annotation's ``result``."""

    @abstractmethod
    def encode_targets(self, schema: TaskSchema, labels: list[list[str]]) -> np.ndarray:
        """Training targets for the head, one row per labelled task."""

    @abstractmethod
    def can_train(self, y: np.ndarray) -> str | None:
        """Why these targets cannot train a model yet (e.g. one class only), or None."""

    def unseen_labels(self, labels: Sequence[str], y: np.ndarray) -> list[str]:
        """Labels of the config with no example yet: the queue explores until they appear."""
        counts = class_counts(y, list(labels)) if len(y) else dict.fromkeys(labels, 0)
        return [label for label, n in counts.items() if n == 0]

    @abstractmethod
    def decisions(self, schema: TaskSchema, probs: np.ndarray) -> list[list[str]]:
        """The pre-annotation per task from the version's deterministic probabilities (n, outputs): the decision
        the promotion test measured, not the mean of the MC samples (those are for uncertainty only)."""

    def balance_classes(self, probs: np.ndarray) -> np.ndarray | None:
        """The one class per task that class balancing (``acquisition.balance``) spreads the front's picks over,
        from the deterministic probabilities (n, outputs); None: this task type has no such class (balancing is
        off)."""
        return None

    @abstractmethod
    def make_result(self, schema: TaskSchema, chosen: list[str]) -> list[dict[str, Any]]:
        """LS prediction ``result`` for a decision (empty list = no pre-annotation)."""

    @abstractmethod
    def uncertainty(self, probs: np.ndarray, strategy: Strategy) -> np.ndarray:
        """One normalised uncertainty in [0, 1] per task from MC probabilities (n, T, outputs)."""
