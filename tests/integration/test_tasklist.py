"""The task list (``labelstudio.tasklist``) against a real Label Studio: it follows LS through webhooks and through
lost webhooks, a re-score with it lists no task of the project, and a task deleted during an import does not
break the import."""

from __future__ import annotations

import uuid
from pathlib import Path

from ml_backend.jobs import context, tasks
from ml_backend.jobs.lock import ProjectLock
from ml_backend.labelstudio.client import LabelStudioClient
from ml_backend.labelstudio.tasklist import FILE_NAME, TaskList
from ml_backend.settings import Settings
from tests.integration.test_learning_loop import (  # noqa: F401  (loop, start_loop, loop_configs: fixtures)
    CONFIG,
    REDIS_URL,
    _annotation,
    current_predictions_problems,
    idle,
    loop,
    loop_configs,
    make_project,
    start_loop,
    wait_for,
)

# ruff: noqa: F811  (pytest fixtures imported above are parameters of the tests below)


def ls_tasks(ls_server, project_id: int) -> dict[int, bool]:
    """{task id: labelled} as LS lists the project (LS's own ``is_labeled``)."""
    with ls_server.client() as c:
        body = c.get("/api/tasks/", params={"project": project_id, "page_size": 5000}).json()
    return {t["id"]: t["is_labeled"] for t in body["tasks"]}


def import_texts(ls_server, project_id: int, texts: list[str]) -> list[int]:
    return (
        ls_server.sdk()
        .projects.import_tasks(project_id, request=[{"text": t} for t in texts], return_task_ids=True)
        .task_ids
    )


def delete_task(ls_server, task_id: int) -> None:
    with ls_server.client() as c:
        assert c.delete(f"/api/tasks/{task_id}/").status_code == 204


def test_the_task_list_follows_label_studio_through_webhooks_and_lost_webhooks(make_client, ls_server, tmp_path):
    project_id, key, ids, _ = make_project(ls_server, n_tasks=160, n_labelled=10)
    ls = LabelStudioClient(ls_server.url, ls_server.token)
    store = TaskList.of_project(tmp_path / "data" / "projects", project_id)

    first = store.sync(ls, project_id)
    assert first.full and first.added == 160 and first.labelled == 10
    assert set(store.ids()) == set(ids) and store.labelled_ids() == set(ids[:10])

    # webhooks as LS sends them reach the web app, which updates the same store the workers read
    client = make_client(
        data_dir=tmp_path / "data", label_studio_url=ls_server.url, label_studio_api_key=ls_server.token
    )
    assert client.post("/setup", json={"project": key, "schema": CONFIG}).status_code == 200
    created = import_texts(ls_server, project_id, ["A new review.", "Another new review."])
    with ls_server.client() as c:
        payload = [c.get(f"/api/tasks/{t}/").json() for t in created]
    resp = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": project_id}, "tasks": payload})
    assert resp.status_code == 201
    delete_task(ls_server, ids[20])
    resp = client.post(
        "/webhook", json={"action": "TASKS_DELETED", "project": {"id": project_id}, "tasks": [{"id": ids[20]}]}
    )
    assert resp.status_code == 200 and resp.json()["tasks"] == 1
    assert set(store.ids()) == set(ls_tasks(ls_server, project_id))  # before any sync
    # "delete all tasks" names no project, and ids that are no ids change nothing: the next sync tells
    assert client.post("/webhook", json={"action": "TASKS_DELETED", "tasks": [{"id": ids[5]}]}).status_code == 200
    odd = {"action": "TASKS_DELETED", "project": {"id": project_id}, "tasks": [{"id": "x"}, {"id": True}, 7]}
    assert client.post("/webhook", json=odd).json()["tasks"] == 0 and ids[5] in store.ids()

    # lost webhooks: tasks created and deleted, labels added and removed, and LS alone knows
    lost = import_texts(ls_server, project_id, [f"Unannounced review {i}." for i in range(3)])
    for task_id in (ids[3], ids[77], ids[78], ids[140], created[0]):
        delete_task(ls_server, task_id)
    with ls_server.client() as c:
        assert c.post(f"/api/tasks/{ids[50]}/annotations/", json=_annotation("fresh")).status_code == 201
        (annotation,) = c.get(f"/api/tasks/{ids[0]}/").json()["annotations"]
        assert c.delete(f"/api/annotations/{annotation['id']}/").status_code == 204
        skip = {**_annotation("rotten"), "was_cancelled": True}
        assert c.post(f"/api/tasks/{ids[60]}/annotations/", json=skip).status_code == 201
    report = store.sync(ls, project_id)

    in_ls = ls_tasks(ls_server, project_id)
    assert not report.full, report
    assert set(store.ids()) == set(in_ls) and set(lost) <= set(store.ids())
    assert report.added == 3 and report.removed == 5, report
    assert store.labelled_ids() == (set(ids[1:10]) - {ids[3]}) | {ids[50]}  # a skip is not a label
    assert "export every task" not in report.requests, report.requests
    unlabelled = store.unlabelled()
    assert [t["id"] for t in unlabelled] == sorted(t for t in in_ls if t not in store.labelled_ids())
    assert all(t["data"]["text"] for t in unlabelled)

    # webhooks out of order: the older task's lost, the newer one's delivered, and a deletion nobody announced
    older, newer = import_texts(ls_server, project_id, ["An older review.", "A newer review."])
    with ls_server.client() as c:
        payload = [c.get(f"/api/tasks/{newer}/").json()]
    client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": project_id}, "tasks": payload})
    delete_task(ls_server, ids[100])
    report = store.sync(ls, project_id)
    assert not report.full and report.added == 1 and report.removed == 1, report
    assert set(store.ids()) == set(ls_tasks(ls_server, project_id)) and older in store.ids()

    # a missing file is a full listing, not an error
    forget(store)
    assert store.sync(ls, project_id).full and set(store.ids()) == set(ls_tasks(ls_server, project_id))


