"""What an admin needs to judge a project, read from its versions on disk: the learning curve, the label budget,
the stopping signal, the next tasks of the queue and the hard examples.

The one source of the status JSON, the dashboard (a view of that JSON) and the exports. No HTTP, no Label Studio:
task links are built from the LS base URL the caller passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ml_backend.core import stopping
from ml_backend.core.selection import COLD_START, EXPLORE, LEARN, REST
from ml_backend.learning.registry import PoolPredictions, ProjectRecord, Registry, VersionInfo
from ml_backend.models.config import ModelConfig, StoppingConfig

#: versions whose pool predictions are read for kappa and flips: enough for the window, bounded for large pools
_HISTORY = 10


def confidence(probs: np.ndarray, multilabel: bool) -> np.ndarray:
    """How sure the version's decision is, per task, from its deterministic probabilities (n, outputs): the top
    class's probability, or for multi-label the least sure label's ``max(p, 1 - p)`` (the decision is only as sure
    as its weakest label)."""
    return np.maximum(probs, 1.0 - probs).min(axis=1) if multilabel else probs.max(axis=1)


def task_url(ls_url: str | None, project_id: int, task_id: int) -> str | None:
    """The task in LS's Data Manager (opens the labelling view), or None without an LS URL."""
    return f"{ls_url.rstrip('/')}/projects/{project_id}/data?task={task_id}" if ls_url else None


def effective_budget(record: ProjectRecord, config: ModelConfig) -> int | None:
    """The label budget of a project: set in LS (extra params) first, else the model config's."""
    return record.label_budget if record.label_budget is not None else config.stopping.label_budget


def labels_spent(history: Sequence[VersionInfo]) -> int:
    """Labels the project has spent as far as the backend knows: those of its latest training."""
    return max((v.n_labels for v in history), default=0)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _served(registry: Registry, project_id: int, history: Sequence[VersionInfo]) -> list[PoolPredictions]:
    """The pool predictions of the last trained versions that scored the pool (the versions LS served), oldest
    first."""
    out: list[PoolPredictions] = []
    for v in reversed(history):
        if not v.trained:
            continue
        pool = registry.pool_predictions(project_id, v.version)
        if pool is not None and any(pool.predicted):
            out.append(pool)
        if len(out) >= _HISTORY:
            break
    return out[::-1]


@dataclass
class StopSignal:
    stop: bool
    reasons: list[str]
    criteria: list[dict[str, Any]]
    kappas: list[float | None]


def stop_signal(
    served: Sequence[PoolPredictions],
    history: Sequence[VersionInfo],
    config: StoppingConfig,
    budget: int | None,
) -> StopSignal:
    """Every criterion of ``core.stopping`` on the project's history; ``stop`` when a decisive one fired."""
    kappas = stopping.consecutive_kappas([dict(zip(p.task_ids, p.predicted)) for p in served])
    accuracies = [_finite(v.metrics.get("accuracy")) for v in history if v.trained]
    criteria = [
        stopping.kappa_average(kappas, config.kappa, config.window),
        stopping.pool_uncertainty(served[-1].uncertainty if served else None, config.uncertainty),
        stopping.accuracy_plateau(accuracies, config.window, config.plateau_tolerance),
        stopping.label_budget(labels_spent(history), budget),
    ]
    stop, reasons = stopping.should_stop(criteria, config.decisive)
    return StopSignal(
        stop,
        reasons,
        [{**asdict(c), "decisive": c.name in config.decisive} for c in criteria],
        kappas,
    )


def project_stop_signal(registry: Registry, record: ProjectRecord, config: ModelConfig) -> StopSignal:
    """The stopping signal of a project from its registry (what the training job asks before training)."""
    history = registry.versions(record.project_id)
    served = _served(registry, record.project_id, history)
    return stop_signal(served, history, config.stopping, effective_budget(record, config))


def _reason(phase: str, trained: bool, config: ModelConfig) -> str:
    """Why a task sits where it does in the queue, in the admin's words."""
    strategy = config.acquisition.strategy
    terms = [k for k, w in config.acquisition.weights.items() if w > 0]
    value = f"uncertainty ({strategy})" if terms == ["uncertainty"] else f"hybrid ({' + '.join(terms)}; {strategy})"
    return {
        COLD_START: "cold start: covers an unlabelled cluster of the pool",
        EXPLORE: "exploration: covers a region far from the labelled tasks and the batch's other picks",
        LEARN: f"{value}, varied batch",
        REST: value if trained else "density: typical of the pool",
    }.get(phase, phase)


