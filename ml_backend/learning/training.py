"""Training, fair evaluation and the decision on a new version: the step the worker and the simulator share.

No Redis, no HTTP and no Label Studio here: the training job turns LS annotations into labels
(``labelstudio.annotations``) and calls :func:`train_version`; the simulator calls :func:`decide_next`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_backend.core.metrics import accuracy, class_counts, macro_f1
from ml_backend.core.strategies import stable_fraction
from ml_backend.learning.insights import confidence, project_stop_signal
from ml_backend.learning.registry import (
    LABEL_PREDICTIONS,
    LabelPredictions,
    VersionInfo,
    embeddings_bytes,
    label_predictions_bytes,
)
from ml_backend.learning.service import LABEL_SEPARATOR, ProjectState, ScoringService
from ml_backend.models.classifier import Classifier
from ml_backend.tasktypes import TaskSchema, TaskType

log = logging.getLogger(__name__)


def holdout_mask(task_ids: Sequence[int], fraction: float, min_labels: int) -> np.ndarray:
    """Which tasks are held out for evaluation: stable per task id, so a task stays on its side as labels grow
    and two versions are compared on the same data."""
    if len(task_ids) < min_labels or fraction <= 0:
        return np.zeros(len(task_ids), dtype=bool)
    return np.array([stable_fraction(f"holdout:{t}") < fraction for t in task_ids], dtype=bool)


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


def _correct(clf: Classifier, embeddings: np.ndarray, items: Sequence[Any], y: np.ndarray) -> np.ndarray:
    """Per task: did the classifier get it right (multi-label: every label)?"""
    pred = clf.predict(_features(clf, embeddings, items))
    return np.all(pred == y, axis=1) if y.ndim == 2 else pred == y


def sign_test_p(worse: int, better: int) -> float:
    """One-sided exact sign test: P(at least ``worse`` of ``worse + better`` discordant tasks go against the new
    model if both models were equally good). Small = the new model is really worse."""
    n = worse + better
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n)


def promotion_decision(
    new_correct: np.ndarray, current_correct: np.ndarray, min_fair: int, alpha: float, tolerance: float
) -> tuple[bool, str, dict[str, Any]]:
    """Promote unless the new model is significantly worse on tasks *neither* model was trained on.

    A model refitted on every label scores ~100 % on its own training tasks, so comparing a fresh model with it on
    held-out tasks it trained on would reject nearly every new model. On fair tasks the two are paired: only the
    tasks where exactly one is right carry evidence (sign test). Too few fair tasks: promote, the newer model has
    seen more labels."""
    n = len(new_correct)
    new_acc = float(np.mean(new_correct)) if n else None  # None, not NaN: metrics are stored as plain JSON
    cur_acc = float(np.mean(current_correct)) if n else None
    worse = int(np.sum(current_correct & ~new_correct))
    better = int(np.sum(new_correct & ~current_correct))
    p = sign_test_p(worse, better)
    figures = {
        "fair_n": n,
        "fair_accuracy": new_acc,
        "fair_current_accuracy": cur_acc,
        "fair_new_wrong_only": worse,
        "fair_current_wrong_only": better,
        "fair_p_worse": p,
    }
    if n < min_fair:
        return True, f"{n} fair held-out tasks (< {min_fair}): promoted", figures
    if new_acc is not None and cur_acc is not None and p < alpha and new_acc < cur_acc - tolerance:
        return (
            False,
            (
                f"worse than the current version on {n} fair held-out tasks ({new_acc:.3f} vs {cur_acc:.3f}, "
                f"p={p:.3g}): kept the current version"
            ),
            figures,
        )
    return True, f"fair held-out accuracy {new_acc:.3f} vs current {cur_acc:.3f} on {n} tasks: promoted", figures


@dataclass
class LabelledData:
    """What a training step learns from: embeddings, raw inputs (for fine-tuning), targets and task ids, one row per
    labelled task."""

    embeddings: np.ndarray
    items: Sequence[Any]
    y: np.ndarray
    task_ids: Sequence[int]


def train_and_decide(
    task: TaskType,
    clf: Classifier,
    current: Classifier | None,
    data: LabelledData,
    labels: Sequence[str],
    seed: int,
    current_task_ids: Collection[int] = (),
) -> TrainOutcome:
    """Fit on the training split, evaluate on the held-out split, decide promotion fairly, refit on all labels.

    The returned classifier is trained on *every* label (the held-out split only gives the metrics and the
    decision). ``current_task_ids`` are the tasks the current version was trained on: the comparison with it uses
    only held-out tasks outside that set (see :func:`promotion_decision`). ``items`` are the raw inputs, needed when
    the config fine-tunes the encoder (``training.mode: full``).
    """
    embeddings, items, y, task_ids = data.embeddings, data.items, data.y, data.task_ids
    t = clf.config.training
    held = holdout_mask(task_ids, t.holdout_fraction, t.min_labels_for_holdout)
    metrics: dict[str, Any] = {
        "n_labels": int(len(y)),
        "n_holdout": int(held.sum()),
        "class_counts": class_counts(y, list(labels)),
        "mode": t.mode,
    }
    promote, reason = True, "no held-out data yet: promoted"
    if held.any() and task.can_train(y[~held]) is None:
        train_items = [items[i] for i in np.flatnonzero(~held)]
        clf.fit_examples(embeddings[~held], train_items, y[~held], seed=seed)
        held_idx = np.flatnonzero(held)
        held_items = [items[i] for i in held_idx]
        metrics["holdout"] = evaluate(clf, _features(clf, embeddings[held], held_items), y[held], labels)
        metrics["accuracy"], metrics["macro_f1"] = metrics["holdout"]["accuracy"], metrics["holdout"]["macro_f1"]
        if current is not None and current.trained and current.n_outputs == clf.n_outputs:
            seen = set(current_task_ids)
            fair = np.array([int(task_ids[i]) not in seen for i in held_idx], dtype=bool)
            fair_idx = held_idx[fair]
            fair_items = [items[i] for i in fair_idx]
            promote, reason, figures = promotion_decision(
                _correct(clf, embeddings[fair_idx], fair_items, y[fair_idx]),
                _correct(current, embeddings[fair_idx], fair_items, y[fair_idx]),
                t.promote_min_fair,
                t.promote_alpha,
                t.promote_tolerance,
            )
            metrics.update(figures)
            if not promote and not t.promote_if_not_worse:
                promote, reason = (
                    True,
                    reason.replace("kept the current version", "promoted anyway (promote_if_not_worse: false)"),
                )
        else:
            reason = f"held-out accuracy {metrics['accuracy']:.3f}; no trained version to compare: promoted"
    metrics["decision"] = reason
    losses = clf.fit_examples(embeddings, items, y, seed=seed)
    metrics["final_loss"] = float(losses[-1]) if losses else None
    return TrainOutcome(clf, metrics, promote, reason)


def own_labels(
    clf: Classifier,
    schema: TaskSchema,
    embeddings: np.ndarray,
    items: Sequence[Any],
    human: Sequence[Sequence[str]],
    task_ids: Sequence[int],
) -> LabelPredictions:
    """The trained version's decision and confidence on each task it was trained on, beside the human label (the
    dashboard's possible label errors). The same decisions as the pool's pre-annotations; labels in config order."""
    probs = clf.decision_proba(_features(clf, embeddings, items))
    return LabelPredictions(
        list(task_ids),
        [LABEL_SEPARATOR.join(d) for d in schema.task.decisions(schema, probs)],
        confidence(probs, schema.multilabel),
        [LABEL_SEPARATOR.join(label for label in schema.labels if label in set(h)) for h in human],
    )


# -- the worker's training step ---------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What one training job did: the version it published (None: nothing), and why."""

    version: VersionInfo | None
    promoted: bool
    trained: bool
    reason: str
    labels: int
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class Decision:
    """What a training step wants published: a trained model (``outcome``) or an exploration version (None)."""

    outcome: TrainOutcome | None
    promote: bool
    note: str
    metrics: dict[str, Any]


