"""The job functions the rq worker runs. Each is small, safe to retry, and reports progress in its meta.

- ``train_project``: labels from LS -> train -> evaluate -> publish a version (promoted if not worse), only while
  the job still holds the project's training lock and the project's label set is the one it trained on.
- ``rescore_project``: bring LS up to the version current when the job starts. If the project does not point at
  it yet: score every unlabelled task, create the predictions of the ``FRONT_FIRST_TASKS`` lowest scores (the
  tasks LS serves next; stage "front"), point the project at the version, import the rest (stage "fill"), then
  delete the older versions' predictions (in that order, so LS never serves from nothing). If it does: score only
  the unlabelled tasks that lack a prediction of it (deleted annotations, new tasks, failed scorings, the pool
  after its embedded part), then delete the older versions' predictions, so the queue never freezes.
  A fill stops between import requests once a training of the project waits for a worker or has promoted a newer
  version (annotators kept labelling): its version is about to be replaced, and the re-score that training
  requests either moves LS to the newer version (deleting this one with the older ones) or finishes the fill.
  A pool with more than ``EMBED_CHUNK_SIZE`` tasks to embed is embedded first, in ``embed_chunk`` jobs that every
  worker takes a share of; rq then runs the re-score again, which gathers them and finds the pool cached. A
  re-score with more than ``COLD_START_SAMPLE`` tasks to embed (the first connection of a large pool, or a version
  trained while the pool is still being embedded) ranks what is embedded already (at least a seeded sample of
  that size) first, points the project at the version, and leaves the rest of the pool to the fill, which fans it
  out or, while a fan-out of the project is in flight, leaves it to that fan-out's gathering re-score.
- ``embed_chunk``: fill the shared embedding cache for one part of a pool.
- ``score_new_tasks``: score tasks just imported into LS with the current version.
- ``dedupe_predictions``: after /predict answers, remove the duplicates LS's own save may have raced in.

Every import (a front-first one: after its fill) is followed by the removal of duplicate predictions of the version
(one prediction per task).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from redis.exceptions import RedisError
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from ml_backend.jobs import context
from ml_backend.jobs.lock import LockLost, ProjectLock
from ml_backend.jobs.queue import DEDUPE_AFTER, DEDUPE_SLOT, RESCORE_SLOT, TRAIN_SLOT
from ml_backend.labelstudio.annotations import is_labelled, labelled_examples
from ml_backend.labelstudio.client import LabelStudioError, LabelStudioNotConfigured
from ml_backend.labelstudio.labelconfig import parse_label_config
from ml_backend.labelstudio.tasklist import TaskList
from ml_backend.labelstudio.webhooks import webhook_headers
from ml_backend.learning.registry import VersionInfo
from ml_backend.learning.service import ProjectState, ScoringService
from ml_backend.learning.store import StoreError
from ml_backend.learning.training import train_version

log = logging.getLogger(__name__)


#: seconds between two records of the same stage of a job, except its first and last step: scoring 100k tasks
#: reports every batch of 64 (1,560 log lines and Redis writes, measured), the dashboard needs one a second
PROGRESS_EVERY = 1.0


def _progress(stage: str, done: int | None = None, total: int | None = None, **extra: Any) -> None:
    """Record the job's stage and done/total in its rq meta (readable over GET /projects/{id}/status); a step of
    the stage the meta already holds, recorded less than ``PROGRESS_EVERY`` s ago, is left out."""
    job = get_current_job()
    if (
        job is not None
        and done not in (None, 0, total)
        and job.meta.get("stage") == stage
        and time.time() - float(job.meta.get("updated") or 0.0) < PROGRESS_EVERY
    ):
        return
    log.info(
        "%s: %s%s %s",
        job.id if job else "-",
        stage,
        f" {done}/{total}" if total is not None else "",
        " ".join(f"{k}={v}" for k, v in extra.items()),
    )
    if job is not None:
        job.meta.update(
            {"stage": stage, "done": done, "total": total, "updated": time.time(), "pid": os.getpid(), **extra}
        )
        job.save_meta()


def _job_id(default: str) -> str:
    job = get_current_job()
    return job.id if job else default


_F = TypeVar("_F", bound=Callable[..., Any])


def _timed(kind: str) -> Callable[[_F], _F]:
    """Record each run's duration and outcome in Redis for /metrics (best effort: never fails the job)."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            started, outcome = time.monotonic(), "failed"
            try:
                result = fn(*args, **kwargs)
                outcome = "finished"
                return result
            finally:
                try:
                    context.current().queue.record_duration(kind, time.monotonic() - started, outcome)
                except (RedisError, RuntimeError) as exc:
                    log.warning("could not record the %s job's duration: %s", kind, exc)

        return run  # type: ignore[return-value]

    return wrap


