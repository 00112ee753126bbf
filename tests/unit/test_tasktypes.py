"""The task-type seam: each registered type answers for its control, its targets, decisions and uncertainty."""

import numpy as np
import pytest

from ml_backend.core.strategies import get_strategy
from ml_backend.tasktypes import SINGLE_CHOICE, TASK_TYPES, TaskSchema, for_control, task_type


def _schema(name: str) -> TaskSchema:
    return TaskSchema(
        task_type=name,
        kind="text",
        from_name="c",
        to_name="t",
        object_tag="Text",
        value_key="text",
        labels=("a", "b", "c"),
    )


def test_registry_matches_controls_and_names():
    assert {t.name for t in TASK_TYPES} == {"choices", "multichoices"}
    assert for_control("Choices", {}) is SINGLE_CHOICE
    assert for_control("Choices", {"choice": "multiple"}).multilabel
    assert for_control("Labels", {}) is None and for_control("RectangleLabels", {}) is None
    assert task_type("multichoices") is for_control("Choices", {"choice": "multiple"})
    with pytest.raises(ValueError, match="unknown task type"):
        task_type("spans")


def test_single_choice_end_to_end():
    schema = _schema("choices")
    task = schema.task
    result = [{"from_name": "c", "value": {"choices": ["b", "zzz"]}}, {"from_name": "other", "value": {}}]
    assert task.labels_from_result(schema, result) == (["b"], ["zzz"])
    assert task.encode_targets(schema, [["b"], ["a"]]).tolist() == [1, 0]
    assert task.unseen_labels(schema.labels, np.array([1, 0])) == ["c"]
    probs = np.array([[[0.1, 0.7, 0.2]] * 3, [[0.4, 0.3, 0.3]] * 3])  # (n=2, T=3, C=3)
    assert task.decisions(schema, probs[:, 0]) == [["b"], ["a"]]  # decisions read the deterministic (n, C)
    u = task.uncertainty(probs, get_strategy("margin"))
    assert u.shape == (2,) and u[1] > u[0]  # the close call is the more uncertain
    assert schema.make_result(["b"])[0]["value"] == {"choices": ["b"]} and schema.make_result([]) == []


def test_multi_choice_end_to_end():
    schema = _schema("multichoices")
    task = schema.task
    assert schema.multilabel and task.encode_targets(schema, [["a", "c"], []]).tolist() == [[1, 0, 1], [0, 0, 0]]
    assert task.can_train(np.zeros((1, 3))) is None and task.can_train(np.zeros((0, 3))) == "no labelled tasks yet"
    assert task.decisions(schema, np.array([[0.9, 0.2, 0.6]])) == [["a", "c"]]
    assert task.labels_from_result(schema, [{"from_name": "c", "value": {"choices": ["a", "c"]}}]) == (["a", "c"], [])
    assert task.unseen_labels(schema.labels, np.array([[1, 0, 1]])) == ["b"]
