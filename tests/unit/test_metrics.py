import numpy as np
import pytest

from ml_backend.core.metrics import accuracy, class_counts, macro_f1


def test_accuracy_and_macro_f1_single_label():
    y, p = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    assert accuracy(y, p) == pytest.approx(0.6)
    # F1 per class: c0 = 2*1/(2+1+1)=0.5, c1 = 2*2/(4+1+0)=0.8, c2 = 0
    assert macro_f1(y, p, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_multilabel_metrics_and_counts():
    y = np.array([[1, 0], [1, 1], [0, 1]])
    p = np.array([[1, 0], [1, 0], [0, 1]])
    assert accuracy(y, p) == pytest.approx(2 / 3)
    assert class_counts(y, ["a", "b"]) == {"a": 2, "b": 2}
    assert class_counts(np.array([0, 0, 1]), ["x", "y", "z"]) == {"x": 2, "y": 1, "z": 0}
