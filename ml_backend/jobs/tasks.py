"""The job functions the rq worker runs. Each is small, safe to retry, and reports progress in its meta.

- ``train_project``: labels from LS -> train -> evaluate -> publish a version (promoted if not worse).
- ``rescore_project``: score every unlabelled task with a version, import the predictions, point the project at
  the version, then delete the older versions' predictions (in that order, so LS never serves from nothing).
- ``score_new_tasks``: score tasks just imported into LS with the current version.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from rq import get_current_job

from ml_backend.jobs import context
from ml_backend.jobs.lock import ProjectLock
from ml_backend.registry import Registry, VersionInfo
from ml_backend.service import ProjectState, ScoringService
from ml_backend.training import can_train, encode_targets, is_labelled, labelled_examples, train_and_decide

log = logging.getLogger(__name__)


def _progress(stage: str, done: int | None = None, total: int | None = None, **extra: Any) -> None:
    """Record the job's stage and done/total in its rq meta (readable over GET /projects/{id}/status)."""
    job = get_current_job()
    log.info("%s: %s%s %s", job.id if job else "-", stage, f" {done}/{total}" if total is not None else "",
             " ".join(f"{k}={v}" for k, v in extra.items()))
    if job is not None:
        job.meta.update({"stage": stage, "done": done, "total": total, "updated": time.time(), "pid": os.getpid(), **extra})
        job.save_meta()


def _job_id(default: str) -> str:
    job = get_current_job()
    return job.id if job else default


# -- training ---------------------------------------------------------------------------------------------------
def train_project(project_id: int) -> dict[str, Any]:
    ctx = context.current()
    job_id = _job_id(f"train-{project_id}-local")
    _progress("waiting for the project's training lock")
    pending = ctx.queue.key("pending", project_id)
    with ProjectLock(ctx.redis, ctx.queue.key("lock:train", project_id), job_id, wait=ctx.settings.job_timeout):
        # from here on we are the running training: later labels must go to a new waiting job
        pipe = ctx.redis.pipeline()
        pipe.get(pending)
        pipe.set(ctx.queue.key("labels", project_id), 0)
        waiting, _ = pipe.execute()
        if waiting is not None and waiting.decode() == job_id:
            ctx.redis.delete(pending)
        ctx.registry.cleanup_temp(project_id)
        return _train(ctx, project_id)


def _train(ctx: context.WorkerContext, project_id: int) -> dict[str, Any]:
    service, registry = ctx.service, ctx.registry
    state = service.state(project_id)
    _progress("fetching labelled tasks from Label Studio")
    tasks, labels, stats = labelled_examples(state.schema, ctx.ls.iter_tasks(project_id, labelled_only=True))
    if stats.unknown_labels:
        log.warning("project %s: ignored labels not in the config: %s", project_id, stats.unknown_labels)
    _progress("embedding labelled tasks", 0, len(tasks), skipped_cancelled=stats.cancelled_only)
    config = state.config
    number = registry.next_number(project_id)
    clf = service.new_classifier(state, config)
    outcomes, ok, emb, items = service.embed_tasks(clf, state.schema, tasks)
    skipped = {str(o.task_id): o.reason for o in outcomes if o.reason}
    if skipped:
        log.warning("project %s: %d labelled tasks could not be used: %s", project_id, len(skipped), skipped)
    y = encode_targets(state.schema, [labels[i] for i in ok])
    task_ids = [int(tasks[i]["id"]) for i in ok]
    why_not = can_train(state.schema.multilabel, y)
    if why_not:
        _progress("not trained", len(ok), len(tasks), reason=why_not)
        return {"trained": False, "reason": why_not, "labels": len(ok)}
    _progress("training", len(ok), len(tasks))
    current = service.classifier(state) if state.version.trained else None
    outcome = train_and_decide(clf, current, emb, items, y, task_ids, state.schema.labels, config.training.seed)
    info = VersionInfo(
        version=Registry.version_name(config.name, number), number=number, created_at=time.time(),
        model_config=config.model_dump(), seed=config.training.seed, trained=True, promoted=outcome.promote,
        metrics={**outcome.metrics, "skipped_tasks": len(skipped), "ignored_labels": stats.unknown_labels},
        n_labels=len(task_ids), labelled_task_ids=sorted(task_ids), note=outcome.reason,
    )
    registry.publish(project_id, info, {"model.pt": outcome.classifier.state_bytes()}, promote=outcome.promote)
    _progress("published", len(ok), len(tasks), version=info.version, promoted=outcome.promote,
              accuracy=outcome.metrics.get("accuracy"))
    log.info("project %s: version %s on %d labels: %s", project_id, info.version, len(task_ids), outcome.reason)
    rescore_id = ctx.queue.request_rescore(project_id, info.version) if outcome.promote else None
    return {"trained": True, "version": info.version, "promoted": outcome.promote, "labels": len(task_ids),
            "reason": outcome.reason, "rescore_job": rescore_id}