def _after_failure(ctx: context.WorkerContext, slot: str | None, project_id: int, exc: Exception) -> bool:
    """Decide what follows a failed attempt; True if rq will retry this job.

    - No LS configured: retrying cannot help (the worker cancels the retries), so nothing is held.
    - A coalesced job (``slot``): while rq's retry waits, it is the project's waiting job, so requests in the
      meantime join it (a job already waiting in the slot is cancelled: the retry does its work); only if another
      job already runs is this one not retried. A burst of webhooks while LS is down thus costs one job and its
      bounded retries, two when the burst outlasts them.
    """
    job = get_current_job()
    if job is None:
        return False
    if isinstance(exc, LabelStudioNotConfigured):
        return False
    if not job.should_retry or slot is None:
        return job.should_retry
    waiting = ctx.queue.hold_for_retry(slot, project_id, job.id)
    if waiting is not None:
        log.info("project %s: %s will not be retried: %s waits and does the same work", project_id, job.id, waiting)
        job.retries_left = 0
        job.meta["superseded_by"] = waiting
        job.save_meta()
        return False
    return True


# -- training ---------------------------------------------------------------------------------------------------
@_timed("train")
def train_project(project_id: int) -> dict[str, Any]:
    ctx = context.current()
    job_id = _job_id(f"train-{project_id}-local")
    _progress("waiting for the project's training lock")
    with ProjectLock(ctx.redis, ctx.queue.key("lock:train", project_id), job_id, wait=ctx.settings.job_timeout) as lock:
        # from here on we are the running training: later labels must go to a new waiting job
        reported = ctx.queue.take_reported_labels(project_id)
        ctx.queue.started(TRAIN_SLOT, project_id, job_id)
        ctx.registry.cleanup_temp(project_id)
        try:
            result = _train(ctx, project_id, lock, reported)
        except (LabelStudioError, StoreError) as exc:  # both pass: the retry holds the project's slot
            _after_failure(ctx, TRAIN_SLOT, project_id, exc)
            raise
    # promoted: the new version re-scores the pool; refused or kept: still give every unlabelled task a prediction
    # of the current version (the same job: it fills only the tasks that lack one)
    result["rescore_job"] = ctx.queue.request_rescore(project_id)
    return result


def _label_set_changed(ctx: context.WorkerContext, state: ProjectState) -> bool:
    """Whether /setup or /predict registered another label set or model config since ``state`` was read.

    A training must not publish a head for the old labels over the untrained version that registration made.
    """
    record = ctx.registry.get_project(state.record.project_id)
    return (
        record is None
        or record.model_config != state.record.model_config
        or (
            record.label_config != state.record.label_config and parse_label_config(record.label_config) != state.schema
        )
    )


def _discard(ctx: context.WorkerContext, project_id: int, reason: str, labels: int) -> dict[str, Any]:
    """Drop a finished training that must not be published; the next training starts from the new config."""
    _progress("discarded", reason=reason)
    log.warning("project %s: training discarded: %s", project_id, reason)
    return {
        "trained": False,
        "discarded": True,
        "reason": reason,
        "labels": labels,
        "next_training_job": ctx.queue.request_training(project_id),
    }


#: seconds to wait between reads of an annotation a webhook reported while LS does not have it yet
LABEL_VISIBILITY_WAITS = (0.5, 1.0, 2.0, 4.0)


def _labelled_tasks(ctx: context.WorkerContext, project_id: int, reported: set[int]) -> list[dict[str, Any]]:
    """The project's labelled tasks: LS's labelled listing, plus the tasks of the annotations webhooks reported that
    the listing lacks, read one by one (for up to ``sum(LABEL_VISIBILITY_WAITS)`` s while LS does not have one yet).

    Two ways a reported annotation is missing from the listing, both measured with LS 1.23 on PostgreSQL: LS sent
    the webhook before the annotation could be read; or a bulk import of predictions (our fill) recounted the
    project's tasks while the annotation was saved and wrote the count taken before it, so the task's
    ``total_annotations``, which the listing filters on, stays 0 until the next recount. Either way the training the
    label triggered must not go without it. The annotations read one by one are reported again, so the next training
    checks them too (the listing may still lack them then)."""
    tasks = list(ctx.ls.iter_tasks(project_id, labelled_only=True))
    listed = {a.get("id") for t in tasks for a in t.get("annotations") or []}
    missing = reported - listed
    extra: dict[int, dict[str, Any]] = {}
    for wait in (0.0, *LABEL_VISIBILITY_WAITS):
        if not (missing := missing - set(extra)):
            break
        if wait:
            _progress(f"waiting {wait} s for {len(missing)} reported annotations to be readable in Label Studio")
            time.sleep(wait)
        extra.update(ctx.ls.tasks_of_annotations(project_id, sorted(missing)))
    if missing:  # deleted again, or LS is far behind: train on what it has
        log.warning(
            "project %s: annotations %s were reported but Label Studio has none of them", project_id, sorted(missing)
        )
    if extra:
        log.info(
            "project %s: %d reported annotations read one by one (not in the labelled listing)", project_id, len(extra)
        )
        ctx.queue.add_labels(project_id, 0, annotation_ids=sorted(extra))
        known = {t.get("id") for t in tasks}
        for task in extra.values():
            if task.get("id") not in known:
                known.add(task.get("id"))
                tasks.append(task)
    return tasks


