"""Turning LS annotations into training data, and training + evaluating + deciding on a new version.

No Redis and no HTTP here: the training job feeds it tasks and embeddings, and the simulator can reuse the
same split / fit / evaluate steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ml_backend.core.metrics import accuracy, class_counts, macro_f1
from ml_backend.core.strategies import stable_fraction
from ml_backend.labelconfig import TaskSchema
from ml_backend.models.classifier import Classifier

log = logging.getLogger(__name__)


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


def labelled_examples(schema: TaskSchema, tasks: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[str]], LabelStats]:
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
        labels.append(known if schema.multilabel else known[:1])
        stats.labelled += 1
    return kept, labels, stats


def encode_targets(schema: TaskSchema, labels: Sequence[list[str]]) -> np.ndarray:
    """Class indices (n,) for single-label, a 0/1 matrix (n, L) for multi-label."""
    index = {name: i for i, name in enumerate(schema.labels)}
    if schema.multilabel:
        y = np.zeros((len(labels), len(schema.labels)), dtype=np.int64)
        for row, names in enumerate(labels):
            y[row, [index[n] for n in names]] = 1
        return y
    return np.array([index[names[0]] for names in labels], dtype=np.int64)


def holdout_mask(task_ids: Sequence[int], fraction: float, min_labels: int) -> np.ndarray:
    """Which tasks are held out for evaluation: stable per task id, so a task stays on its side as labels grow
    and two versions are compared on the same data."""
    if len(task_ids) < min_labels or fraction <= 0:
        return np.zeros(len(task_ids), dtype=bool)
    return np.array([stable_fraction(f"holdout:{t}") < fraction for t in task_ids], dtype=bool)


def can_train(multilabel: bool, y: np.ndarray) -> str | None:
    """Why this label set cannot train a classifier yet, or None if it can."""
    if len(y) == 0:
        return "no labelled tasks yet"
    if not multilabel and len(np.unique(y)) < 2:
        return f"all {len(y)} labels are the same class; need at least 2 classes"
    return None


def evaluate(clf: Classifier, embeddings: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    pred = clf.predict(embeddings)
    return {
        "accuracy": accuracy(y, pred),
        "macro_f1": macro_f1(y, pred, len(labels)),
        "n": int(len(y)),
        "class_counts": class_counts(y, list(labels)),
    }


@dataclass
class TrainOutcome:
    classifier: Classifier
    metrics: dict[str, Any]
    promote: bool
    reason: str


def _features(clf: Classifier, embeddings: np.ndarray, items: Sequence[Any]) -> np.ndarray:
    """What the classifier's head reads: the shared embeddings, or its own fine-tuned encoder's."""
    return clf.embed(items) if clf.finetuned else embeddings


def train_and_decide(clf: Classifier, current: Classifier | None, embeddings: np.ndarray, items: Sequence[Any],
                     y: np.ndarray, task_ids: Sequence[int], labels: Sequence[str], seed: int) -> TrainOutcome:
    """Fit on the training split, compare with the current version on the held-out split, refit on all labels.

    The returned classifier is trained on *every* label (the held-out split only decides promotion and gives the
    metrics); ``promote`` is False when the new model is worse than the current one on the same held-out tasks.
    ``items`` are the raw inputs, needed when the config fine-tunes the encoder (``training.mode: full``).
    """
    t = clf.config.training
    held = holdout_mask(task_ids, t.holdout_fraction, t.min_labels_for_holdout)
    metrics: dict[str, Any] = {"n_labels": int(len(y)), "n_holdout": int(held.sum()),
                               "class_counts": class_counts(y, list(labels)), "mode": t.mode}
    promote, reason = True, "no held-out data yet: promoted"
    if held.any() and can_train(clf.multilabel, y[~held]) is None:
        train_items = [items[i] for i in np.flatnonzero(~held)]
        held_items = [items[i] for i in np.flatnonzero(held)]
        clf.fit_examples(embeddings[~held], train_items, y[~held], seed=seed)
        metrics["holdout"] = evaluate(clf, _features(clf, embeddings[held], held_items), y[held], labels)
        metrics["accuracy"], metrics["macro_f1"] = metrics["holdout"]["accuracy"], metrics["holdout"]["macro_f1"]
        if current is not None and current.trained and current.n_outputs == clf.n_outputs:
            cur = evaluate(current, _features(current, embeddings[held], held_items), y[held], labels)
            metrics["current_holdout_accuracy"] = cur["accuracy"]
            worse = metrics["accuracy"] < cur["accuracy"] - t.promote_tolerance
            if worse and t.promote_if_not_worse:
                promote = False
                reason = f"held-out accuracy {metrics['accuracy']:.3f} < current {cur['accuracy']:.3f}: kept the current version"
            else:
                reason = f"held-out accuracy {metrics['accuracy']:.3f} vs current {cur['accuracy']:.3f}: promoted"
        else:
            reason = f"held-out accuracy {metrics['accuracy']:.3f}; no trained version to compare: promoted"
    losses = clf.fit_examples(embeddings, items, y, seed=seed)
    metrics["final_loss"] = float(losses[-1]) if losses else None
    return TrainOutcome(clf, metrics, promote, reason)
