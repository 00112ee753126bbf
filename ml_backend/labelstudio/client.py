"""The only code that talks to Label Studio (through label-studio-sdk).

Errors are turned into :class:`LabelStudioError` with a message an admin can act on (unreachable, 401, ...),
so jobs fail clearly and rq retries them, instead of dying on a stack trace from deep inside httpx.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path, http_session
from label_studio_sdk.core.api_error import ApiError

from ml_backend.labelstudio.downloads import DownloadPolicy, GuardedSession
from ml_backend.settings import Settings

log = logging.getLogger(__name__)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
#: what ``_raw(..., missing_ok=True)`` returns for a 404
_MISSING = object()
#: up to this many tasks are read one request each; more are picked out of one listing of the project
_ONE_BY_ONE = 50
#: seconds a request whose work in LS grows with the project may take: exporting every task (LS answers once all
#: are serialized: 1-1.5 min per 10k measured) or deleting a version (over 60 s for 10k predictions, measured on
#: SQLite and PostgreSQL on a loaded machine; a client timeout there failed the job while LS went on deleting) or
#: importing a batch of predictions (LS recounts every task holding a prediction per request: a timeout while LS
#: goes on importing would send the batch again)
BULK_TIMEOUT = 1800.0
# Data Manager filter: tasks with at least one annotation that is not a skip (LS counts skips apart)
_HAS_ANNOTATIONS = {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}


def _id_range(first_id: int | None, last_id: int | None) -> list[dict[str, Any]]:
    """Data Manager filters for first_id <= task id <= last_id (either bound may be open)."""
    bounds = [("greater_or_equal", first_id), ("less_or_equal", last_id)]
    return [
        {"filter": "filter:tasks:id", "operator": op, "type": "Number", "value": int(value)}
        for op, value in bounds
        if value is not None
    ]


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused the request; the message says what to check, ``status`` is
    LS's HTTP status when it answered (400: it refused the request's content, e.g. a deleted task), ``body`` its
    parsed answer (LS names the refused fields there)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def _refuses_task(exc: LabelStudioError) -> bool:
    """Whether LS refused a prediction for its ``task`` field (the task does not exist, e.g. deleted), not for its
    content: LS 1.23 answers ``{"validation_errors": {"task": [...]}, ...}``."""
    body = exc.body if isinstance(exc.body, dict) else {}
    errors = body.get("validation_errors", body)
    return isinstance(errors, dict) and "task" in errors


class LabelStudioNotConfigured(LabelStudioError):
    """No LS URL or token: retrying cannot help until the admin sets them (jobs fail at once, without retries)."""


def _is_jwt(token: str) -> bool:
    try:
        jwt.decode(token, options={"verify_signature": False})
        return True
    except jwt.InvalidTokenError:
        return False


class LabelStudioClient:
    """Projects, tasks, predictions and files of one LS instance."""

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None, api_key: str | None = None) -> LabelStudioClient:
        """The client for ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` (else ``url`` / ``api_key``, e.g. what LS
        sent to /setup); LabelStudioNotConfigured if neither is set."""
        url = settings.label_studio_url or url
        api_key = settings.label_studio_api_key or api_key
        if not url or not api_key:
            raise LabelStudioNotConfigured(
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed to fetch labels and files and to push predictions"
            )
        policy = DownloadPolicy(
            url.rstrip("/"), settings.download_allowed_hosts, settings.download_timeout, settings.download_max_bytes
        )
        return cls(url, api_key, settings.label_studio_timeout, settings.files_dir, policy)

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = 60.0,
        files_dir: Path | None = None,
        downloads: DownloadPolicy | None = None,
    ):
        if not url or not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"LABEL_STUDIO_URL must start with http:// or https://, got {url!r}")
        if not api_key:
            raise LabelStudioError("LABEL_STUDIO_API_KEY is not set")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.files_dir = Path(files_dir) if files_dir else None
        self.downloads = downloads or DownloadPolicy(self.url)
        self.sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)
        self._access: tuple[str, float] | None = None

    # -- errors ---------------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            hint = (
                " (check LABEL_STUDIO_API_KEY; legacy tokens are off by default in LS 1.23)"
                if exc.status_code == 401
                else ""
            )
            raise LabelStudioError(
                f"{what}: Label Studio answered {exc.status_code}: {exc.body}{hint}", exc.status_code, exc.body
            ) from exc
        except Exception as exc:  # connection refused, DNS, timeouts (httpx or requests)
            raise LabelStudioError(
                f"{what}: cannot reach Label Studio at {self.url}: {type(exc).__name__}: {exc}"
            ) from exc

    # -- projects -------------------------------------------------------------------------------------------
    def get_project(self, project_id: int) -> Any:
        return self._call(f"get project {project_id}", self.sdk.projects.get, project_id)

    def update_project(self, project_id: int, **fields: Any) -> None:
        self._call(f"update project {project_id} {sorted(fields)}", self.sdk.projects.update, project_id, **fields)

    def set_model_version(self, project_id: int, version: str) -> None:
        self.update_project(project_id, model_version=version)

    def set_uncertainty_sampling(self, project_id: int) -> None:
        self.update_project(project_id, sampling=UNCERTAINTY_SAMPLING)

    # -- tasks ----------------------------------------------------------------------------------------------
    def iter_tasks(
        self,
        project_id: int,
        labelled_only: bool = False,
        page_size: int = 500,
        first_id: int | None = None,
        last_id: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every task of the project (or only those with a non-skipped annotation, or only those with an id in
        [``first_id``, ``last_id``]) as a plain dict (id, data, annotations, predictions), page by page. LS spends
        5-8 ms per task listed (measured on 10k tasks, with or without ``fields=all``): ask only for what is needed.

        The filters run in LS as Data Manager filters: the API's ``only_annotated`` flag is ignored by LS 1.23
        (measured); ``filter:tasks:id`` is honoured (measured: 0.1 s for the 4 newest of 10k tasks).
        """
        filters = _id_range(first_id, last_id) + ([_HAS_ANNOTATIONS] if labelled_only else [])
        query = json.dumps({"filters": {"conjunction": "and", "items": filters}}) if filters else None
        page, seen = 1, 0
        while True:
            resp = self._call(
                f"list tasks of project {project_id} (page {page})",
                self.sdk.tasks.list,
                project=project_id,
                fields="all",
                query=query,
                page=page,
                page_size=page_size,
            )
            items = list(resp.items or [])
            for task in items:
                yield task.model_dump(mode="json") if hasattr(task, "model_dump") else dict(task)
            seen += len(items)
            # stop on the total LS reports: the pager's has_next stays True and the page after the last is a 404
            total = getattr(resp.response, "total", None)
            if len(items) < page_size or (total is not None and seen >= total):
                return
            page += 1

    def export_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project (id, data, annotations; predictions by id only) through LS's export (JSON
        format, all tasks): one request, 2.6 times faster than listing them (measured on 10k tasks, LS on SQLite, loaded
        machine: 63 s against 163 s for ``iter_tasks``). LS builds the whole answer first, so the request may take
        ``BULK_TIMEOUT`` rather than the usual timeout."""
        path = f"api/projects/{int(project_id)}/export?exportType=JSON&download_all_tasks=true"
        tasks = self._raw("GET", path, timeout=max(self.timeout, BULK_TIMEOUT))
        if not isinstance(tasks, list):
            raise LabelStudioError(f"export of project {project_id}: expected a list of tasks, got {type(tasks)}")
        return tasks

    def count_tasks(self, project_id: int, first_id: int, last_id: int) -> int:
        """How many tasks of the project have an id in [first_id, last_id]: one request of one task, whose answer
        carries LS's count of the filtered set (0.1-0.2 s on 10k tasks, measured), so a task list can find the
        tasks deleted behind its back without listing the project."""
        query = json.dumps({"filters": {"conjunction": "and", "items": _id_range(first_id, last_id)}})
        resp = self._call(
            f"count tasks {first_id}..{last_id} of project {project_id}",
            self.sdk.tasks.list,
            project=project_id,
            query=query,
            page=1,
            page_size=1,
        )
        total = getattr(resp.response, "total", None)
        if total is None:
            raise LabelStudioError(f"count tasks of project {project_id}: Label Studio's answer carries no total")
        return int(total)

    def tasks_by_id(self, project_id: int, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The project's tasks with these ids, in that order; ids LS no longer has (or of another project) are
        left out. A few are read one by one, many by listing the project once (cheaper than one request each)."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        if len(wanted) > _ONE_BY_ONE:
            keep = set(wanted)
            found = {t["id"]: t for t in self.iter_tasks(project_id) if t["id"] in keep}
        else:
            found = {}
            for task_id in wanted:
                task = self._raw("GET", f"api/tasks/{task_id}/", missing_ok=True)
                if task is not _MISSING and task.get("project") == project_id:
                    found[task_id] = task
        return [found[i] for i in wanted if i in found]

    def tasks_of_annotations(self, project_id: int, annotation_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """{annotation id: the task holding it, with its annotations} for the annotations LS has (in this project),
        each annotation read by id and its task by :meth:`tasks_by_id`, whatever LS's task counters say: the
        labelled listing filters on ``total_annotations``, which LS's own bulk import recount can overwrite with a
        count taken before an annotation saved at the same moment (measured, see ``jobs.tasks._labelled_tasks``)."""
        task_of: dict[int, int] = {}
        for annotation_id in annotation_ids:
            annotation = self._raw("GET", f"api/annotations/{int(annotation_id)}/", missing_ok=True)
            if isinstance(annotation, dict) and annotation.get("task"):
                task_of[int(annotation_id)] = int(annotation["task"])
        tasks = {t["id"]: t for t in self.tasks_by_id(project_id, list(task_of.values()))}
        return {a: tasks[t] for a, t in task_of.items() if t in tasks}

    # -- predictions ----------------------------------------------------------------------------------------
    def import_predictions(
        self, project_id: int, predictions: list[dict[str, Any]], batch_size: int = 500, concurrency: int = 1
    ) -> int:
        """Import predictions (task, result, score, model_version) in bounded batches; returns how many LS created.

        ``concurrency`` > 1 sends that many batches at once (in their order: with predictions sorted by score, the
        lowest scores, the tasks LS serves first, land first). Whether LS gets faster from it depends on its
        database and server processes; README "Scale" has the measurement.
        """
        batches = [predictions[i : i + batch_size] for i in range(0, len(predictions), batch_size)]

        def send(batch: list[dict[str, Any]]) -> int:
            resp = self._call(
                f"import {len(batch)} predictions into project {project_id}",
                self.sdk.projects.import_predictions,
                project_id,
                request=batch,
                request_options={"timeout": max(self.timeout, BULK_TIMEOUT)},
            )
            return int(getattr(resp, "created", 0) or 0)

        if concurrency <= 1 or len(batches) <= 1:
            return sum(send(batch) for batch in batches)
        with ThreadPoolExecutor(max_workers=min(concurrency, len(batches))) as pool:
            return sum(pool.map(send, batches))

    def create_predictions(
        self, project_id: int, predictions: list[dict[str, Any]], concurrency: int = 1
    ) -> tuple[int, dict[int, str]]:
        """Create predictions (task, result, score, model_version) one request each (``POST /api/predictions/``),
        ``concurrency`` requests at a time; returns how many LS created and, per task LS refused because it no
        longer has it (400 on the task field, or 404), LS's answer. Any other refusal raises.

        Each create costs LS one row and its own task's counters, where a bulk import request recounts every task
        of the project holding a prediction or annotation (benchmarks/notes.md "The front: single creates against
        one bulk import"): on PostgreSQL, 100 creates 8 at a time take a third of one bulk request once the tasks
        hold predictions.
        """

        def send(prediction: dict[str, Any]) -> str | None:
            task_id = int(prediction["task"])
            try:
                self._call(
                    f"create a prediction for task {task_id} of project {project_id}",
                    self.sdk.predictions.create,
                    task=task_id,
                    project=project_id,
                    result=prediction["result"],
                    score=prediction.get("score"),
                    model_version=prediction.get("model_version"),
                )
            except LabelStudioError as exc:
                if exc.status == 404 or (exc.status == 400 and _refuses_task(exc)):
                    return str(exc)
                raise
            return None

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            answers = list(pool.map(send, predictions))
        gone = {int(p["task"]): answer for p, answer in zip(predictions, answers) if answer is not None}
        return len(predictions) - len(gone), gone

    def model_versions(self, project_id: int) -> dict[str, int]:
        """{model_version: number of predictions} of the project."""
        return self._raw("GET", f"api/projects/{project_id}/model-versions/") or {}

    def delete_model_version(self, project_id: int, version: str) -> int:
        """Delete one version's predictions (the SDK has no call for this endpoint)."""
        resp = self._raw(
            "DELETE",
            f"api/projects/{project_id}/model-versions/",
            {"model_version": version},
            timeout=max(self.timeout, BULK_TIMEOUT),
        )
        return int((resp or {}).get("deleted_predictions", 0))

    def predictions(self, project_id: int) -> list[tuple[int, int, str, float | None]]:
        """(prediction id, task id, model version, score) of every prediction of the project.

        One request: LS 1.23 serves ``/api/predictions/?project=`` unpaginated and cannot filter by version (10k
        predictions: 2-3 s, measured, against 50-100 s to list the 10k tasks that hold them).
        """
        items = self._raw("GET", f"api/predictions/?project={int(project_id)}") or []
        return [(int(p["id"]), int(p["task"]), str(p.get("model_version")), p.get("score")) for p in items]

    def predictions_of_version(self, project_id: int, version: str) -> list[tuple[int, int, float | None]]:
        """(prediction id, task id, score) of every prediction of ``version`` in the project (filtered here)."""
        return [(pid, task, score) for pid, task, v, score in self.predictions(project_id) if v == version]

    def delete_prediction(self, prediction_id: int) -> bool:
        """Delete one prediction; False if it was already gone (another job or LS deleted it)."""
        return self._raw("DELETE", f"api/predictions/{int(prediction_id)}/", missing_ok=True) is not _MISSING

    def remove_duplicate_predictions(self, project_id: int, version: str, scores: Mapping[int, float]) -> int:
        """Keep one prediction of ``version`` per task, delete the others; returns how many went. The one kept has
        the task's score in ``scores`` (the version's own score of the task) if any does, else it is the newest.

        LS never upserts (task, model_version): LS's own /predict results (e.g. "Retrieve predictions") and our
        background import of the same version both land, and a task with two rows ranks at the lower score.
        """
        by_task: dict[int, list[tuple[bool, int]]] = {}
        for pred_id, task_id, score in self.predictions_of_version(project_id, version):
            ours = score is not None and task_id in scores and math.isclose(score, scores[task_id], abs_tol=1e-9)
            by_task.setdefault(task_id, []).append((ours, pred_id))
        extras = [pred_id for rows in by_task.values() for _, pred_id in sorted(rows)[:-1]]
        deleted = sum(self.delete_prediction(pred_id) for pred_id in extras)
        if extras:
            log.info("project %s: deleted %d duplicate predictions of %s", project_id, deleted, version)
        return deleted

    def _raw(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        missing_ok: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """A plain request for endpoints the SDK lacks; ``missing_ok``: a 404 returns ``_MISSING`` instead."""
        what = f"{method} /{path}"
        headers = {"Authorization": self._auth_header(), "Content-Type": "application/json"}
        try:
            resp = requests.request(
                method,
                f"{self.url}/{path}",
                headers=headers,
                data=json.dumps(body) if body is not None else None,
                timeout=timeout or self.timeout,
            )
        except requests.RequestException as exc:
            raise LabelStudioError(f"{what}: cannot reach Label Studio at {self.url}: {exc}") from exc
        if missing_ok and resp.status_code == 404:
            return _MISSING
        if resp.status_code >= 400:
            raise LabelStudioError(
                f"{what}: Label Studio answered {resp.status_code}: {resp.text[:300]}", resp.status_code
            )
        return resp.json() if resp.content else None

    # -- auth and files -------------------------------------------------------------------------------------
    def access_token(self) -> str:
        """A token LS accepts on plain requests: the legacy token as is, or a fresh access token for a PAT.

        A personal access token is a JWT *refresh* token; LS wants ``Bearer <access>`` (valid ~5 minutes).
        """
        if not _is_jwt(self.api_key):
            return self.api_key
        if self._access is None or self._access[1] < time.time() + 30:
            resp = self._call("exchange the personal access token", self.sdk.tokens.refresh, refresh=self.api_key)
            exp = jwt.decode(resp.access, options={"verify_signature": False}).get("exp", time.time() + 240)
            self._access = (resp.access, float(exp))
        return self._access[0]

    def _auth_header(self) -> str:
        token = self.access_token()
        return f"Bearer {token}" if _is_jwt(token) else f"Token {token}"

    def fetch_file(self, url: str, task_id: int | None = None, deadline: float | None = None) -> Path:
        """Download (or find in the cache) a file referenced by task data: uploads, local files, cloud, http.

        Downloads obey ``self.downloads`` (LS host or allow-listed hosts, total deadline, byte cap; see
        ``labelstudio.downloads``), ending at ``deadline`` (time.monotonic) at the latest."""
        if self.files_dir:
            self.files_dir.mkdir(parents=True, exist_ok=True)
        try:
            with http_session(GuardedSession(self.downloads, deadline)):
                path = get_local_path(
                    url,
                    cache_dir=str(self.files_dir) if self.files_dir else None,
                    hostname=self.url,
                    access_token=self.access_token(),
                    task_id=task_id,
                )
        except (LabelStudioError, OSError):
            raise
        except Exception as exc:
            raise OSError(f"cannot download {url[:200]}: {type(exc).__name__}: {exc}") from exc
        return Path(path)

    # -- webhooks -------------------------------------------------------------------------------------------
    def secure_webhooks(self, project_id: int, headers: dict[str, str]) -> int:
        """Add ``headers`` to the project's webhooks that call one of its ML backends' ``/webhook``; returns how many
        changed. LS auto-creates that webhook without headers, so with auth on the backend would refuse it."""
        if not headers:
            return 0
        backends = self._raw("GET", f"api/ml?project={int(project_id)}") or []
        targets = {f"{b['url'].rstrip('/')}/webhook" for b in backends if isinstance(b, dict) and b.get("url")}
        changed = 0
        for hook in self._raw("GET", f"api/webhooks/?project={int(project_id)}") or []:
            current = hook.get("headers") or {}
            if hook.get("url", "").rstrip("/") in targets and any(current.get(k) != v for k, v in headers.items()):
                self._raw("PATCH", f"api/webhooks/{int(hook['id'])}/", {"headers": {**current, **headers}})
                changed += 1
        if changed:
            log.info("project %s: added the auth header to %d LS webhook(s) of this backend", project_id, changed)
        return changed