def _train(ctx: context.WorkerContext, project_id: int, lock: ProjectLock, reported: set[int]) -> dict[str, Any]:
    state = ctx.service.state(project_id)
    _progress("fetching labelled tasks from Label Studio")
    kept, labels, stats = labelled_examples(state.schema, _labelled_tasks(ctx, project_id, reported))
    if stats.unknown_labels:
        log.warning("project %s: ignored labels not in the config: %s", project_id, stats.unknown_labels)
    _progress("labels read", stats.labelled, stats.labelled, skipped_cancelled=stats.cancelled_only)
    result = train_version(
        ctx.service,
        state,
        kept,
        labels,
        ignored_labels=stats.unknown_labels,
        progress=_progress,
        still_owner=lambda: not _label_set_changed(ctx, state) and lock.owned(),
    )
    if result.version is None and _label_set_changed(ctx, state):
        return _discard(ctx, project_id, "the label config or model config changed during the training", result.labels)
    if result.version is None and lock.lost.is_set():
        raise LockLost(f"project {project_id}: lost the training lock ({lock.lost_reason}); nothing published")
    return {
        "trained": result.trained,
        "version": result.version.version if result.version else None,
        "promoted": result.promoted,
        "labels": result.labels,
        "reason": result.reason,
        "skipped": result.skipped,
    }


# -- scoring ----------------------------------------------------------------------------------------------------
def _score_and_collect(
    service: ScoringService,
    state: ProjectState,
    tasks: list[dict[str, Any]],
    version: VersionInfo,
    batch_size: int,
    stage: str,
    whole_pool: bool,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Predictions ready for LS import for ``tasks`` and the reasons of skipped tasks.

    ``whole_pool``: ``tasks`` are all unlabelled tasks, ranked together (the batch-aware pool order); otherwise
    each task is scored on its own, placed among the version's stored order (new tasks, filling gaps).
    """
    if whole_pool:
        outcomes = service.score_pool(
            state, tasks, version, batch_size, progress=lambda what, *a, **k: _progress(f"{stage}: {what}", *a, **k)
        )
    else:
        outcomes = []
        for start in range(0, len(tasks), batch_size):
            outcomes.extend(service.score(state, tasks[start : start + batch_size], version=version))
            _progress(f"{stage}: scoring", min(start + batch_size, len(tasks)), len(tasks))
    predictions = [{"task": task["id"], **o.prediction} for task, o in zip(tasks, outcomes) if o.prediction is not None]
    skipped = {str(task.get("id")): o.reason or "unknown" for task, o in zip(tasks, outcomes) if o.prediction is None}
    return predictions, skipped


def _tasklist(ctx: context.WorkerContext, project_id: int) -> TaskList:
    return TaskList.of_project(ctx.settings.projects_dir, project_id)


def _unlabelled_tasks(ctx: context.WorkerContext, project_id: int) -> list[dict[str, Any]]:
    """The project's unlabelled tasks (id, data, the predictions LS holds) from our task list, synced with LS
    first by a few cheap requests instead of listing every task (``labelstudio.tasklist``)."""
    _progress("syncing the task list with Label Studio")
    tasklist = _tasklist(ctx, project_id)
    report = tasklist.sync(ctx.ls, project_id)
    _progress("task list synced", full_listing=report.full, seconds=round(report.seconds, 1))
    return tasklist.unlabelled()


def _lacks(task: dict[str, Any], version: str) -> bool:
    """An unlabelled task without a prediction of ``version``: LS does not serve it in version order."""
    return not is_labelled(task) and not any(p.get("model_version") == version for p in task.get("predictions") or [])


def _version_scores(ctx: context.WorkerContext, project_id: int, version: str) -> dict[int, float]:
    """The scores the version's last pool scoring gave (what /predict answers too): a duplicate with another score
    is a stale /predict result saved by LS before that pool scoring, the one to drop."""
    ranking = ctx.registry.ranking(project_id, version)
    return ranking.scores if ranking is not None else {}


def _import(
    ctx: context.WorkerContext,
    project_id: int,
    version: str,
    predictions: list[dict[str, Any]],
    lock: ProjectLock,
    stage: str = "importing predictions",
    dedupe: bool = True,
    stopped: dict[str, str] | None = None,
) -> int:
    """Import while we still hold the scoring lock, then (``dedupe``) keep one prediction of the version per task
    (ours). A front-first import dedupes once, after its fill: the listing it takes is of the whole project.

    Given ``stopped`` (a fill), it stops before a request once a training waits or a newer version is current
    (:func:`_superseded`), puts the reason into ``stopped`` and does not dedupe."""
    lock.ensure_owned(f"importing {len(predictions)} predictions")
    s = ctx.settings
    step = s.import_batch_size * s.import_concurrency
    created = 0
    for start in range(0, len(predictions), step):
        if stopped is not None and (why := _superseded(ctx, project_id, version)):
            stopped.update(why)
            _progress(stage, start, len(predictions), created=created, **why)
            return created
        _progress(stage, start, len(predictions))
        chunk = predictions[start : start + step]
        try:
            created += ctx.ls.import_predictions(project_id, chunk, s.import_batch_size, s.import_concurrency)
        except LabelStudioError as exc:
            # LS refuses a whole request (400) when one of its tasks was deleted since the task list was synced:
            # sync again (it finds deleted tasks cheaply) and send the predictions of the tasks LS still has, once
            if exc.status != 400:
                raise
            chunk = _still_in_label_studio(ctx, project_id, chunk, exc)
            created += ctx.ls.import_predictions(project_id, chunk, s.import_batch_size, s.import_concurrency)
        _tasklist(ctx, project_id).record_predictions(version, {p["task"]: p["score"] for p in chunk})
    _progress(stage, len(predictions), len(predictions), created=created)
    if created and dedupe:
        _dedupe_after_import(ctx, project_id, version, predictions)
    return created


def _superseded(ctx: context.WorkerContext, project_id: int, version: str) -> dict[str, str] | None:
    """Why a fill of ``version`` should stop now, or None. Annotators keep labelling while a large pool fills:

    - ``newer_version``: a training promoted a newer version meanwhile (it ran on another worker);
    - ``yielded_to``: a training of the project waits for a worker (with one worker it could not start before
      this job ends).

    Finishing the fill would cost LS one import request per ``IMPORT_BATCH_SIZE`` tasks, then the deletion of the
    older versions, for a version the next re-score likely replaces; on a large pool that is minutes during which
    the newer version's front waits. The re-score the training requests when it ends (also when it keeps the
    version: it then finishes this fill) points the project at the newer version and deletes this one's
    predictions with the other older versions'."""
    current = ctx.registry.current(project_id)
    if current is not None and current.version != version:
        return {"newer_version": current.version}
    training = ctx.queue.ready(TRAIN_SLOT, project_id)
    return {"yielded_to": training} if training else None


