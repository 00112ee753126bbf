"""Evaluation metrics for a model version (numpy only, so the worker and the simulator share them)."""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact matches (for multi-label rows: every label right)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    if y_true.ndim == 2:
        return float(np.mean(np.all(y_true == y_pred, axis=1)))
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in either array.

    Accepts class indices (n,) or multi-label indicator matrices (n, L).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    if y_true.ndim == 1:
        y_true = np.eye(n_classes, dtype=bool)[y_true]
        y_pred = np.eye(n_classes, dtype=bool)[y_pred]
    y_true, y_pred = y_true.astype(bool), y_pred.astype(bool)
    tp = (y_true & y_pred).sum(axis=0)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    present = (tp + fp + fn) > 0
    if not present.any():
        return 1.0
    f1 = 2 * tp / np.clip(2 * tp + fp + fn, 1, None)
    return float(f1[present].mean())


def class_counts(y: np.ndarray, labels: list[str]) -> dict[str, int]:
    """How many examples carry each label (multi-label rows count once per label)."""
    y = np.asarray(y)
    counts = y.sum(axis=0) if y.ndim == 2 else np.bincount(y.astype(int), minlength=len(labels))
    return {label: int(counts[i]) for i, label in enumerate(labels)}