def forget(store: TaskList) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink(missing_ok=True)


def ls_task_requests(ls_server, project_id: int, since: int) -> list[str]:
    """The task-listing requests for the project in LS's server log after byte ``since`` (each line once)."""
    with open(ls_server.log_path, encoding="utf-8", errors="replace") as f:
        f.seek(since)
        lines = f.read().splitlines()
    marker = f"project={project_id}&"
    return sorted({line for line in lines if '"GET /api/tasks/?' in line and marker in line})


def test_a_rescore_lists_no_task_yet_every_unlabelled_task_gets_one_current_prediction(loop, ls_server):
    client, _ = loop
    project_id, key, ids, _ = make_project(ls_server, n_tasks=200, n_labelled=12)
    first = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]
    wait_for("the cold-start scoring", lambda: (s := idle(client, project_id)) and s["jobs"] and s, timeout=300)
    assert current_predictions_problems(client, ls_server, project_id) == []

    # LS changes and no webhook tells: new tasks, deleted tasks, a deleted label (the task is back in the pool)
    new = import_texts(ls_server, project_id, [f"A review nobody announced, number {i}." for i in range(4)])
    for task_id in (ids[30], ids[31], ids[150]):
        delete_task(ls_server, task_id)
    with ls_server.client() as c:
        (annotation,) = c.get(f"/api/tasks/{ids[0]}/").json()["annotations"]
        assert c.delete(f"/api/annotations/{annotation['id']}/").status_code == 204
    log_start = ls_server.log_path.stat().st_size
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}})
    sdk = ls_server.sdk()
    wait_for(  # without listing tasks: the log below must hold the worker's requests only
        "a trained version in LS",
        lambda: (
            (s := idle(client, project_id))
            and s["current_version"] != first
            and sdk.projects.get(project_id).model_version == s["current_version"]
            and s
        ),
        timeout=300,
    )
    requests = ls_task_requests(ls_server, project_id, log_start)
    status = client.get(f"/projects/{project_id}/status").json()
    rescore = next(j for j in status["jobs"] if j["kind"] == "rescore")
    assert rescore["status"] == "finished" and rescore["meta"]["full_listing"] is False, rescore

    # every task listing of the project since the training was filtered (labelled tasks, new ids, id ranges)
    assert requests and all("query=" in line for line in requests), requests
    tasks_now = ls_tasks(ls_server, project_id)
    assert set(new) <= set(tasks_now) and ids[0] in tasks_now and not tasks_now[ids[0]]
    # exactly one prediction of the current version per unlabelled task, new and unlabelled ones included
    assert current_predictions_problems(client, ls_server, project_id) == []


def worker_settings(ls_server, tmp_path: Path, loop_configs: Path, **overrides) -> Settings:
    """Settings of a worker context built in the test process, on its own queue, against the test LS."""
    return Settings(
        data_dir=tmp_path / "data",
        redis_url=REDIS_URL,
        queue_name=f"test-{uuid.uuid4().hex[:8]}",
        label_studio_url=ls_server.url,
        label_studio_api_key=ls_server.token,
        model_configs_dir=loop_configs,
        **overrides,
    )


def test_a_task_deleted_during_an_import_does_not_break_it(ls_server, tmp_path, loop_configs):
    project_id, _, ids, _ = make_project(ls_server, n_tasks=30, n_labelled=0)
    settings = worker_settings(ls_server, tmp_path, loop_configs)
    ctx = context.WorkerContext.build(settings, preload=False)
    store = TaskList.of_project(settings.projects_dir, project_id)
    store.sync(ctx.ls, project_id)
    assert (settings.projects_dir / str(project_id) / FILE_NAME).is_file()
    delete_task(ls_server, ids[7])  # after the sync, before the import: LS refuses a request naming it
    predictions = [
        {"task": t, "result": [], "score": i / 30, "model_version": "v-test"} for i, t in enumerate(ids[:20])
    ]
    with ProjectLock(ctx.redis, ctx.queue.key("lock:score", project_id), "test-import", wait=10) as lock:
        created = tasks._import(ctx, project_id, "v-test", predictions, lock, dedupe=False)
    assert created == 19
    assert ctx.ls.model_versions(project_id) == {"v-test": 19}
    assert ids[7] not in store.ids()
    # the store knows what LS holds: the next sync needs no reload of the predictions
    assert store.version_counts() == {"v-test": 19} and not store.sync(ctx.ls, project_id).predictions_reloaded
    # and so does a full listing (LS's export names predictions by id only: they are read with one more request)
    forget(store)
    report = store.sync(ctx.ls, project_id)
    assert report.full and store.version_counts() == {"v-test": 19}
    assert store.unlabelled()[0]["predictions"] == [{"model_version": "v-test", "score": 0.0}]
