"""A thin, loud client for the Label Studio REST API used by the end-to-end tests.

Every call checks the status code and, when it is not the expected one, fails with the method, the URL, the status
and what LS answered, so that a failing e2e run says what Label Studio said. Reads go through plain httpx (what the
UI does); the ML backend is connected with label-studio-sdk, as the issue asks (``connect_ml_backend``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx


class LSCallError(AssertionError):
    """A Label Studio API call answered something unexpected."""


def _short(text: str, n: int = 1500) -> str:
    return text if len(text) <= n else text[:n] + f"... [{len(text) - n} more chars]"


@dataclass
class Prediction:
    id: int
    task: int
    model_version: str
    score: float | None
    result: list


@dataclass
class LSApi:
    url: str
    token: str
    timeout: float = 60.0
    calls: list[str] = field(default_factory=list)  # last calls, for failure reports

    def __post_init__(self) -> None:
        scheme = "Bearer" if self.token.count(".") == 2 else "Token"
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"{scheme} {self.token}"},
            timeout=self.timeout,
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ raw
    def call(self, method: str, path: str, expect: Iterable[int] = (200,), **kw) -> Any:
        r = self.http.request(method, path, **kw)
        self.calls.append(f"{method} {path} -> {r.status_code}")
        del self.calls[:-30]
        if r.status_code not in tuple(expect):
            raise LSCallError(
                f"Label Studio: {method} {self.url}{path} -> {r.status_code}, expected "
                f"{tuple(expect)}; body: {_short(r.text)}"
            )
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise LSCallError(
                f"Label Studio: {method} {path} -> {r.status_code} with non-JSON body: {_short(r.text)}"
            ) from None

    # ------------------------------------------------------------------ projects
    def create_project(self, title: str, label_config: str, **extra) -> dict:
        return self.call(
            "POST", "/api/projects/", expect=(201,), json={"title": title, "label_config": label_config, **extra}
        )

    def project(self, pid: int) -> dict:
        return self.call("GET", f"/api/projects/{pid}/")

    def import_tasks(self, pid: int, tasks: list[dict]) -> dict:
        return self.call(
            "POST", f"/api/projects/{pid}/import", expect=(201,), params={"return_task_ids": "true"}, json=tasks
        )

    def upload_files(self, pid: int, files: list[tuple[str, bytes, str]]) -> dict:
        """Import files as tasks (multipart ``POST /api/projects/{id}/import``): LS stores them as uploads."""
        multipart = [(f"file{i}", (name, content, mime)) for i, (name, content, mime) in enumerate(files)]
        return self.call(
            "POST", f"/api/projects/{pid}/import", expect=(201,), files=multipart, params={"return_task_ids": "true"}
        )

    def tasks(self, pid: int) -> list[dict]:
        """Every task of the project with its data and annotations (paged)."""
        out: list[dict] = []
        page = 1
        while True:
            body = self.call(
                "GET",
                "/api/tasks/",
                expect=(200, 404),
                params={"project": pid, "page": page, "page_size": 500, "fields": "all"},
            )
            if body is None or isinstance(body, dict) and "tasks" not in body:
                break
            batch = body["tasks"] if isinstance(body, dict) else body
            out.extend(batch)
            total = body.get("total") if isinstance(body, dict) else None
            if not batch or (total is not None and len(out) >= total):
                break
            page += 1
        return out

    def predictions(self, pid: int) -> list[Prediction]:
        """Every prediction of the project, all model versions."""
        body = self.call("GET", "/api/predictions/", params={"project": pid})
        items = body["results"] if isinstance(body, dict) and "results" in body else body
        return [Prediction(p["id"], p["task"], p.get("model_version"), p.get("score"), p.get("result")) for p in items]

    def model_versions(self, pid: int) -> dict[str, int]:
        return self.call("GET", f"/api/projects/{pid}/model-versions/")

    def next_task(self, pid: int) -> dict | None:
        r = self.http.get(f"/api/projects/{pid}/next")
        self.calls.append(f"GET /api/projects/{pid}/next -> {r.status_code}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise LSCallError(f"Label Studio: GET /api/projects/{pid}/next -> {r.status_code}: {_short(r.text)}")
        return r.json()

    def annotate(self, task_id: int, result: list, was_cancelled: bool = False) -> dict:
        return self.call(
            "POST",
            f"/api/tasks/{task_id}/annotations/",
            expect=(201,),
            json={"result": result, "was_cancelled": was_cancelled, "lead_time": 1.0},
        )

    def update_annotation(self, annotation_id: int, result: list) -> dict:
        return self.call("PATCH", f"/api/annotations/{annotation_id}/", json={"result": result})

    def retrieve_predictions(self, pid: int) -> dict:
        """The Data Manager action "Retrieve Predictions" on every task: LS calls the backend's /predict for the
        tasks lacking a prediction of the ML backend's version, inside this request, and saves what it gets."""
        return self.call(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": pid},
            json={"selectedItems": {"all": True, "excluded": []}},
        )

    # ------------------------------------------------------------------ ML backend (SDK)
    def sdk(self):
        from label_studio_sdk import LabelStudio

        return LabelStudio(
            base_url=self.url, api_key=self.token, httpx_client=httpx.Client(timeout=self.timeout, trust_env=False)
        )

    def connect_ml_backend(self, pid: int, backend_url: str, title: str) -> Any:
        """``ls.ml.create(...)`` as a user would: LS calls /health and /setup and creates the webhook itself."""
        return self._sdk_call(
            f"ml.create(project={pid}, url={backend_url})",
            lambda ls: ls.ml.create(project=pid, url=backend_url, title=title, is_interactive=False),
        )

    def ml_backends(self, pid: int) -> list[dict]:
        """``ls.ml.list(project=pid)`` (LS calls /health and /setup of each backend for this)."""
        return [m.dict() for m in self._sdk_call(f"ml.list(project={pid})", lambda ls: ls.ml.list(project=pid))]

    def ml_backend(self, ml_id: int) -> dict:
        """``ls.ml.get(id)``: state 'CO' (connected), 'DI', 'ER', 'TR' or 'PR', and the /setup model_version."""
        return self._sdk_call(f"ml.get({ml_id})", lambda ls: ls.ml.get(ml_id)).dict()

    def _sdk_call(self, what: str, fn):
        from label_studio_sdk.core.api_error import ApiError

        try:
            out = fn(self.sdk())
        except ApiError as e:
            raise LSCallError(f"Label Studio (SDK): {what} -> {e.status_code}: {_short(str(e.body))}") from None
        self.calls.append(f"SDK {what}")
        return out

    def ml_versions(self, ml_id: int) -> dict:
        return self.call("GET", f"/api/ml/{ml_id}/versions")

    def webhooks(self, pid: int) -> list[dict]:
        return self.call("GET", "/api/webhooks/", params={"project": pid})


def choices_result(from_name: str, to_name: str, label: str) -> list[dict]:
    return [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}]


def is_valid_score(score: Any) -> bool:
    return (
        isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score) and 0.0 <= score <= 1.0
    )


def wait_for(
    check: Callable[[], tuple[bool, Any]], timeout: float, what: str, interval: float = 2.0, stable_for: int = 1
) -> Any:
    """Poll ``check() -> (ok, state)`` until ok holds ``stable_for`` polls in a row; else fail with the last state.

    ``check`` may raise: the exception text becomes the state (LS or the backend may be busy for a moment).
    """
    t0 = time.monotonic()
    streak = 0
    state: Any = None
    while True:
        try:
            ok, state = check()
        except (httpx.HTTPError, LSCallError) as e:
            ok, state = False, f"{type(e).__name__}: {e}"
        streak = streak + 1 if ok else 0
        if streak >= stable_for:
            return state
        if time.monotonic() - t0 > timeout:
            if not isinstance(state, str):
                state = json.dumps(state, indent=1, default=str)
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; last state:\n{_short(state, 4000)}"
            )
        time.sleep(interval)
