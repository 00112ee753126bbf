"""The routes Label Studio calls (label-studio-ml 2.x shapes); the admin's routes (status, dashboard, exports) are
in ``dashboard.py``.

Budgets LS imposes: /health 1 s, /setup 3 s (never load a model there), /predict 100 s per batch, project
webhooks 1 s inside the annotator's request (so /webhook only enqueues).

Nothing blocking runs on the event loop: /health touches nothing; Redis calls of async routes run in threads of
their own limiter (not the pool /predict fills), with sub-second socket timeouts, so a hung Redis costs a webhook
about a second and never stalls the other routes. Only /setup (and admin actions) change a project's state.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ml_backend import __version__
from ml_backend.api import dashboard
from ml_backend.api.auth import install_auth
from ml_backend.api.errors import error, install_error_handlers
from ml_backend.api.limits import BodySizeLimit
from ml_backend.api.metrics import install_metrics
from ml_backend.api.schemas import PredictRequest, ProjectId, SetupRequest
from ml_backend.jobs.queue import WEB_SOCKET_TIMEOUT, JobQueue, QueueUnavailable, connect
from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError
from ml_backend.labelstudio.labelconfig import UnsupportedConfig, parse_label_config
from ml_backend.labelstudio.tasklist import TaskList
from ml_backend.labelstudio.webhooks import BadEvent, WebhookEvent, parse_event, project_id_of_key, valid_id
from ml_backend.learning.registry import Registry
from ml_backend.learning.service import InvalidModelConfig, ScoringService, UnknownProject
from ml_backend.models.config import UnknownModelConfig
from ml_backend.models.encoders import configure_threads
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings

log = logging.getLogger(__name__)


class Backend:
    """What the routes need, built once per web process and passed in (no hidden globals)."""

    def __init__(self, settings: Settings, encoders: EncoderPool | None = None):
        self.settings = settings
        self.registry = Registry.from_settings(settings)
        self.service = ScoringService(settings, self.registry, encoders or EncoderPool(), None, parse_label_config)
        self.connect_label_studio(*self.registry.ls_connection())
        self.counters: Counter[str] = Counter()
        self._queue: JobQueue | None = None
        self._queue_lock = threading.Lock()
        # Redis calls of async routes run here, not in the thread pool that /predict and /setup fill
        self.redis_limiter = anyio.CapacityLimiter(16)

    def connect_label_studio(self, url: str | None = None, token: str | None = None) -> None:
        """Give the scoring service a file downloader: from the environment, else from what LS sent to /setup."""
        if self.service.fetch_file is not None:
            return
        try:
            self.service.fetch_file = LabelStudioClient.from_settings(self.settings, url, token).fetch_file
        except LabelStudioError as exc:  # text projects work without it; images need it (said per task)
            log.warning("no Label Studio client, images cannot be downloaded: %s", exc)

    def queue(self) -> JobQueue:
        """The job queue; raises QueueUnavailable (-> 503) when Redis is not configured or down."""
        if not self.settings.redis_url:
            raise QueueUnavailable("REDIS_URL is not set")
        with self._queue_lock:
            if self._queue is None:
                s = self.settings
                self._queue = JobQueue.from_settings(connect(s.redis_url, WEB_SOCKET_TIMEOUT), s)
        self._queue.redis.ping()
        return self._queue

    async def in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking (Redis) call off the event loop, in the backend's own small thread pool."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.redis_limiter)

    def request_first_scoring(self, project_id: int) -> bool:
        """Enqueue a project's pool scoring; if Redis is down, remember it on disk (the retry loop and the next
        /setup enqueue it later) instead of losing it until the next label."""
        try:
            self.queue().request_rescore(project_id)
        except QueueUnavailable as exc:
            log.error("project %s: could not enqueue the pool scoring yet (Redis: %s)", project_id, exc)
            self.registry.mark_rescore_pending(project_id)
            return False
        self.registry.mark_rescore_pending(project_id, False)
        return True

    def update_task_list(self, event: WebhookEvent) -> int:
        """Add created or forget deleted tasks in the project's task list; returns how many changed. Best effort:
        a busy or broken store costs at most the ``TASK_LIST_TIMEOUT`` of LS's 1 s webhook budget, and the
        worker's next sync finds the change in LS anyway."""
        tasks = TaskList.of_project(self.settings.projects_dir, event.project_id, timeout=TASK_LIST_TIMEOUT)
        try:
            if event.deletes_tasks:
                return tasks.remove(t["id"] for t in event.tasks if valid_id(t.get("id")) is not None)
            return tasks.add(event.tasks)
        except sqlite3.Error as exc:
            log.warning("project %s: task list not updated by %s: %s", event.project_id, event.action, exc)
            return 0

    def defer(self, event: WebhookEvent) -> None:
        """Keep on disk what a webhook asked for while Redis is down: LS sends a webhook once, so refusing it would
        lose new tasks' predictions or a retraining until the next label. New tasks become a pending re-score (it
        scores every unlabelled task that lacks a prediction of the current version); labels are counted."""
        assert event.project_id is not None
        if event.creates_tasks:
            self.registry.mark_rescore_pending(event.project_id)
        else:
            self.registry.defer_labels(event.project_id, event.labels, event.forces_training)

    def retry_deferred(self) -> int:
        """Enqueue what /setup and webhooks could not (Redis was down); returns how many projects still wait."""
        waiting = sum(1 for project_id in self.registry.rescore_pending() if not self.request_first_scoring(project_id))
        for project_id in self.registry.projects_with_deferred_labels():
            taken = self.registry.take_deferred_labels(project_id)
            if taken is None:  # another process took them
                continue
            labels, force = taken
            try:
                self.queue().add_labels(project_id, labels, force=force)
            except QueueUnavailable:
                self.registry.defer_labels(project_id, labels, force)
                waiting += 1
            else:
                log.info("project %s: enqueued %d labels deferred while Redis was down", project_id, labels)
        return waiting


