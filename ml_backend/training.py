"""Turning LS annotations into training data, and training + evaluating + deciding on a new version.

No Redis and no HTTP here: the training job feeds it tasks and embeddings, and the simulator can reuse the
same split / fit / evaluate steps.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Sequence

import numpy as np

from ml_backend.core.metrics import accuracy, class_counts, macro_f1
from ml_backend.core.strategies import stable_fraction
from ml_backend.labelconfig import TaskSchema
from ml_backend.models.classifier import Classifier
from ml_backend.registry import Registry, VersionInfo, embeddings_bytes
from ml_backend.service import ProjectState, ScoringService

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


def promotion_decision(new_correct: np.ndarray, current_correct: np.ndarray, min_fair: int, alpha: float,
                       tolerance: float) -> tuple[bool, str, dict[str, Any]]:
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
    figures = {"fair_n": n, "fair_accuracy": new_acc, "fair_current_accuracy": cur_acc, "fair_new_wrong_only": worse,
               "fair_current_wrong_only": better, "fair_p_worse": p}
    if n < min_fair:
        return True, f"{n} fair held-out tasks (< {min_fair}): promoted", figures
    if new_acc is not None and cur_acc is not None and p < alpha and new_acc < cur_acc - tolerance:
        return False, (f"worse than the current version on {n} fair held-out tasks ({new_acc:.3f} vs {cur_acc:.3f}, "
                       f"p={p:.3g}): kept the current version"), figures
    return True, f"fair held-out accuracy {new_acc:.3f} vs current {cur_acc:.3f} on {n} tasks: promoted", figures


def train_and_decide(clf: Classifier, current: Classifier | None, embeddings: np.ndarray, items: Sequence[Any],
                     y: np.ndarray, task_ids: Sequence[int], labels: Sequence[str], seed: int,
                     current_task_ids: Collection[int] = ()) -> TrainOutcome:
    """Fit on the training split, evaluate on the held-out split, decide promotion fairly, refit on all labels.

    The returned classifier is trained on *every* label (the held-out split only gives the metrics and the
    decision). ``current_task_ids`` are the tasks the current version was trained on: the comparison with it uses
    only held-out tasks outside that set (see :func:`promotion_decision`). ``items`` are the raw inputs, needed when
    the config fine-tunes the encoder (``training.mode: full``).
    """
    t = clf.config.training
    held = holdout_mask(task_ids, t.holdout_fraction, t.min_labels_for_holdout)
    metrics: dict[str, Any] = {"n_labels": int(len(y)), "n_holdout": int(held.sum()),
                               "class_counts": class_counts(y, list(labels)), "mode": t.mode}
    promote, reason = True, "no held-out data yet: promoted"
    if held.any() and can_train(clf.multilabel, y[~held]) is None:
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
                t.promote_min_fair, t.promote_alpha, t.promote_tolerance)
            metrics.update(figures)
            if not promote and not t.promote_if_not_worse:
                promote, reason = True, reason.replace("kept the current version", "promoted anyway (promote_if_not_worse: false)")
        else:
            reason = f"held-out accuracy {metrics['accuracy']:.3f}; no trained version to compare: promoted"
    metrics["decision"] = reason
    losses = clf.fit_examples(embeddings, items, y, seed=seed)
    metrics["final_loss"] = float(losses[-1]) if losses else None
    return TrainOutcome(clf, metrics, promote, reason)


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


def unseen_classes(labels: Sequence[str], y: np.ndarray) -> list[str]:
    """Classes of the label config with no labelled example yet (the model cannot predict them)."""
    counts = class_counts(y, list(labels)) if len(y) else {label: 0 for label in labels}
    return [label for label, n in counts.items() if n == 0]


@dataclass
class Decision:
    """What a training step wants published: a trained model (``outcome``) or an exploration version (None)."""

    outcome: TrainOutcome | None
    promote: bool
    note: str
    metrics: dict[str, Any]


def decide_next(clf: Classifier, current: Classifier | None, current_task_ids: Sequence[int], embeddings: np.ndarray,
                items: Sequence[Any], y: np.ndarray, task_ids: Sequence[int], labels: Sequence[str],
                seed: int) -> Decision | None:
    """The training step shared by the worker and the simulator: train and decide, or, when no model can be
    trained yet (no label, one class), an untrained *exploration* version whose queue moves away from what is
    labelled, so the missing classes surface and the queue never freezes. None: nothing new to publish (the same
    labels as the current version and still nothing to train)."""
    why_not = can_train(clf.multilabel, y)
    metrics: dict[str, Any] = {"n_labels": len(task_ids), "class_counts": class_counts(y, list(labels)),
                               "unseen_classes": unseen_classes(labels, y)}
    if why_not:
        if not len(task_ids) or sorted(task_ids) == sorted(current_task_ids):
            return None
        note = f"exploration ({why_not}): the queue moves away from the {len(task_ids)} labelled tasks"
        return Decision(None, True, note, {**metrics, "decision": note})
    outcome = train_and_decide(clf, current, embeddings, items, y, task_ids, labels, seed, current_task_ids)
    return Decision(outcome, outcome.promote, outcome.reason, {**metrics, **outcome.metrics})


def train_version(service: ScoringService, state: ProjectState, tasks: Sequence[dict[str, Any]], *,
                  still_owner: Callable[[], bool] = lambda: True,
                  progress: Callable[..., None] | None = None) -> TrainResult:
    """Labelled LS tasks -> a published version: trained (promoted if not significantly worse), or, when no model
    can be trained yet (no label, one class), an untrained *exploration* version whose queue moves away from what
    is labelled, so the missing classes surface and the queue never freezes.

    ``still_owner`` is asked right before publishing (the job's project lock): a training that lost its lock
    publishes nothing. Nothing is published either when a version trained on at least as many labels appeared
    meanwhile. The labelled embeddings are stored with the version: the pool order measures novelty against them.
    """
    report = progress or (lambda *a, **k: None)
    registry, project_id = service.registry, state.record.project_id
    started = time.time()
    kept, labels, stats = labelled_examples(state.schema, tasks)
    if stats.unknown_labels:
        log.warning("project %s: ignored labels not in the config: %s", project_id, stats.unknown_labels)
    report("embedding labelled tasks", 0, len(kept), skipped_cancelled=stats.cancelled_only)
    config = state.config
    clf = service.new_classifier(state, config)
    outcomes, ok, emb, items = service.embed_tasks(clf, state.schema, kept)
    skipped = {str(o.task_id): o.reason or "" for o in outcomes if o.reason}
    if skipped:
        log.warning("project %s: %d labelled tasks could not be used: %s", project_id, len(skipped), skipped)
    y = encode_targets(state.schema, [labels[i] for i in ok])
    task_ids = sorted(int(kept[i]["id"]) for i in ok)
    order = np.argsort([int(kept[i]["id"]) for i in ok], kind="stable")  # rows in task-id order, like task_ids
    emb, y, items = emb[order], y[order], [items[i] for i in order]
    report("training", len(ok), len(kept))
    current = service.classifier(state) if state.version.trained else None
    decision = decide_next(clf, current, state.version.labelled_task_ids, emb, items, y, task_ids,
                           state.schema.labels, config.training.seed)
    if decision is None:
        reason = can_train(state.schema.multilabel, y) or "nothing new to train on"
        report("not trained", len(ok), len(kept), reason=reason)
        return TrainResult(None, False, False, reason, len(ok), skipped)
    trained = decision.outcome is not None
    files = {"model.pt": decision.outcome.classifier.state_bytes()} if decision.outcome else {}
    metrics = {**decision.metrics, "skipped_tasks": len(skipped), "ignored_labels": stats.unknown_labels}
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
    number = registry.next_number(project_id)
    info = VersionInfo(
        version=Registry.version_name(config.name, number), number=number, created_at=time.time(),
        model_config=config.model_dump(), seed=config.training.seed, trained=trained, promoted=promote,
        metrics=metrics, n_labels=len(task_ids), labelled_task_ids=task_ids, note=note,
    )
    files["labelled.npy"] = embeddings_bytes(emb)
    registry.publish(project_id, info, files, promote=promote)
    report("published", len(ok), len(kept), version=info.version, promoted=promote, accuracy=metrics.get("accuracy"))
    log.info("project %s: version %s on %d labels: %s", project_id, info.version, len(task_ids), note)
    return TrainResult(info, promote, trained, note, len(ok), skipped)