def _stopped_fill(ctx: context.WorkerContext, project_id: int, version: str, why: dict[str, str]) -> dict[str, str]:
    """End a fill that :func:`_superseded` stopped; a newer version gets a re-score for sure (coalesced: normally
    the one its training requested already)."""
    if "newer_version" in why:
        why = {**why, "continued_by": ctx.queue.request_rescore(project_id)}
    log.info("project %s: the fill of %s stopped: %s", project_id, version, why)
    return why


def _create_front(
    ctx: context.WorkerContext,
    project_id: int,
    version: str,
    front: list[dict[str, Any]],
    lock: ProjectLock,
    recount_costly: bool,
) -> tuple[int, int]:
    """Put the front's predictions into LS; returns how many LS created and how many tasks it no longer had.

    On each bulk import request LS recounts the predictions and annotations of every task of the project that has
    any (one UPDATE zeroes the others): 9-19 s at 10k tasks holding predictions, 0.5-3 s while none does
    (benchmarks/notes.md "The front: single creates against one bulk import"). So when the project's tasks hold
    predictions (``recount_costly``: every re-score after the first), the front is created one request each,
    ``FRONT_CREATE_CONCURRENCY`` at a time (a create touches its own task only); else, or with the setting 0, it
    is one bulk import. A task deleted in LS since the sync is skipped, logged, counted and dropped from the task
    list."""
    if not ctx.settings.front_create_concurrency or not recount_costly:
        return _import(ctx, project_id, version, front, lock, stage="front", dedupe=False), 0
    lock.ensure_owned(f"creating {len(front)} predictions")
    _progress("front", 0, len(front))
    created, gone = ctx.ls.create_predictions(project_id, front, ctx.settings.front_create_concurrency)
    tasklist = _tasklist(ctx, project_id)
    tasklist.record_predictions(version, {p["task"]: p["score"] for p in front if p["task"] not in gone})
    if gone:
        tasklist.remove(gone)
        log.warning(
            "project %s: %d tasks of the front were deleted in LS: skipped (%s)",
            project_id,
            len(gone),
            next(iter(gone.values())),
        )
    _progress("front", created, len(front), front_deleted_tasks=len(gone))
    return created, len(gone)


