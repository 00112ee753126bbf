"""The admin's routes: the project status JSON, the dashboard pages that show it, and exports.

Thin on purpose: the figures come from ``learning.insights`` (versions on disk) and the job queue, the page is
rendered from the status JSON (``dashboard_html``), the files by ``exports``. The app's Basic auth middleware
covers these routes like every other.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ml_backend.api.dashboard_html import index_page, project_page
from ml_backend.api.errors import error
from ml_backend.api.schemas import ProjectId
from ml_backend.exports.formats import FORMATS, ExportError
from ml_backend.exports.project import WHAT, export_project
from ml_backend.jobs.queue import QueueUnavailable, last_error
from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError
from ml_backend.learning.insights import project_report
from ml_backend.learning.registry import ProjectRecord, VersionInfo
from ml_backend.learning.service import InvalidModelConfig, UnknownProject
from ml_backend.models.config import ModelConfig, UnknownModelConfig

router = APIRouter()


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None: metrics may hold them (an empty held-out set has no accuracy),
    and JSON has no such numbers, so the status would otherwise fail to serialise."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _model_config(backend: Any, record: ProjectRecord, current: VersionInfo) -> tuple[ModelConfig, str | None]:
    """The project's model config (stopping knobs, budget, queue reasons) and, when it does not load, the one saved
    with the current version plus the reason: the status must still show why jobs fail. The reason names the
    config only (``load_config`` logs the file's details)."""
    try:
        return backend.service.load_config(record.model_config), None
    except (UnknownModelConfig, InvalidModelConfig) as exc:
        return ModelConfig.model_validate(current.model_config), f"{exc}; showing the current version's config"


def project_status(backend: Any, project_id: int) -> dict[str, Any]:
    """Everything the dashboard shows about a project (raises UnknownProject): current version and its metrics,
    version history, learning curve, class balance, budget, stopping signal, next tasks, hard examples, jobs.
    Read from the registry and Redis only, so it answers even when the project's config is broken."""
    record, current = backend.registry.get_project(project_id), backend.registry.current(project_id)
    if record is None or current is None:
        raise UnknownProject(f"project {project_id} is unknown: connect it to this backend in Label Studio (/setup)")
    config, config_note = _model_config(backend, record, current)
    # task links point at the LS the backend talks to: the environment's, else the one /setup reported
    ls_url = backend.settings.label_studio_url or backend.registry.ls_connection()[0]
    body: dict[str, Any] = {
        "project": project_id,
        "current_version": current.version,
        "trained": current.trained,
        "metrics": current.metrics,
        "n_labels": current.n_labels,
        **project_report(backend.registry, record, config, current, ls_url),
    }
    if config_note:
        body["model_config_error"] = config_note
    body["rescore_pending"] = backend.registry.is_rescore_pending(project_id)
    body["labels_deferred"] = backend.registry.deferred_labels(project_id)
    try:
        body["jobs"] = backend.queue().recent_jobs(project_id)
        body["last_error"] = last_error(body["jobs"])
        body["retry_pending"] = any(j["status"] == "scheduled" and j["error"] for j in body["jobs"])
    except QueueUnavailable as exc:
        body["jobs"], body["jobs_error"] = None, f"Redis unavailable: {exc}"
    return _json_safe(body)


@router.get("/projects/{project_id}/status")
def status(project_id: ProjectId, request: Request) -> JSONResponse:
    try:
        return JSONResponse(project_status(request.app.state.backend, project_id))
    except UnknownProject as exc:
        return error(404, str(exc))


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, refresh: int = Query(10, ge=0)) -> HTMLResponse:
    backend = request.app.state.backend
    projects = []
    for project_id in backend.registry.project_ids():
        try:
            projects.append(project_status(backend, project_id))
        except UnknownProject:  # a folder without a current version (being set up): not a project yet
            continue
    return HTMLResponse(index_page(projects, refresh))


@router.get("/dashboard/projects/{project_id}", response_class=HTMLResponse)
def dashboard_project(project_id: ProjectId, request: Request, refresh: int = Query(10, ge=0)) -> HTMLResponse:
    try:
        return HTMLResponse(project_page(project_status(request.app.state.backend, project_id), refresh))
    except UnknownProject as exc:
        return HTMLResponse(f"<!doctype html><p>{exc}</p>", status_code=404)


@router.get("/projects/{project_id}/export")
def export(
    project_id: ProjectId,
    request: Request,
    what: str = Query("next", description=f"one of {', '.join(WHAT)}"),
    format: str = Query("ls-json", description=f"one of {', '.join(FORMATS)}"),
    limit: int | None = Query(None, ge=1),
) -> Response:
    """The same files as ``ml-backend export``; task data is read from Label Studio."""
    backend = request.app.state.backend
    try:
        state = backend.service.state(project_id)
        ls = LabelStudioClient.from_settings(backend.settings, *backend.registry.ls_connection())
        done = export_project(what, format, state, backend.registry, ls, limit)
    except UnknownProject as exc:
        return error(404, str(exc))
    except (ExportError, UnknownModelConfig, InvalidModelConfig) as exc:  # the export asked, or the config, is unusable
        return error(400, str(exc))
    except LabelStudioError as exc:
        return error(502, f"reading tasks from Label Studio failed: {exc}")
    return Response(
        done.content,
        media_type=done.media_type,
        headers={"Content-Disposition": f'attachment; filename="{done.filename}"', "X-Export-Count": str(done.count)},
    )