def decide_next(
    task: TaskType,
    clf: Classifier,
    current: Classifier | None,
    current_task_ids: Sequence[int],
    data: LabelledData,
    labels: Sequence[str],
    seed: int,
) -> Decision | None:
    """The training step shared by the worker and the simulator: train and decide, or, when no model can be
    trained yet (no label, one class), an untrained *exploration* version whose queue moves away from what is
    labelled, so the missing classes surface and the queue never freezes. None: nothing new to publish (the same
    labels as the current version and still nothing to train)."""
    y, task_ids = data.y, data.task_ids
    why_not = task.can_train(y)
    metrics: dict[str, Any] = {
        "n_labels": len(task_ids),
        "class_counts": class_counts(y, list(labels)),
        "unseen_classes": task.unseen_labels(labels, y),
    }
    if why_not:
        if not len(task_ids) or sorted(task_ids) == sorted(current_task_ids):
            return None
        note = f"exploration ({why_not}): the queue moves away from the {len(task_ids)} labelled tasks"
        return Decision(None, True, note, {**metrics, "decision": note})
    outcome = train_and_decide(task, clf, current, data, labels, seed, current_task_ids)
    return Decision(outcome, outcome.promote, outcome.reason, {**metrics, **outcome.metrics})


def train_version(
    service: ScoringService,
    state: ProjectState,
    kept: Sequence[dict[str, Any]],
    labels: Sequence[list[str]],
    *,
    ignored_labels: dict[str, int] | None = None,
    still_owner: Callable[[], bool] = lambda: True,
    progress: Callable[..., None] | None = None,
) -> TrainResult:
    """Labelled tasks (``kept``: id and data; ``labels``: their label lists) -> a published version: trained
    (promoted if not significantly worse), or, when no model can be trained yet (no label, one class), an
    untrained *exploration* version whose queue moves away from what is labelled, so the missing classes surface
    and the queue never freezes.

    ``still_owner`` is asked right before publishing (the job's project lock): a training that lost its lock
    publishes nothing. Nothing is published either when a version trained on at least as many labels appeared
    meanwhile. The labelled embeddings are stored with the version: the pool order measures novelty against them.
    """
    report = progress or (lambda *a, **k: None)
    registry, project_id = service.registry, state.record.project_id
    started = time.time()
    if state.config.stopping.stop_training:
        signal = project_stop_signal(registry, state.record, state.config)
        if signal.stop:
            reason = "stopped (stopping.stop_training): " + "; ".join(signal.reasons)
            report("not trained", len(kept), len(kept), reason=reason)
            return TrainResult(None, False, False, reason, len(kept))
    report("embedding labelled tasks", 0, len(kept))
    config = state.config
    clf = service.new_classifier(state, config)
    outcomes, ok, emb, items = service.embed_tasks(clf, state.schema, kept)
    skipped = {str(o.task_id): o.reason or "" for o in outcomes if o.reason}
    if skipped:
        log.warning("project %s: %d labelled tasks could not be used: %s", project_id, len(skipped), skipped)
    task = state.schema.task
    y = task.encode_targets(state.schema, [labels[i] for i in ok])
    task_ids = sorted(int(kept[i]["id"]) for i in ok)
    order = np.argsort([int(kept[i]["id"]) for i in ok], kind="stable")  # rows in task-id order, like task_ids
    emb, y, items = emb[order], y[order], [items[i] for i in order]
    human = [labels[ok[i]] for i in order]
    report("training", len(ok), len(kept))
    current = service.classifier(state) if state.version.trained else None
    data = LabelledData(emb, items, y, task_ids)
    decision = decide_next(
        task, clf, current, state.version.labelled_task_ids, data, state.schema.labels, config.training.seed
    )
    if decision is None:
        reason = task.can_train(y) or "nothing new to train on"
        report("not trained", len(ok), len(kept), reason=reason)
        return TrainResult(None, False, False, reason, len(ok), skipped)
    trained = decision.outcome is not None
    files = {"model.pt": decision.outcome.classifier.state_bytes()} if decision.outcome else {}
    metrics = {**decision.metrics, "skipped_tasks": len(skipped), "ignored_labels": ignored_labels or {}}
    promote, note = decision.promote, decision.note
    if not still_owner():
        reason = "the training may no longer publish (its lock or the project's config changed); nothing published"
        report("not published", len(ok), len(kept), reason=reason)
        return TrainResult(None, False, trained, reason, len(ok), skipped)
    newer = [v for v in registry.versions(project_id) if v.created_at >= started and v.n_labels >= len(task_ids)]
    if newer:
        reason = f"version {newer[-1].version} on {newer[-1].n_labels} labels appeared meanwhile; nothing published"
        report("not published", len(ok), len(kept), reason=reason)
        return TrainResult(None, False, trained, reason, len(ok), skipped)
    files["labelled.npy"] = embeddings_bytes(emb)
    if decision.outcome:
        files[LABEL_PREDICTIONS] = label_predictions_bytes(
            own_labels(decision.outcome.classifier, state.schema, emb, items, human, task_ids)
        )
    info = registry.publish_next(
        project_id,
        config,
        trained=trained,
        promote=promote,
        note=note,
        files=files,
        metrics=metrics,
        labelled_task_ids=task_ids,
    )
    report("published", len(ok), len(kept), version=info.version, promoted=promote, accuracy=metrics.get("accuracy"))
    log.info("project %s: version %s on %d labels: %s", project_id, info.version, len(task_ids), note)
    return TrainResult(info, promote, trained, note, len(ok), skipped)