def _still_in_label_studio(
    ctx: context.WorkerContext, project_id: int, predictions: list[dict[str, Any]], exc: LabelStudioError
) -> list[dict[str, Any]]:
    """``predictions`` without those of tasks deleted in LS; re-raises ``exc`` if none was deleted (the refusal
    had another cause). The cheap sync first, a full listing if it finds nothing (a deletion its counts missed)."""
    tasklist = _tasklist(ctx, project_id)
    for full in (False, True):
        tasklist.sync(ctx.ls, project_id, full=full)
        known = set(tasklist.ids())
        kept = [p for p in predictions if p["task"] in known]
        if len(kept) < len(predictions):
            break
    else:
        raise exc
    log.warning("project %s: %d tasks were deleted in LS during the import", project_id, len(predictions) - len(kept))
    return kept


def _dedupe_after_import(
    ctx: context.WorkerContext, project_id: int, version: str, predictions: list[dict[str, Any]]
) -> None:
    ours = {**_version_scores(ctx, project_id, version), **{p["task"]: p["score"] for p in predictions}}
    ctx.ls.remove_duplicate_predictions(project_id, version, ours)


@_timed("rescore")
def rescore_project(project_id: int) -> dict[str, Any]:
    ctx = context.current()
    job_id = _job_id(f"rescore-{project_id}-local")
    try:
        with ProjectLock(
            ctx.redis, ctx.queue.key("lock:score", project_id), job_id, wait=ctx.settings.job_timeout
        ) as lock:
            ctx.queue.started(RESCORE_SLOT, project_id, job_id)  # a later request waits for a new re-score
            state = ctx.service.state(project_id)
            _progress("reading the project in Label Studio", version=state.version.version)
            if ctx.ls.get_project(project_id).model_version == state.version.version:
                return _fill(ctx, project_id, state, lock)
            return _rescore_pool(ctx, project_id, state, lock)
    except (LabelStudioError, StoreError) as exc:
        if not _after_failure(ctx, RESCORE_SLOT, project_id, exc) and not isinstance(exc, LabelStudioNotConfigured):
            _retry_later(ctx, project_id, exc)
        raise


def _retry_later(ctx: context.WorkerContext, project_id: int, exc: LabelStudioError | StoreError) -> None:
    """After the last rq attempt, schedule a later re-score: the pool gets scored once LS (or the model store) is
    back, not at the next label. rq's own retries (minutes) come first; this adds a few bounded, longer waits. Not
    when another re-score already waits (it does the same work)."""
    job = get_current_job()
    if job is None or job.meta.get("superseded_by"):
        return
    late = ctx.queue.schedule_late_rescore(project_id, int(job.meta.get("late_round", 0)), str(exc))
    log.warning(
        "project %s: re-score failed for good (%s); %s",
        project_id,
        exc,
        f"scheduled again as {late}" if late else "no more late retries",
    )


def _rescore_pool(
    ctx: context.WorkerContext, project_id: int, state: ProjectState, lock: ProjectLock
) -> dict[str, Any]:
    """Score the whole pool (when much of it lacks an embedding, its embedded part first: ``_embedded_part``) with
    a version the project does not point at yet, then switch LS over to it."""
    version = state.version.version
    if ctx.settings.set_uncertainty_sampling and not state.version.trained:
        ctx.ls.set_uncertainty_sampling(project_id)  # first connection: LS's community UI cannot set it
    _secure_webhooks(ctx, project_id)
    tasks = _unlabelled_tasks(ctx, project_id)
    part, uncached = _embedded_part(ctx, state, tasks)
    embedding = None if part else _fan_out_embedding(ctx, project_id, state, tasks, uncached)
    if embedding is not None and "continued_by" in embedding:
        return {"version": version, "mode": "pool", "unlabelled": len(tasks), "embedding": embedding}
    ranked = part or tasks
    # the order is batch-aware: rank every unlabelled task (or the embedded part), then import what LS lacks (absent, or
    # another score: a /predict result LS saved before this ranking existed; the import's dedupe then keeps ours)
    scored, skipped = _score_and_collect(
        ctx.service, state, ranked, state.version, ctx.settings.score_batch_size, "rescore", whole_pool=True
    )
    stored = {
        t["id"]: [p.get("score") for p in t.get("predictions") or [] if p.get("model_version") == version]
        for t in ranked
    }
    predictions = [
        p
        for p in scored
        if not any(s is not None and math.isclose(s, p["score"], abs_tol=1e-9) for s in stored.get(p["task"], []))
    ]
    # front first: LS serves the lowest scores first, so the K lowest are the next tasks an annotator sees; once
    # they are in, the project points at the version and serves them while the rest of the pool follows
    predictions.sort(key=lambda p: (p["score"], p["task"]))
    k = ctx.settings.front_first_tasks
    front, rest = (predictions[:k], predictions[k:]) if k else (predictions, [])
    holds_predictions = any(t.get("predictions") for t in tasks)
    created, gone = _create_front(ctx, project_id, version, front, lock, holds_predictions) if front else (0, 0)
    if not created and version not in ctx.ls.model_versions(project_id):
        # nothing to serve (every task labelled, or none could be scored): LS refuses to point a project at a
        # version without predictions, and the older predictions are all the queue has (asked only when the front
        # created nothing: LS may hold the version's predictions from an earlier attempt)
        _progress("done: no unlabelled task to score", 0, len(tasks), skipped=len(skipped))
        return {"version": version, "mode": "pool", "unlabelled": len(tasks), "imported": 0, "skipped": skipped}
    lock.ensure_owned(f"pointing the project at {version}")
    _progress("pointing the project at the new version", created, len(predictions))
    ctx.ls.set_model_version(project_id, version)
    _progress("front", created, len(predictions), front=len(front), front_deleted_tasks=gone, switched=True)
    # the fill: tasks LS does not serve yet (no prediction of the project's version) come after the front anyway
    stopped: dict[str, str] = {}
    created += _import(ctx, project_id, version, rest, lock, stage="fill", dedupe=False, stopped=stopped) if rest else 0
    result = {
        "version": version,
        "mode": "embedded part first" if part else "pool",
        "unlabelled": len(tasks),
        **({"part": len(part)} if part else {}),
        "imported": created,
        "front": len(front),
        "front_deleted_tasks": gone,
        "skipped": skipped,
    }
    if why := stopped or _superseded(ctx, project_id, version):
        return {**result, **_stopped_fill(ctx, project_id, version, why)}
    if created:
        _dedupe_after_import(ctx, project_id, version, predictions)
    if part:  # the rest of the pool is scored by the fill path, which fans its embedding out over the workers
        return {**result, "rest_of_pool": _fill(ctx, project_id, state, lock)}
    deleted = _delete_older_versions(ctx, project_id, version)
    if skipped:
        log.warning("project %s: %d tasks not scored: %s", project_id, len(skipped), dict(list(skipped.items())[:20]))
    _progress("done", created, len(predictions), skipped=len(skipped), deleted_old=deleted, front=len(front))
    return {**result, "deleted_old_predictions": deleted, "embedding": embedding}


