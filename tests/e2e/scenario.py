"""The active-learning loop the e2e tests drive: connect, wait for the pool's scores, check /next, label, re-check.

Each step asserts what a Label Studio user would see, and on a timeout reports the last state it observed (LS's
project, prediction versions and counts, the backend's status and jobs).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.lsapi import LSApi, Prediction, choices_result, is_valid_score, wait_for

# bounded waits (seconds); generous for 2 shared cores, overridable for slow machines
PREDICTIONS_TIMEOUT = float(os.environ.get("E2E_PREDICTIONS_TIMEOUT", "180"))
RETRAIN_TIMEOUT = float(os.environ.get("E2E_RETRAIN_TIMEOUT", "240"))

BUSY_JOB_STATES = {"queued", "started", "deferred", "scheduled"}


@dataclass
class Connected:
    pid: int
    ml: dict
    setup_version: str


@dataclass
class PoolState:
    """What LS and the backend say about a project's predictions at one moment."""

    project_version: str | None
    backend_version: str | None
    sampling: str | None
    versions: dict[str, int]
    per_task: dict[int, list[Prediction]] = field(default_factory=dict)
    jobs: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "project.model_version": self.project_version,
            "backend current_version": self.backend_version,
            "sampling": self.sampling,
            "model-versions": self.versions,
            "jobs": [
                {k: j.get(k) for k in ("kind", "status", "error")} | {"stage": (j.get("meta") or {}).get("stage")}
                for j in self.jobs[:8]
            ],
            "problems": self.problems[:15]
            + ([f"... {len(self.problems) - 15} more"] if len(self.problems) > 15 else []),
        }


def connect(api: LSApi, backend, pid: int, title: str) -> Connected:
    """Connect the backend by URL with the SDK and check LS's view of it: CONNECTED, a version, the webhook."""
    created = api.connect_ml_backend(pid, backend.url, title)
    ml_id = created.id
    mls = api.ml_backends(pid)
    assert [m["id"] for m in mls] == [ml_id], f"GET /api/ml?project={pid} lists {mls}"
    ml = api.ml_backend(ml_id)
    assert ml["state"] == "CO", (
        f"ML backend state is {ml['state']!r} (error: {ml.get('error_message')!r}), expected 'CO' (CONNECTED): {ml}"
    )
    assert ml["url"].rstrip("/") == backend.url
    version = ml.get("model_version")
    assert isinstance(version, str) and version, f"/setup gave no model_version: {ml}"
    hooks = [h for h in api.webhooks(pid) if h["url"].rstrip("/") == f"{backend.url}/webhook"]
    assert len(hooks) == 1, f"expected exactly one webhook to {backend.url}/webhook, LS has {api.webhooks(pid)}"
    assert hooks[0]["send_payload"] and hooks[0]["send_for_all_actions"] and hooks[0]["is_active"], hooks[0]
    return Connected(pid, ml, version)


def pool_state(api: LSApi, backend, pid: int, expected_tasks: set[int], require_result: bool = False) -> PoolState:
    """LS's and the backend's view of the project's predictions; ``problems`` lists what is not (yet) right.

    ``require_result``: each prediction must pre-annotate (a non-empty result). A version trained on no label may
    send an empty result with only a score (cold start: nothing to predict a class from).
    """
    project = api.project(pid)
    status = backend.status(pid)
    preds = api.predictions(pid)
    state = PoolState(
        project.get("model_version"),
        status.get("current_version"),
        project.get("sampling"),
        api.model_versions(pid),
        jobs=status.get("jobs") or [],
    )
    cur = state.backend_version
    for p in preds:
        if p.model_version == cur:
            state.per_task.setdefault(p.task, []).append(p)
    for t in sorted(expected_tasks):
        mine = state.per_task.get(t, [])
        if len(mine) != 1:
            state.problems.append(f"task {t}: {len(mine)} predictions of {cur}")
        elif not is_valid_score(mine[0].score):
            state.problems.append(f"task {t}: score {mine[0].score!r} is not a finite number in [0, 1]")
        elif require_result and not mine[0].result:
            state.problems.append(f"task {t}: empty result")
    return state


def converged(state: PoolState, version: str | None = None) -> bool:
    """The pool is fully scored by the backend's current version, the project points at it, nothing else is left."""
    cur = state.backend_version
    return (
        bool(cur)
        and (version is None or cur == version)
        and not state.problems
        and state.project_version == cur
        and set(state.versions) == {cur}
        and not any(j.get("status") in BUSY_JOB_STATES for j in state.jobs)
    )


