"""One version's view of the pool: probabilities -> uncertainty -> the batch-aware order and LS scores.

The glue between a classifier (torch) and the pure selection core, shared by the worker's pool scoring and the
simulator, so that the simulator measures the very order Label Studio serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml_backend.core.badge import gradient_embedding
from ml_backend.core.selection import ClassGroups, Ranking, SelectionParams, rank_pool
from ml_backend.core.strategies import get_strategy
from ml_backend.models.classifier import Classifier
from ml_backend.models.config import AcquisitionConfig
from ml_backend.tasktypes import TaskType


@dataclass
class PoolView:
    """The ranking of a pool and, with a trained model, the MC probabilities (n, T, C) behind it."""

    ranking: Ranking
    probs: np.ndarray | None


def selection_params(acq: AcquisitionConfig, seed: int) -> SelectionParams:
    return SelectionParams(
        front_size=acq.front_size,
        weights=dict(acq.weights),
        neighbours=acq.cold_start_neighbours,
        explore_every=acq.explore_every,
        power=acq.power,
        balance=acq.balance,
        seed=seed,
    )


def mc_probabilities(clf: Classifier, embeddings: np.ndarray, seed: int, items: Sequence | None = None) -> np.ndarray:
    """The version's MC-dropout probabilities (fixed masks from the version seed: same task, same numbers)."""
    return clf.predict_proba(embeddings, mc=clf.config.acquisition.mc_samples, items=items, seed=seed)


def uncertainty_of(task: TaskType, clf: Classifier, probs: np.ndarray) -> np.ndarray:
    """The version's acquisition function, reduced to one value per task the way the task type says."""
    return task.uncertainty(probs, get_strategy(clf.config.acquisition.strategy))


def rank_version(
    task: TaskType,
    clf: Classifier,
    embeddings: np.ndarray,
    keys: Sequence[int | str],
    seed: int,
    *,
    labelled: np.ndarray | None,
    reference: np.ndarray | None,
    explore: bool,
    probs: np.ndarray | None = None,
    decided: np.ndarray | None = None,
    labelled_counts: np.ndarray | None = None,
) -> PoolView:
    """Order the unlabelled pool for one version: uncertainty-led when its head is trained, coverage (cold start,
    exploration) when not. ``probs`` (MC) and ``decided`` (deterministic) may be passed when already computed
    (batched scoring of a large pool). ``labelled_counts``: labels per class of the version's training set, for
    ``acquisition.balance`` (projects with at least ``balance_min_classes`` classes)."""
    if clf.trained and probs is None:
        probs = mc_probabilities(clf, embeddings, seed)
    uncertainty = uncertainty_of(task, clf, probs) if clf.trained else None
    groups = None
    acq = clf.config.acquisition
    if clf.trained and acq.balance and clf.n_outputs >= acq.balance_min_classes:
        decided = clf.decision_proba(embeddings) if decided is None else decided
        predicted = task.balance_classes(decided)
        if predicted is not None:
            counts = np.zeros(decided.shape[1]) if labelled_counts is None else np.asarray(labelled_counts)
            groups = ClassGroups(predicted, counts)
    gradients = None
    if clf.trained and clf.config.acquisition.front == "badge":
        gradients = gradient_embedding(probs, clf.last_layer_inputs(embeddings), clf.multilabel)
    ranking = rank_pool(
        embeddings,
        keys,
        selection_params(clf.config.acquisition, seed),
        uncertainty=uncertainty,
        labelled=labelled,
        reference=reference,
        explore=explore and clf.trained,
        gradients=gradients,
        groups=groups,
    )
    return PoolView(ranking, probs if clf.trained else None)