def _embedded_part(
    ctx: context.WorkerContext, state: ProjectState, tasks: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]] | None, list[int] | None]:
    """The tasks a re-score ranks before the project points at its version when more than ``COLD_START_SAMPLE``
    of them lack an embedding: those embedded already, topped up to ``COLD_START_SAMPLE`` with a seeded random
    sample of the others; else None (rank the whole pool). A gathering re-score (the pool was fanned out) never
    takes a part. Second: the indices of the tasks without an embedding when it looked them up (else None), so
    the fan-out decision that follows does not look them up again (0.3 s and a merge of other machines' packs
    at 100k tasks, on every re-score).

    At the first connection of a large pool nothing is embedded: the part is a random sample, and the queue is
    ordered once it is embedded (20 s for 1,000 texts), not the whole pool (15 to 22 minutes for 100k texts on 2
    workers, measured). A version trained
    while the pool is still being embedded ranks the cached part at once (its front comes from the part the
    chunks have embedded so far) instead of waiting for every chunk. The part is ranked by the same code as a whole
    pool (``ScoringService.score_pool``; its greedy front draws its candidates from a sample of the pool anyway)
    and the rest of the pool is placed among it by its own value (``ScoringService.score``, as /predict places a
    new task) once it is embedded.
    """
    size = ctx.settings.cold_start_sample
    job = get_current_job()
    if not size or len(tasks) <= size or (job is not None and "fanout" in job.meta):
        return None, None
    _progress("looking up cached embeddings", 0, len(tasks))
    uncached = ctx.service.uncached(state, state.version, tasks)
    if len(uncached) <= size:
        return None, uncached
    missing = set(uncached)
    embedded = [i for i in range(len(tasks)) if i not in missing]
    top_up = size - len(embedded)
    if top_up > 0:
        embedded += np.random.default_rng(state.version.seed).choice(uncached, top_up, replace=False).tolist()
    _progress("ranking the embedded part of the pool first", len(embedded), len(tasks), to_embed=len(uncached))
    return [tasks[i] for i in sorted(embedded)], uncached