def wait_initial_predictions(api: LSApi, backend, conn: Connected, task_ids: set[int]) -> PoolState:
    """After the first /setup the backend scores the whole pool, imports it and points the project at it."""

    def check():
        s = pool_state(api, backend, conn.pid, task_ids)
        return converged(s, conn.setup_version), s

    t0 = time.monotonic()
    state = wait_for(
        lambda: _summarised(check),
        PREDICTIONS_TIMEOUT,
        f"every task to get one prediction of {conn.setup_version} and the project to point at it",
        interval=2.0,
        stable_for=2,
    )
    print(
        f"[e2e] project {conn.pid}: {len(task_ids)} tasks scored by {conn.setup_version} "
        f"{time.monotonic() - t0:.1f} s after connecting"
    )
    return state


def _summarised(check):
    ok, s = check()
    return ok, (s if ok else s.summary())


def scores_of(state: PoolState) -> dict[int, float]:
    return {t: ps[0].score for t, ps in state.per_task.items() if len(ps) == 1}


def assert_next_is_lowest(api: LSApi, pid: int, state: PoolState, candidates: set[int]) -> dict:
    """``GET /api/projects/{id}/next`` (Uncertainty sampling) serves the lowest-score task among ``candidates``."""
    assert state.sampling == "Uncertainty sampling", f"project sampling is {state.sampling!r}"
    scores = {t: s for t, s in scores_of(state).items() if t in candidates}
    assert scores, "no scored candidate task"
    lowest = min(scores.values())
    task = api.next_task(pid)
    assert task is not None, "/next served nothing"
    tid = task["id"]
    assert tid in scores, f"/next served task {tid}, which is not an unlabelled scored task"
    assert math.isclose(scores[tid], lowest, abs_tol=1e-9), (
        f"/next served task {tid} with score {scores[tid]}, but the lowest score is {lowest} "
        f"(tasks {sorted(t for t, s in scores.items() if math.isclose(s, lowest, abs_tol=1e-9))}); "
        f"5 lowest: {sorted(scores.items(), key=lambda kv: kv[1])[:5]}"
    )
    return task


def label_following_next(
    api: LSApi,
    pid: int,
    truth: dict[int, str],
    from_name: str,
    to_name: str,
    n: int,
    skip_at: int,
    update_at: int,
    wrong_label: dict[str, str],
) -> dict[str, Any]:
    """Label ``n`` tasks in the order /next serves them, like an annotator: true labels, one skip (``skip_at``),
    and one annotation first submitted with a wrong label then corrected by PATCH (``update_at``)."""
    done: list[int] = []
    skipped: list[int] = []
    updated: list[int] = []
    for k in range(n):
        task = api.next_task(pid)
        assert task is not None, f"/next served nothing after {k} annotations"
        tid = task["id"]
        assert tid not in done, f"/next served task {tid} again after it was annotated"
        if k == skip_at:
            ann = api.annotate(tid, [], was_cancelled=True)
            assert ann["was_cancelled"] is True
            skipped.append(tid)
        elif k == update_at:
            ann = api.annotate(tid, choices_result(from_name, to_name, wrong_label[truth[tid]]))
            upd = api.update_annotation(ann["id"], choices_result(from_name, to_name, truth[tid]))
            assert upd["result"][0]["value"]["choices"] == [truth[tid]], upd
            updated.append(tid)
        else:
            api.annotate(tid, choices_result(from_name, to_name, truth[tid]))
        done.append(tid)
        time.sleep(0.05)
    return {"annotated": done, "skipped": skipped, "updated": updated}


def wait_retrained(api: LSApi, backend, pid: int, old_version: str, all_tasks: set[int]) -> tuple[PoolState, set[int]]:
    """A new version is current everywhere: project, one prediction per unlabelled task, no old predictions."""
    unlabelled: set[int] = set()

    def check():
        nonlocal unlabelled
        unlabelled = {t["id"] for t in api.tasks(pid) if not t["is_labeled"]}
        s = pool_state(api, backend, pid, unlabelled, require_result=True)
        ok = converged(s) and s.backend_version != old_version
        if s.backend_version == old_version:
            s.problems.insert(0, f"backend still at {old_version}")
        return ok, s

    t0 = time.monotonic()
    state = wait_for(
        lambda: _summarised(check),
        RETRAIN_TIMEOUT,
        f"a version newer than {old_version} to replace it in project {pid}",
        interval=2.0,
        stable_for=2,
    )
    print(
        f"[e2e] project {pid}: {state.backend_version} replaced {old_version} on {len(unlabelled)} unlabelled "
        f"tasks {time.monotonic() - t0:.1f} s after the last annotation; jobs: "
        f"{[(j.get('kind'), j.get('status')) for j in state.jobs]}"
    )
    return state, unlabelled