_T = TypeVar("_T")
#: seconds a webhook waits for the task list's SQLite lock (a worker writing a full listing holds it briefly)
TASK_LIST_TIMEOUT = 0.5
#: seconds between attempts to enqueue what /setup and webhooks could not (Redis down)
PENDING_RETRY_INTERVAL = 5.0


async def _retry_pending(backend: Backend) -> None:
    """While the app runs: enqueue the pool scorings and labels kept on disk while Redis was down."""
    while True:
        await asyncio.sleep(PENDING_RETRY_INTERVAL)
        try:
            await backend.in_thread(backend.retry_deferred)
        except Exception:  # never let the loop die: the next round tries again
            log.exception("retrying deferred work failed")


def create_app(settings: Settings, encoders: EncoderPool | None = None) -> FastAPI:
    configure_threads(settings.torch_threads)
    backend = Backend(settings, encoders)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_retry_pending(backend))
        yield
        task.cancel()

    app = FastAPI(title="Active-learning ML backend for Label Studio", version=__version__, lifespan=lifespan)
    app.state.backend = backend
    install_error_handlers(app)
    # the last added is the outermost: requests are timed even when refused for size or auth
    install_auth(app, settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    install_metrics(app, backend.counters, backend.queue, backend.registry)
    app.include_router(dashboard.router)  # status JSON, dashboard pages, exports

    @app.get("/")
    @app.get("/health")
    async def health() -> dict[str, Any]:
        # async and touching nothing: answers even while every worker thread is busy scoring
        return {"status": "UP", "model_class": "ActiveLearningClassifier", "version": __version__}

    @app.post("/setup")
    def setup(body: SetupRequest) -> JSONResponse:
        project_id = project_id_of_key(body.project)
        env_ls = settings.label_studio_url and settings.label_studio_api_key
        if not env_ls and body.hostname and body.access_token:
            # the environment names no LS: use the one that calls us (workers read it from the registry)
            backend.registry.save_ls_connection(body.hostname, body.access_token)
            backend.connect_label_studio(body.hostname, body.access_token)
        try:
            state, is_new = backend.service.register(project_id, body.project, body.schema_, body.extra_params)
        except UnsupportedConfig as exc:
            return error(422, str(exc))
        except (UnknownModelConfig, InvalidModelConfig, ValueError) as exc:  # unknown, broken or mismatched config
            return error(400, str(exc))
        if is_new or backend.registry.is_rescore_pending(project_id):
            # first connection (or a new label set, or a scoring Redis refused before): score the pool in the background
            backend.request_first_scoring(state.record.project_id)
        return JSONResponse({"model_version": state.version.version})

    def follow_predict(project_id: int, n_predictions: int) -> None:
        """After /predict answered: LS saves what it got, perhaps beside our own import of the same version
        ("Retrieve predictions" while the pool is scored); a debounced job keeps one prediction per task."""
        try:
            backend.queue().predicted(project_id, n_predictions)
        except QueueUnavailable as exc:  # /predict keeps serving without Redis; the next import dedupes too
            log.warning("project %s: no duplicate clean-up after /predict (Redis: %s)", project_id, exc)

    @app.post("/predict")
    def predict(body: PredictRequest, background: BackgroundTasks) -> JSONResponse:
        started = time.perf_counter()
        if len(body.tasks) > settings.max_tasks_per_predict:
            return error(413, f"{len(body.tasks)} tasks in one request; at most {settings.max_tasks_per_predict}")
        project_id = body.project_id()
        if project_id is None:
            return error(400, "cannot tell the project: send 'project' as LS does ('<id>.<timestamp>')")
        # read only: LS calls /setup before every prediction run, and that is where a project's state changes (a
        # /predict with a stale or forged project key or label config must not archive or reset anything)
        try:
            state = backend.service.state(project_id)
        except UnknownProject as exc:
            return error(404, str(exc))
        except (UnknownModelConfig, InvalidModelConfig) as exc:
            return error(400, str(exc))
        if body.label_config and body.label_config != state.record.label_config:
            try:
                changed = parse_label_config(body.label_config) != state.schema
            except ValueError:
                changed = True
            if changed:
                return error(409, "the label config differs from the one /setup registered: call /setup first")
        outcomes = backend.service.score(state, body.tasks)
        results: list[Any] = []
        for outcome in outcomes:
            if outcome.prediction is None:
                log.warning("project %s task %s: no prediction: %s", project_id, outcome.task_id, outcome.reason)
                backend.counters["tasks_skipped"] += 1
                results.append([])
            else:
                results.append(outcome.prediction)
        backend.counters["predict_requests"] += 1
        scored = sum(1 for r in results if r != [])
        backend.counters["tasks_scored"] += scored
        log.info("predict project %s: %d tasks in %.3f s", project_id, len(outcomes), time.perf_counter() - started)
        if scored:
            background.add_task(follow_predict, project_id, scored)
        return JSONResponse({"results": results, "model_version": state.version.version})

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        try:
            payload = await request.json()
        except (ValueError, RecursionError):
            return error(400, "the body is not valid JSON (or nested too deeply)")
        try:
            event = parse_event(payload)
        except BadEvent as exc:
            return error(400, str(exc))
        if not event.handled:
            return JSONResponse({"status": "Unknown event", "action": event.action}, status_code=200)
        if event.deletes_tasks and event.project_id is None:
            return JSONResponse({"status": "ok", "detail": "no project given: the next task list sync finds it"})
        if backend.registry.get_project(event.project_id) is None:
            return error(
                404, f"project {event.project_id} is unknown: connect it to this backend in Label Studio first"
            )
        project_id = event.project_id
        if event.creates_tasks or event.deletes_tasks:
            changed = await backend.in_thread(backend.update_task_list, event)
            if event.deletes_tasks:
                return JSONResponse({"status": "ok", "job": None, "tasks": changed})
        if not event.creates_tasks and not event.forces_training and event.labels == 0:
            return JSONResponse({"status": "ok", "job": None, "detail": "no new label (skipped or empty)"})

        def enqueue() -> str | None:
            queue = backend.queue()
            if event.creates_tasks:
                return queue.request_score_new(project_id, event.tasks) if event.tasks else None
            return queue.add_labels(project_id, event.labels, event.forces_training, event.annotation_ids)

        try:
            job_id = await backend.in_thread(enqueue)
            if event.creates_tasks:
                return JSONResponse({"status": "ok", "job": job_id, "tasks": len(event.tasks)}, status_code=201)
        except QueueUnavailable as exc:
            try:
                await backend.in_thread(backend.defer, event)
            except OSError as disk:  # nowhere to keep it either: say so, LS logs the failed webhook
                backend.counters["webhooks_refused"] += 1
                return error(503, f"the job queue (Redis) is unavailable ({exc}) and the data folder too ({disk})")
            backend.counters["webhooks_deferred"] += 1
            log.warning("project %s: %s kept on disk until Redis is back (%s)", project_id, event.action, exc)
            detail = f"the job queue (Redis) is unavailable ({exc}): kept on disk, enqueued when Redis is back"
            return JSONResponse({"status": "deferred", "job": None, "detail": detail}, status_code=202)
        backend.counters["webhooks_accepted"] += 1
        return JSONResponse({"status": "ok", "job": job_id, "labels": event.labels}, status_code=201)

    @app.get("/versions")
    def versions(project: ProjectId | None = None) -> dict[str, Any]:
        ids = [project] if project is not None else backend.registry.project_ids()
        return {"versions": [v.version for pid in ids for v in backend.registry.versions(pid)]}

    @app.get("/metrics")
    def metrics(request: Request, format: str | None = None) -> Response:
        """Prometheus text; ``?format=json`` (or ``Accept: application/json``) gives the plain event counters."""
        if format == "json" or (format is None and "application/json" in request.headers.get("accept", "")):
            return JSONResponse(dict(backend.counters))
        return Response(generate_latest(app.state.prometheus), media_type=CONTENT_TYPE_LATEST)

    return app