def _fan_out_embedding(
    ctx: context.WorkerContext,
    project_id: int,
    state: ProjectState,
    tasks: list[dict[str, Any]],
    uncached: list[int] | None = None,
) -> dict[str, Any] | None:
    """Split the pool's embedding over the workers when more than ``EMBED_CHUNK_SIZE`` tasks lack one
    (``uncached``: their indices in ``tasks`` if the caller looked them up already).

    Returns ``continued_by`` (the re-score rq runs once every chunk has ended; this job ends now, so a worker
    never waits on another job) when it fanned out, or when a fan-out of the project is in flight (``joined``:
    its chunks embed these tasks unless they are new, and its re-score, which scores with the version current
    then, embeds what they left); the gathered chunks' counts when this job is that re-score (it never fans out
    again: what failed chunks left it embeds itself); None when the pool is embedded here.
    """
    job = get_current_job()
    if job is not None and "fanout" in job.meta:
        if "gathered" not in job.meta:  # else this is a retry: the chunks were stored (and deleted) already
            job.meta["gathered"] = _gather(ctx, project_id, job.meta["fanout"])
            job.save_meta()
        return job.meta["gathered"]
    size = ctx.settings.embed_chunk_size
    if job is None or not size or len(tasks) <= size:
        return None
    if uncached is None:
        _progress("looking up cached embeddings", 0, len(tasks))
        uncached = ctx.service.uncached(state, state.version, tasks)
    todo = [{"id": tasks[i].get("id"), "data": tasks[i].get("data")} for i in uncached]
    if len(todo) <= size:
        return None
    if inflight := ctx.queue.fanout_in_flight(project_id):  # it embeds these tasks; its re-score then scores them
        _progress("embedding in flight", 0, len(todo), to_embed=len(todo), continued_by=inflight)
        return {"to_embed": len(todo), "continued_by": inflight, "joined": True}
    chunks = [todo[start : start + size] for start in range(0, len(todo), size)]
    gather_id = ctx.queue.fan_out_embedding(project_id, state.version.version, chunks)
    _progress("embedding fanned out", 0, len(chunks), to_embed=len(todo), continued_by=gather_id)
    return {"to_embed": len(todo), "chunks": len(chunks), "continued_by": gather_id}


def _gather(ctx: context.WorkerContext, project_id: int, chunk_ids: list[str]) -> dict[str, Any]:
    """Store the chunks' embeddings in this machine's cache (a chunk may have run on a machine with its own cache)
    and report what they did: chunks finished and failed, tasks embedded, skipped and newly stored here, and how
    many chunks each worker (``host/worker``) embedded. The vectors come from the packs the chunks left in the model
    store (``learning.embcache``); the finished chunk jobs are deleted, failed ones stay in rq's failed registry for
    the admin."""
    report: dict[str, Any] = {"chunks": len(chunk_ids), "finished": 0, "embedded": 0, "skipped": 0, "stored_here": 0}
    per_worker: dict[str, int] = {}
    fingerprints: set[str] = set()
    for chunk_id in chunk_ids:
        try:
            job = Job.fetch(chunk_id, connection=ctx.redis)
        except NoSuchJobError:
            continue  # expired or deleted: counted as failed, its tasks are embedded by the scoring path
        if job.get_status() == JobStatus.FINISHED:
            result = job.return_value() or {}
            report["finished"] += 1
            report["embedded"] += result.get("embedded", 0)
            report["skipped"] += result.get("skipped", 0)
            fingerprints.add(result["fingerprint"])
            name = f"{result.get('host')}/{result.get('worker')}"
            per_worker[name] = per_worker.get(name, 0) + 1
            job.delete()
    report["stored_here"] = sum(ctx.service.sync_embeddings(f) for f in fingerprints)
    report["failed"] = len(chunk_ids) - report["finished"]
    report["per_worker"] = per_worker
    if report["failed"]:
        log.warning(
            "project %s: %d of %d embedding chunks failed; this re-score embeds their tasks itself",
            project_id,
            report["failed"],
            report["chunks"],
        )
    _progress("embedding gathered", report["finished"], report["chunks"], failed_chunks=report["failed"])
    return report


@_timed("embed")
def embed_chunk(project_id: int, version: str, tasks: list[dict[str, Any]], gather_id: str) -> dict[str, Any]:
    """One part of a fanned-out pool embedding: embed ``tasks`` with ``version``'s encoder into this machine's cache
    and leave the vectors in the model store for the gathering re-score and every other machine (the result names
    the pack). Safe to retry (the cache and the pack are keyed by content and job); a task that cannot be embedded
    is counted, not fatal; a store that cannot be written fails the job (rq retries it)."""
    ctx = context.current()
    started = time.monotonic()
    state = ctx.service.state(project_id)
    _progress("embedding", 0, len(tasks))
    fingerprint, vectors, embedded, skipped = ctx.service.embed_part(
        state, ctx.registry.get_version(project_id, version), tasks, ctx.settings.score_batch_size
    )
    job = get_current_job()
    pack_key = ctx.service.share_embeddings(fingerprint, _job_id(f"embed-{gather_id}-local"), vectors)
    result = {
        "tasks": len(tasks),
        "embedded": embedded,
        "skipped": len(skipped),
        "skip_reasons": dict(list(skipped.items())[:20]),
        "worker": job.worker_name if job else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "seconds": round(time.monotonic() - started, 3),
    }
    finished = ctx.queue.chunk_done(gather_id)
    _progress("done", embedded, len(tasks), skipped=len(skipped), worker=result["worker"], chunks_finished=finished)
    return {**result, "fingerprint": fingerprint, "pack": pack_key}