def next_tasks(
    project_id: int,
    pool: PoolPredictions | None,
    version: VersionInfo,
    config: ModelConfig,
    ls_url: str | None,
    limit: int | None,
) -> list[dict[str, Any]]:
    """The first ``limit`` tasks (None: all) LS serves, lowest score first, from the version's stored pool order,
    minus the tasks the version was trained on."""
    if pool is None:
        return []
    labelled = set(version.labelled_task_ids)
    out: list[dict[str, Any]] = []
    for i in np.argsort(pool.scores, kind="stable"):
        task = int(pool.task_ids[i])
        if task in labelled or task < 0:  # negative: a task without id (never served by LS)
            continue
        out.append(
            {
                "rank": len(out) + 1,
                "task": task,
                "score": float(pool.scores[i]),
                "phase": pool.reasons[i],
                "reason": _reason(pool.reasons[i], version.trained, config),
                "predicted": pool.predicted[i] or None,
                "uncertainty": _finite(pool.uncertainty[i]),
                "url": task_url(ls_url, project_id, task),
            }
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def disagreements(
    registry: Registry, project_id: int, version: VersionInfo, ls_url: str | None, min_confidence: float, limit: int
) -> list[dict[str, Any]]:
    """Labelled tasks whose human label the version confidently contradicts (most confident first): it was trained
    on that very label and still predicts another one, so the label may be wrong (or the task ambiguous)."""
    if not version.trained:
        return []
    stored = registry.label_predictions(project_id, version.version)
    if stored is None:
        return []
    rows = [
        (float(c), int(t), p, h)
        for t, p, c, h in zip(stored.task_ids, stored.predicted, stored.confidence, stored.human)
        if p != h and c >= min_confidence
    ]
    rows.sort(key=lambda r: (-r[0], r[1]))
    return [
        {"task": t, "human": h, "predicted": p, "confidence": c, "url": task_url(ls_url, project_id, t)}
        for c, t, p, h in rows[:limit]
    ]


def flips(served: Sequence[PoolPredictions], project_id: int, ls_url: str | None, limit: int) -> list[dict[str, Any]]:
    """Unlabelled tasks (of the newest served version) whose predicted label changed most often across the served
    versions: the model cannot make up its mind about them, a label there settles a boundary."""
    if len(served) < 2:
        return []
    history = [dict(zip(p.task_ids, p.predicted)) for p in served]
    uncertainty = dict(zip(served[-1].task_ids, served[-1].uncertainty.tolist()))
    rows = []
    for task in served[-1].task_ids:
        labels = [h[task] for h in history if h.get(task)]
        changes = sum(a != b for a, b in zip(labels, labels[1:]))
        if changes:
            rows.append((changes, _finite(uncertainty.get(task)) or 0.0, int(task), labels))
    rows.sort(key=lambda r: (-r[0], -r[1], r[2]))
    return [
        {"task": t, "flips": n, "labels": labels, "uncertainty": u, "url": task_url(ls_url, project_id, t)}
        for n, u, t, labels in rows[:limit]
    ]


def budget_report(spent: int, budget: int | None) -> dict[str, Any]:
    return {
        "budget": budget,
        "spent": spent,
        "left": None if budget is None else max(budget - spent, 0),
        "exhausted": budget is not None and spent >= budget,
    }


def _version_row(v: VersionInfo, current: str, kappa: float | None) -> dict[str, Any]:
    m = v.metrics
    return {
        "version": v.version,
        "number": v.number,
        "created_at": v.created_at,
        "current": v.version == current,
        "promoted": v.promoted,
        "trained": v.trained,
        "n_labels": v.n_labels,
        "accuracy": _finite(m.get("accuracy")),
        "macro_f1": _finite(m.get("macro_f1")),
        "n_holdout": m.get("n_holdout"),
        "fair_p_worse": _finite(m.get("fair_p_worse")),
        "kappa_with_previous": kappa,
        "note": v.note,
    }


def project_report(
    registry: Registry,
    record: ProjectRecord,
    config: ModelConfig,
    current: VersionInfo,
    ls_url: str | None,
    *,
    n_next: int = 20,
    n_hard: int = 20,
    min_confidence: float = 0.6,
) -> dict[str, Any]:
    """Everything the dashboard shows about a project, as plain JSON values (the status route adds the jobs)."""
    project_id = record.project_id
    history = registry.versions(project_id)
    served = _served(registry, project_id, history)
    budget = effective_budget(record, config)
    signal = stop_signal(served, history, config.stopping, budget)
    kappa_of = {p.version: k for p, k in zip(served[1:], signal.kappas)}
    trained = [v for v in history if v.trained and _finite(v.metrics.get("accuracy")) is not None]
    pool = registry.pool_predictions(project_id, current.version)
    return {
        "versions": [_version_row(v, current.version, kappa_of.get(v.version)) for v in history],
        "learning_curve": [
            {
                "version": v.version,
                "n_labels": v.n_labels,
                "accuracy": _finite(v.metrics.get("accuracy")),
                "macro_f1": _finite(v.metrics.get("macro_f1")),
                "promoted": v.promoted,
            }
            for v in trained
        ],
        "class_balance": dict(current.metrics.get("class_counts") or {}),
        "budget": budget_report(labels_spent(history), budget),
        "stopping": {
            "stop": signal.stop,
            "reasons": signal.reasons,
            "criteria": signal.criteria,
            "stops_training": config.stopping.stop_training,
        },
        "next_tasks": {
            "version": current.version,
            "scored_at": pool.written_at if pool else None,
            "tasks": next_tasks(project_id, pool, current, config, ls_url, n_next),
        },
        "hard_examples": {
            "disagreements": disagreements(registry, project_id, current, ls_url, min_confidence, n_hard),
            "flips": flips(served, project_id, ls_url, n_hard),
        },
        "label_studio_url": ls_url,
    }
