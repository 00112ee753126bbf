"""The routes Label Studio calls (label-studio-ml 2.x shapes) and the project status route.

Budgets LS imposes: /health 1 s, /setup 3 s (never load a model there), /predict 100 s per batch, project
webhooks 1 s inside the annotator's request (so /webhook only enqueues).
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections import Counter
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse

from ml_backend import __version__
from ml_backend.api import dashboard
from ml_backend.api.errors import error, install_error_handlers
from ml_backend.api.schemas import PredictRequest, SetupRequest
from ml_backend.jobs.queue import JobQueue, QueueUnavailable, connect
from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError
from ml_backend.labelstudio.labelconfig import UnsupportedConfig, parse_label_config
from ml_backend.labelstudio.webhooks import BadEvent, parse_event, project_id_of_key
from ml_backend.learning.registry import Registry
from ml_backend.learning.service import ScoringService, UnknownProject
from ml_backend.models.encoders import configure_torch
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings

log = logging.getLogger(__name__)


class Backend:
    """What the routes need, built once per web process and passed in (no hidden globals)."""

    def __init__(self, settings: Settings, encoders: EncoderPool | None = None):
        self.settings = settings
        self.registry = Registry(settings.projects_dir)
        fetch = None
        try:
            fetch = LabelStudioClient.from_settings(settings).fetch_file
        except LabelStudioError as exc:  # text projects work without it; images need it (said per task)
            log.warning("no Label Studio client, images cannot be downloaded: %s", exc)
        self.service = ScoringService(settings, self.registry, encoders or EncoderPool(), fetch, parse_label_config)
        self.counters: Counter[str] = Counter()
        self._queue: JobQueue | None = None
        self._queue_lock = threading.Lock()

    def queue(self) -> JobQueue:
        """The job queue; raises QueueUnavailable (-> 503) when Redis is not configured or down."""
        if not self.settings.redis_url:
            raise QueueUnavailable("REDIS_URL is not set")
        with self._queue_lock:
            if self._queue is None:
                s = self.settings
                self._queue = JobQueue.from_settings(connect(s.redis_url), s)
        self._queue.redis.ping()
        return self._queue


def create_app(settings: Settings, encoders: EncoderPool | None = None) -> FastAPI:
    configure_torch(settings.torch_threads)
    backend = Backend(settings, encoders)
    app = FastAPI(title="Active-learning ML backend for Label Studio", version=__version__)
    app.state.backend = backend
    install_error_handlers(app)
    app.include_router(dashboard.router)  # status JSON, dashboard pages, exports

    if settings.basic_auth_user:
        credentials = f"{settings.basic_auth_user}:{settings.basic_auth_pass or ''}".encode()
        expected = "Basic " + base64.b64encode(credentials).decode()

        @app.middleware("http")
        async def _basic_auth(request: Request, call_next: Any) -> Any:
            if not secrets.compare_digest(request.headers.get("authorization", ""), expected):
                return error(401, "authentication required", {"WWW-Authenticate": 'Basic realm="ml-backend"'})
            return await call_next(request)

    @app.get("/")
    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "UP", "model_class": "ActiveLearningClassifier", "version": __version__}

    @app.post("/setup")
    def setup(body: SetupRequest) -> JSONResponse:
        try:
            state, is_new = backend.service.register(
                project_id_of_key(body.project), body.project, body.schema_, body.extra_params
            )
        except UnsupportedConfig as exc:
            return error(422, str(exc))
        except (FileNotFoundError, ValueError) as exc:  # unknown or mismatched model config
            return error(400, str(exc))
        if is_new:  # first connection (or a new label set): score the whole pool in the background
            try:
                backend.queue().request_rescore(state.record.project_id)
            except QueueUnavailable as exc:
                log.error("project %s: could not enqueue the first scoring (Redis: %s)", state.record.project_id, exc)
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
        project_id = body.project_id()
        if project_id is None:
            return error(400, "cannot tell the project: send 'project' as LS does ('<id>.<timestamp>')")
        try:
            if body.label_config:  # LS sends the config with every request: keeps us in sync after edits
                state, _ = backend.service.register(
                    project_id, body.project_key() or str(project_id), body.label_config
                )
            else:
                state = backend.service.state(project_id)
        except UnknownProject as exc:
            return error(404, str(exc))
        except UnsupportedConfig as exc:
            return error(422, str(exc))
        except (FileNotFoundError, ValueError) as exc:
            return error(400, str(exc))
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
        except ValueError:
            return error(400, "the body is not valid JSON")
        try:
            event = parse_event(payload)
        except BadEvent as exc:
            return error(400, str(exc))
        if not event.handled:
            return JSONResponse({"status": "Unknown event", "action": event.action}, status_code=200)
        if backend.registry.get_project(event.project_id) is None:
            return error(
                404, f"project {event.project_id} is unknown: connect it to this backend in Label Studio first"
            )
        try:
            queue = backend.queue()
            if event.creates_tasks:
                job_id = queue.request_score_new(event.project_id, event.tasks) if event.tasks else None
                return JSONResponse({"status": "ok", "job": job_id, "tasks": len(event.tasks)}, status_code=201)
            if not event.forces_training and event.labels == 0:
                return JSONResponse({"status": "ok", "job": None, "detail": "no new label (skipped or empty)"})
            job_id = queue.add_labels(event.project_id, event.labels, force=event.forces_training)
        except QueueUnavailable as exc:
            backend.counters["webhooks_refused"] += 1
            return error(503, f"the job queue (Redis) is unavailable: {exc}")
        backend.counters["webhooks_accepted"] += 1
        return JSONResponse({"status": "ok", "job": job_id, "labels": event.labels}, status_code=201)

    @app.get("/versions")
    def versions(project: int | None = None) -> dict[str, Any]:
        ids = [project] if project is not None else backend.registry.project_ids()
        return {"versions": [v.version for pid in ids for v in backend.registry.versions(pid)]}

    @app.get("/metrics")
    def metrics() -> dict[str, Any]:
        return dict(backend.counters)

    return app