def _secure_webhooks(ctx: context.WorkerContext, project_id: int) -> None:
    """With auth on, make LS's auto-created webhook send the credential /webhook requires (it sends none)."""
    s = ctx.settings
    headers = webhook_headers(s.basic_auth_user, s.basic_auth_pass, s.webhook_secret)
    try:
        ctx.ls.secure_webhooks(project_id, headers)
    except LabelStudioError as exc:  # scoring goes on; the status shows the warning's cause in the log
        log.warning("project %s: could not add the auth header to LS's webhook: %s", project_id, exc)


def _fill(ctx: context.WorkerContext, project_id: int, state: ProjectState, lock: ProjectLock) -> dict[str, Any]:
    """The project already points at the current version: score only the unlabelled tasks that lack it (their
    embedding fanned out over the workers when many lack one: the pool after its embedded part), then delete
    the older versions' predictions (left in place by a re-score that failed after pointing the project)."""
    version = state.version.version
    if why := _superseded(ctx, project_id, version):  # before scoring: 100k cached tasks cost 15-20 s (measured)
        return {"version": version, "mode": "fill", **_stopped_fill(ctx, project_id, version, why)}
    todo = [t for t in _unlabelled_tasks(ctx, project_id) if _lacks(t, version)]
    embedding = _fan_out_embedding(ctx, project_id, state, todo)
    if embedding is not None and "continued_by" in embedding:
        return {"version": version, "mode": "fill", "missing": len(todo), "embedding": embedding}
    predictions, skipped = _score_and_collect(
        ctx.service, state, todo, state.version, ctx.settings.score_batch_size, "fill", whole_pool=False
    )
    predictions.sort(key=lambda p: (p["score"], p["task"]))  # the tasks LS serves first land first
    stopped: dict[str, str] = {}
    created = _import(ctx, project_id, version, predictions, lock, stage="fill", stopped=stopped) if predictions else 0
    result = {
        "version": version,
        "mode": "fill",
        "missing": len(todo),
        "imported": created,
        "skipped": skipped,
        "embedding": embedding,
    }
    if why := stopped or _superseded(ctx, project_id, version):
        return {**result, **_stopped_fill(ctx, project_id, version, why)}
    deleted = _delete_older_versions(ctx, project_id, version)
    _progress(
        "done: filled the tasks without a current prediction",
        created,
        len(todo),
        skipped=len(skipped),
        deleted_old=deleted,
    )
    return {**result, "deleted_old_predictions": deleted}


def _delete_older_versions(ctx: context.WorkerContext, project_id: int, keep: str) -> int:
    """Delete predictions of this backend's other versions of the project (never someone else's)."""
    ours = {v.version for v in ctx.registry.versions(project_id)}
    deleted = 0
    for name in ctx.ls.model_versions(project_id):
        if name != keep and name in ours:
            deleted += ctx.ls.delete_model_version(project_id, name)
            _tasklist(ctx, project_id).forget_version(name)
    return deleted


@_timed("score_new_tasks")
def score_new_tasks(project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    ctx = context.current()
    with ProjectLock(
        ctx.redis,
        ctx.queue.key("lock:score", project_id),
        _job_id(f"score-{project_id}-local"),
        wait=ctx.settings.job_timeout,
    ) as lock:
        state = ctx.service.state(project_id)
        version = state.version.version
        todo = [t for t in tasks if isinstance(t, dict) and "id" in t and _lacks(t, version)]
        predictions, skipped = _score_and_collect(
            ctx.service, state, todo, state.version, ctx.settings.score_batch_size, "new tasks", whole_pool=False
        )
        created = _import(ctx, project_id, version, predictions, lock) if predictions else 0
        _progress("done", created, len(predictions), skipped=len(skipped))
        return {"version": version, "imported": created, "skipped": skipped}


@_timed("dedupe")
def dedupe_predictions(project_id: int) -> dict[str, Any]:
    """Keep one prediction of the current version per task once /predict has been quiet for a while."""
    ctx = context.current()
    ctx.queue.started(DEDUPE_SLOT, project_id, _job_id(f"dedupe-{project_id}-local"))
    wait = ctx.queue.dedupe_wait(project_id)
    if wait > 0:  # LS may still be saving what a recent /predict returned: look once it should be done
        _progress("postponed: LS may still be saving /predict results", wait=round(wait, 1))
        return {"postponed": ctx.queue.request_dedupe(project_id, wait)}
    version = ctx.service.state(project_id).version.version
    deleted = ctx.ls.remove_duplicate_predictions(project_id, version, _version_scores(ctx, project_id, version))
    # duplicates found: LS may still be saving (a slow save outlasts any fixed wait); look again until none is left
    again = ctx.queue.request_dedupe(project_id, DEDUPE_AFTER) if deleted else None
    _progress("done", deleted=deleted, next_pass=again)
    return {"version": version, "deleted": deleted, "next_pass": again}