# -- scoring ----------------------------------------------------------------------------------------------------
def _score_and_collect(service: ScoringService, state: ProjectState, tasks: list[dict[str, Any]], version: VersionInfo,
                       batch_size: int, stage: str, whole_pool: bool) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Predictions ready for LS import for ``tasks`` and the reasons of skipped tasks.

    ``whole_pool``: ``tasks`` are all unlabelled tasks, ranked together (the batch-aware pool order); otherwise
    each task is scored on its own, placed among the version's stored order (new tasks, filling gaps).
    """
    if whole_pool:
        outcomes = service.score_pool(state, tasks, version, batch_size,
                                      progress=lambda what, *a, **k: _progress(f"{stage}: {what}", *a, **k))
    else:
        outcomes = []
        for start in range(0, len(tasks), batch_size):
            outcomes.extend(service.score(state, tasks[start : start + batch_size], version=version))
            _progress(f"{stage}: scoring", min(start + batch_size, len(tasks)), len(tasks))
    predictions = [{"task": task["id"], **o.prediction} for task, o in zip(tasks, outcomes) if o.prediction is not None]
    skipped = {str(task.get("id")): o.reason or "unknown" for task, o in zip(tasks, outcomes) if o.prediction is None}
    return predictions, skipped


def rescore_project(project_id: int, version: str) -> dict[str, Any]:
    ctx = context.current()
    with ProjectLock(ctx.redis, ctx.queue.key("lock:score", project_id), _job_id(f"rescore-{project_id}-local"),
                     wait=ctx.settings.job_timeout):
        state = ctx.service.state(project_id)
        if state.version.version != version:
            _progress("skipped: a newer version is current", current=state.version.version)
            return {"skipped": True, "current": state.version.version}
        if ctx.settings.set_uncertainty_sampling and not state.version.trained:
            ctx.ls.set_uncertainty_sampling(project_id)  # first connection: LS's community UI cannot set it
        _progress("listing tasks in Label Studio")
        tasks = [t for t in ctx.ls.iter_tasks(project_id) if not is_labelled(t)]
        todo = [t for t in tasks if not any(p.get("model_version") == version for p in t.get("predictions") or [])]
        predictions, skipped = _score_and_collect(ctx.service, state, todo, state.version,
                                                  ctx.settings.score_batch_size, "rescore", whole_pool=True)
        _progress("importing predictions", 0, len(predictions))
        created = ctx.ls.import_predictions(project_id, predictions, ctx.settings.import_batch_size)
        if version not in ctx.ls.model_versions(project_id):
            # nothing to serve (every task labelled, or none could be scored): LS refuses to point a project at a
            # version without predictions, and the older predictions are all the queue has
            _progress("done: no unlabelled task to score", 0, len(tasks), skipped=len(skipped))
            return {"version": version, "unlabelled": len(tasks), "imported": 0, "skipped": skipped}
        _progress("pointing the project at the new version", created, len(predictions))
        ctx.ls.set_model_version(project_id, version)
        deleted = _delete_older_versions(ctx, project_id, version)
        if skipped:
            log.warning("project %s: %d tasks not scored: %s", project_id, len(skipped), dict(list(skipped.items())[:20]))
        _progress("done", created, len(predictions), skipped=len(skipped), deleted_old=deleted)
        return {"version": version, "unlabelled": len(tasks), "imported": created, "skipped": skipped,
                "deleted_old_predictions": deleted}


def _delete_older_versions(ctx: context.WorkerContext, project_id: int, keep: str) -> int:
    """Delete predictions of this backend's other versions of the project (never someone else's)."""
    ours = {v.version for v in ctx.registry.versions(project_id)}
    deleted = 0
    for name in ctx.ls.model_versions(project_id):
        if name != keep and name in ours:
            deleted += ctx.ls.delete_model_version(project_id, name)
    return deleted


def score_new_tasks(project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    ctx = context.current()
    with ProjectLock(ctx.redis, ctx.queue.key("lock:score", project_id), _job_id(f"score-{project_id}-local"),
                     wait=ctx.settings.job_timeout):
        state = ctx.service.state(project_id)
        todo = [t for t in tasks if isinstance(t, dict) and "id" in t and not is_labelled(t)
                and not any(p.get("model_version") == state.version.version for p in t.get("predictions") or [])]
        predictions, skipped = _score_and_collect(ctx.service, state, todo, state.version,
                                                  ctx.settings.score_batch_size, "new tasks", whole_pool=False)
        created = ctx.ls.import_predictions(project_id, predictions, ctx.settings.import_batch_size)
        _progress("done", created, len(predictions), skipped=len(skipped))
        return {"version": state.version.version, "imported": created, "skipped": skipped}
