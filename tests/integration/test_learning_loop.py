"""The learning loop with a real Label Studio, a real Redis and a real `ml-backend worker` process.

The web app runs in-process (the real ASGI app through TestClient); the worker is a separate process started
with the console script, sharing DATA_DIR and Redis, exactly as in production.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from rq.job import Job

from ml_backend.learning.registry import Registry
from ml_backend.simulation.datasets import rotten_tomatoes
from tests.lsserver import free_port, stop_process_group, tail_file

CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>'
)
REDIS_URL = "redis://127.0.0.1:6379/11"


@pytest.fixture(scope="module")
def loop_configs(configs_dir):
    """A deliberately slow training (many epochs) so a test can kill the worker in the middle of it."""
    base = yaml.safe_load((configs_dir / "text-minilm.yaml").read_text())
    slow = {**base, "name": "minilm-slow", "training": {**base["training"], "epochs": 3000}}
    (configs_dir / "text-minilm-slow.yaml").write_text(yaml.safe_dump(slow))
    return configs_dir


@pytest.fixture()
def start_loop(tmp_path, ls_server, loop_configs, encoders):
    """start_loop(**env) -> (web client, worker process) sharing one DATA_DIR, a fresh queue and the settings."""
    from fastapi.testclient import TestClient

    from ml_backend.api.app import create_app
    from ml_backend.settings import Settings

    started: list[tuple[subprocess.Popen, Path]] = []

    def start(**worker_env: str):
        env = {
            **os.environ,
            "DATA_DIR": str(tmp_path / "data"),
            "REDIS_URL": REDIS_URL,
            "QUEUE_NAME": f"test-loop-{uuid.uuid4().hex[:8]}",  # own queue and keys: no leftovers, no neighbours
            "LABEL_STUDIO_URL": ls_server.url,
            "LABEL_STUDIO_API_KEY": ls_server.token,
            "MODEL_CONFIGS_DIR": str(loop_configs),
            "TORCH_THREADS": "1",
            "LOG_LEVEL": "INFO",
            **worker_env,
        }
        log_path = tmp_path / f"worker-{len(started)}.log"
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                [str(Path(sys.executable).parent / "ml-backend"), "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append((worker, log_path))
        settings = Settings(
            **{
                "data_dir": tmp_path / "data",
                "redis_url": REDIS_URL,
                "queue_name": env["QUEUE_NAME"],
                "label_studio_url": ls_server.url,
                "label_studio_api_key": ls_server.token,
                "model_configs_dir": loop_configs,
                **{k.lower(): v for k, v in worker_env.items()},
            }
        )  # the web app enqueues: same knobs
        return TestClient(create_app(settings, encoders=encoders)), worker

    yield start
    for worker, log_path in started:
        stop_process_group(worker)
        # captured output is shown by pytest for failing tests only
        print(f"--- worker log tail ({log_path})\n{tail_file(log_path, 150)}")
    print(f"--- Label Studio log tail\n{ls_server.tail_log(40)}")


@pytest.fixture()
def loop(start_loop):
    return start_loop()


def _annotation(label: str) -> dict:
    return {"result": [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]}


def make_project(ls_server, n_tasks: int, n_labelled: int) -> tuple[int, str, list[int], dict[int, str]]:
    """An LS project with real review snippets; the first ``n_labelled`` tasks come with their true label."""
    sdk = ls_server.sdk()
    project = sdk.projects.create(title=f"loop-{time.time()}", label_config=CONFIG)
    data = rotten_tomatoes(n=n_tasks, seed=3)
    tasks = [
        {"data": {"text": t}, **({"annotations": [_annotation(label)]} if i < n_labelled else {})}
        for i, (t, label) in enumerate(zip(data.texts, data.labels))
    ]
    ids = sdk.projects.import_tasks(project.id, request=tasks, return_task_ids=True).task_ids
    labels = {tid: label for tid, label in zip(ids, data.labels)}
    created = int(project.created_at.timestamp()) if project.created_at else 0
    return project.id, f"{project.id}.{created}", list(ids), labels


def wait_for(what: str, check, timeout: float = 240.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def idle(client, project_id: int) -> dict | None:
    """The project status once no job of it is queued, scheduled or running."""
    status = client.get(f"/projects/{project_id}/status").json()
    busy = [j for j in status["jobs"] or [] if j["status"] in ("queued", "started", "scheduled", "deferred")]
    return None if busy else status


def predictions_by_task(ls_server, project_id: int) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    with ls_server.client() as c:
        page = 1
        while True:
            resp = c.get("/api/tasks/", params={"project": project_id, "page": page, "page_size": 500, "fields": "all"})
            if resp.status_code == 404:
                break
            body = resp.json()
            tasks = body["tasks"] if isinstance(body, dict) else body
            for t in tasks:
                out[t["id"]] = t["predictions"]
            if len(tasks) < 500:
                break
            page += 1
    return out


def test_a_label_reported_before_label_studio_lists_it_is_waited_for_and_trained(loop, ls_server):
    """LS may send ANNOTATION_CREATED before the annotation is readable (seen on PostgreSQL): a training that read
    the labels at once would miss the burst's last label until the next annotation. It waits for the reported id."""
    client, _ = loop
    project_id, key, ids, labels = make_project(ls_server, n_tasks=30, n_labelled=20)
    client.post("/setup", json={"project": key, "schema": CONFIG})
    wait_for("the first scoring", lambda: (s := idle(client, project_id)) and s["jobs"])
    sdk = ls_server.sdk()
    # annotation ids are autoincrement (never reused) and nothing else creates one meanwhile: the next id is known
    probe = sdk.annotations.create(id=ids[20], **_annotation(labels[ids[20]]))
    sdk.annotations.delete(id=probe.id)
    late = ids[21]
    annotation = {"id": probe.id + 1, "task": late, **_annotation(labels[late])}
    hook = {"action": "ANNOTATION_CREATED", "project": {"id": project_id}, "task": {"id": late}}
    hook["annotation"] = annotation
    assert client.post("/webhook", json=hook).status_code == 201
    time.sleep(1.0)  # the training has started and read the labels without it
    assert sdk.annotations.create(id=late, **_annotation(labels[late])).id == probe.id + 1
    status = wait_for("the training", lambda: (s := idle(client, project_id)) and s["trained"] and s)
    assert status["n_labels"] == 21, status["n_labels"]  # the 20 imported labels and the late one


def _stale_counter(ls_server, task_id: int) -> None:
    """Leave LS's task row as a bulk import's recount that raced an annotation leaves it (measured on PostgreSQL:
    the recount read the count before the annotation was saved and wrote it after): ``total_annotations`` 0 while
    the annotation exists. Written into LS's own database, since the race itself cannot be timed in a test."""
    db = ls_server.data_dir / "label_studio.sqlite3"
    with sqlite3.connect(db, timeout=30) as conn:
        changed = conn.execute(
            "UPDATE task SET total_annotations = 0, is_labeled = 0 WHERE id = ?", (task_id,)
        ).rowcount
    assert changed == 1


def test_a_label_whose_task_counter_label_studio_lost_is_read_directly_and_kept_for_later_trainings(loop, ls_server):
    """LS's labelled listing filters on the task's ``total_annotations``, which LS's own bulk import recount can
    leave at 0 for a task annotated meanwhile: the reported annotation is read one by one, and the next training
    (whose webhook reports only its own label) still has it while the counter stays wrong."""
    client, _ = loop
    project_id, key, ids, labels = make_project(ls_server, n_tasks=30, n_labelled=20)
    client.post("/setup", json={"project": key, "schema": CONFIG})
    wait_for("the first scoring", lambda: (s := idle(client, project_id)) and s["jobs"])
    sdk = ls_server.sdk()

    def label(task_id: int) -> None:
        annotation = sdk.annotations.create(id=task_id, **_annotation(labels[task_id]))
        hook = {"action": "ANNOTATION_CREATED", "project": {"id": project_id}, "task": {"id": task_id}}
        hook["annotation"] = {"id": annotation.id, "task": task_id, **_annotation(labels[task_id])}
        if task_id == ids[20]:
            _stale_counter(ls_server, task_id)
        assert client.post("/webhook", json=hook).status_code == 201

    label(ids[20])
    status = wait_for("the training", lambda: (s := idle(client, project_id)) and s["n_labels"] == 21 and s)
    assert status["trained"]
    _stale_counter(ls_server, ids[20])  # the re-score's imports recounted it: lose it again
    label(ids[21])
    status = wait_for("the next training", lambda: (s := idle(client, project_id)) and s["n_labels"] >= 22 and s)
    assert status["n_labels"] == 22, status["n_labels"]
    reg = Registry(Path(client.app.state.backend.settings.projects_dir))
    assert {ids[20], ids[21]} <= set(reg.current(project_id).labelled_task_ids)


def test_a_burst_of_200_webhooks_costs_at_most_two_trainings_and_loses_no_label(loop, ls_server):
    client, worker = loop
    project_id, key, ids, labels = make_project(ls_server, n_tasks=240, n_labelled=200)
    v0 = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]
    latencies = []
    for tid in ids[:200]:
        t0 = time.perf_counter()
        resp = client.post(
            "/webhook",
            json={
                "action": "ANNOTATION_CREATED",
                "project": {"id": project_id},
                "task": {"id": tid},
                "annotation": {"task": tid, **_annotation(labels[tid])},
            },
        )
        latencies.append(time.perf_counter() - t0)
        assert resp.status_code == 201, resp.text
    print(f"webhook latency p50 {sorted(latencies)[100] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")

    status = wait_for(
        "the loop to settle on a trained version", lambda: (s := idle(client, project_id)) and s["trained"] and s
    )
    trainings = [j for j in status["jobs"] if j["kind"] == "train"]
    assert 1 <= len(trainings) <= 2, trainings
    assert all(j["status"] == "finished" for j in trainings)
    reg = Registry(Path(client.app.state.backend.settings.projects_dir))
    current = reg.current(project_id)
    assert current.version != v0 and current.trained
    assert set(current.labelled_task_ids) == set(ids[:200])  # the final version saw every label
    assert current.metrics["n_holdout"] > 0 and 0.0 <= current.metrics["accuracy"] <= 1.0

    # re-scoring: exactly one prediction of the new version per unlabelled task, older versions gone
    preds = predictions_by_task(ls_server, project_id)
    for tid in ids[200:]:
        assert [p["model_version"] for p in preds[tid]] == [current.version], (tid, preds[tid])
    assert ls_server.sdk().projects.get(project_id).model_version == current.version
    with ls_server.client() as c:
        assert c.get(f"/api/projects/{project_id}/model-versions/").json() == {current.version: 40}


def test_a_worker_killed_mid_training_keeps_the_old_version_and_the_retry_finishes(loop, ls_server):
    client, worker = loop
    project_id, key, ids, labels = make_project(ls_server, n_tasks=80, n_labelled=60)
    v0 = client.post(
        "/setup", json={"project": key, "schema": CONFIG, "extra_params": {"model_config": "text-minilm-slow"}}
    ).json()["model_version"]
    wait_for("the first pool scoring", lambda: (s := idle(client, project_id)) and s["jobs"] and s)
    resp = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}})
    assert resp.status_code == 201
    job_id = resp.json()["job"]

    def training_job():
        jobs = client.get(f"/projects/{project_id}/status").json()["jobs"]
        job = next((j for j in jobs if j["id"] == job_id), None)
        return job if job and job["meta"].get("stage") == "training" else None

    job = wait_for("the training to start", training_job, every=0.1)
    horse = job["meta"]["pid"]
    assert horse != worker.pid  # rq runs each job in a forked work horse
    os.kill(horse, signal.SIGKILL)

    reg = Registry(Path(client.app.state.backend.settings.projects_dir))
    assert reg.current(project_id).version == v0  # nothing half-trained was published
    assert (
        client.post(
            "/predict",
            json={"tasks": [{"id": ids[70], "data": {"text": "ok"}}], "project": key, "label_config": CONFIG},
        ).json()["results"][0]["model_version"]
        == v0
    )

    def retried_and_done():
        jobs = client.get(f"/projects/{project_id}/status").json()["jobs"]
        job = next(j for j in jobs if j["id"] == job_id)
        return job if job["status"] == "finished" else None

    job = wait_for("the retried training to finish", retried_and_done, timeout=300)
    assert job["retries_left"] < 3  # it was retried, not re-enqueued by someone else
    current = reg.current(project_id)
    assert current.trained and current.version != v0 and len(current.labelled_task_ids) == 60
    assert worker.poll() is None  # the worker itself survived its work horse


def test_new_tasks_are_scored_with_the_current_version(loop, ls_server):
    client, _ = loop
    project_id, key, ids, _ = make_project(ls_server, n_tasks=30, n_labelled=0)
    version = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]
    wait_for("the first pool scoring", lambda: (s := idle(client, project_id)) and s["jobs"] and s)
    sdk = ls_server.sdk()
    new_ids = sdk.projects.import_tasks(
        project_id, request=[{"text": f"A brand new review number {i}."} for i in range(5)], return_task_ids=True
    ).task_ids
    tasks = [
        {"id": tid, "data": {"text": f"A brand new review number {i}."}, "annotations": [], "predictions": []}
        for i, tid in enumerate(new_ids)
    ]
    resp = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": project_id}, "tasks": tasks})
    assert resp.status_code == 201 and resp.json()["tasks"] == 5
    wait_for("the new tasks to be scored", lambda: (s := idle(client, project_id)) and len(s["jobs"]) >= 2 and s)
    preds = predictions_by_task(ls_server, project_id)
    for tid in list(ids) + list(new_ids):
        assert [p["model_version"] for p in preds[tid]] == [version], (tid, preds[tid])
        assert 0.0 <= preds[tid][0]["score"] <= 1.0


def test_label_studio_refusing_the_token_fails_the_job_clearly_and_keeps_the_version(start_loop, ls_server):
    client, _ = start_loop(LABEL_STUDIO_API_KEY="0" * 40, JOB_RETRIES="1")
    project_id, key, _, _ = make_project(ls_server, n_tasks=20, n_labelled=10)
    version = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]
    job_id = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}}).json()["job"]

    def failed_for_good():
        jobs = client.get(f"/projects/{project_id}/status").json()["jobs"]
        job = next((j for j in jobs if j["id"] == job_id), None)
        return job if job and job["status"] == "failed" else None

    job = wait_for("the training to fail after its retry", failed_for_good, timeout=120)
    assert job["retries_left"] == 0 and "401" in job["error"] and "LABEL_STUDIO_API_KEY" in job["error"]
    assert client.get(f"/projects/{project_id}/status").json()["current_version"] == version


def test_a_fully_labelled_project_trains_and_rescoring_finishes_without_a_version_to_point_at(loop, ls_server):
    client, _ = loop
    project_id, key, _, _ = make_project(ls_server, n_tasks=12, n_labelled=12)
    client.post("/setup", json={"project": key, "schema": CONFIG})
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}})
    status = wait_for(
        "training and rescoring to settle",
        lambda: (s := idle(client, project_id)) and s["trained"] and len(s["jobs"]) >= 3 and s,
    )
    assert [j["status"] for j in status["jobs"]] == ["finished"] * len(status["jobs"]), status["jobs"]
    assert status["jobs"][0]["meta"]["stage"] == "done: no unlabelled task to score"


def current_predictions_problems(client, ls_server, project_id: int) -> list[str]:
    """What is wrong with LS's queue: every unlabelled task needs exactly one prediction of the backend's current
    version, and the project must point at it (else LS serves in random order)."""
    version = client.get(f"/projects/{project_id}/status").json()["current_version"]
    problems = []
    if ls_server.sdk().projects.get(project_id).model_version != version:
        problems.append(f"project does not point at {version}")
    with ls_server.client() as c:
        tasks = c.get("/api/tasks/", params={"project": project_id, "page_size": 1000, "fields": "all"}).json()
    for t in tasks["tasks"] if isinstance(tasks, dict) else tasks:
        current = [p for p in t["predictions"] if p["model_version"] == version]
        if not t["is_labeled"] and len(current) != 1:
            problems.append(f"task {t['id']}: {len(current)} predictions of {version}")
    return problems


def settled(client, ls_server, project_id: int, min_jobs: int) -> dict | None:
    status = idle(client, project_id)
    if not status or len(status["jobs"]) < min_jobs:
        return None
    return status if not current_predictions_problems(client, ls_server, project_id) else None


def test_a_task_whose_annotation_is_deleted_gets_a_current_prediction_again(loop, ls_server):
    client, _ = loop
    project_id, key, ids, _ = make_project(ls_server, n_tasks=40, n_labelled=12)
    client.post("/setup", json={"project": key, "schema": CONFIG})
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}})
    wait_for("the first training and its scoring", lambda: settled(client, ls_server, project_id, min_jobs=3))

    with ls_server.client() as c:
        task = c.get(f"/api/tasks/{ids[0]}/").json()
        (annotation,) = task["annotations"]
        assert c.delete(f"/api/annotations/{annotation['id']}/").status_code == 204
    assert predictions_by_task(ls_server, project_id)[ids[0]] == []  # it was labelled: no prediction yet
    # what LS sends on the deletion; no new label comes
    resp = client.post(
        "/webhook",
        json={
            "action": "ANNOTATIONS_DELETED",
            "project": {"id": project_id},
            "annotations": [{"id": annotation["id"]}],
        },
    )
    assert resp.status_code == 201
    status = wait_for(
        "the task to get a current prediction", lambda: settled(client, ls_server, project_id, min_jobs=5)
    )
    (prediction,) = predictions_by_task(ls_server, project_id)[ids[0]]
    assert prediction["model_version"] == status["current_version"] and 0.0 <= prediction["score"] <= 1.0


def test_a_refused_training_still_leaves_every_unlabelled_task_with_a_current_prediction(loop, ls_server):
    client, _ = loop
    project_id, key, ids, labels = make_project(ls_server, n_tasks=30, n_labelled=0)
    client.post("/setup", json={"project": key, "schema": CONFIG})
    sdk = ls_server.sdk()
    for tid in ids[:3]:  # labels of one class only: no classifier can be trained on them
        sdk.annotations.create(tid, **_annotation("fresh"))
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}})
    status = wait_for("the first training and scoring", lambda: settled(client, ls_server, project_id, min_jobs=3))
    assert not status["trained"]
    versions = len(status["versions"])
    # tasks whose scoring never happened (their TASKS_CREATED webhook was lost), then a training with nothing new
    new_ids = sdk.projects.import_tasks(
        project_id, request=[{"text": f"An unscored review, number {i}."} for i in range(4)], return_task_ids=True
    ).task_ids
    assert current_predictions_problems(client, ls_server, project_id)  # the 4 new tasks lack a prediction
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}})
    status = wait_for(
        "every unlabelled task to have a current prediction", lambda: settled(client, ls_server, project_id, min_jobs=5)
    )
    assert len(status["versions"]) == versions and not status["trained"]  # refused: nothing was published
    preds = predictions_by_task(ls_server, project_id)
    assert all(len(preds[t]) == 1 for t in new_ids), {t: preds[t] for t in new_ids}
    assert status["jobs"][0]["kind"] == "rescore" and status["jobs"][0]["meta"]["stage"].startswith("done: filled")


def test_a_burst_of_rescore_requests_runs_at_most_two_rescores(loop, ls_server):
    client, _ = loop
    project_id, key, _, _ = make_project(ls_server, n_tasks=60, n_labelled=0)
    client.post("/setup", json={"project": key, "schema": CONFIG})  # enqueues the first pool scoring
    # running: it holds the scoring lock and has freed the waiting slot (its first progress report comes after)
    first = wait_for(
        "the first pool scoring to start",
        lambda: next(
            (
                j
                for j in client.get(f"/projects/{project_id}/status").json()["jobs"]
                if j["kind"] == "rescore" and j["status"] == "started" and j["meta"]["stage"] != "queued"
            ),
            None,
        ),
        every=0.02,
    )
    queue = client.app.state.backend.queue()
    requested = {queue.request_rescore(project_id) for _ in range(200)}  # e.g. a burst of new versions
    assert len(requested) == 1 and first["id"] not in requested
    status = wait_for("the re-scores to settle", lambda: settled(client, ls_server, project_id, min_jobs=2))
    rescores = [j for j in status["jobs"] if j["kind"] == "rescore"]
    assert {j["id"] for j in rescores} == requested | {first["id"]}, rescores
    assert all(j["status"] == "finished" for j in rescores), rescores
    with ls_server.client() as c:
        assert c.get(f"/api/projects/{project_id}/model-versions/").json() == {status["current_version"]: 60}


def test_a_label_config_change_during_a_training_is_not_overwritten(loop, ls_server):
    client, _ = loop
    project_id, key, _, _ = make_project(ls_server, n_tasks=40, n_labelled=20)
    client.post("/setup", json={"project": key, "schema": CONFIG, "extra_params": {"model_config": "text-minilm-slow"}})
    job_id = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}}).json()["job"]

    def training_job():
        jobs = client.get(f"/projects/{project_id}/status").json()["jobs"]
        job = next((j for j in jobs if j["id"] == job_id), None)
        return job if job and job["meta"].get("stage") == "training" else None

    wait_for("the training to start", training_job, every=0.1)
    three = CONFIG.replace('<Choice value="rotten"/>', '<Choice value="rotten"/><Choice value="meh"/>')
    changed = client.post("/setup", json={"project": key, "schema": three}).json()["model_version"]

    def retrained():
        status = idle(client, project_id)
        return status if status and status["trained"] else None

    status = wait_for("the training on the new label set", retrained, timeout=400)
    jobs = {j["id"]: j for j in status["jobs"]}
    assert jobs[job_id]["status"] == "finished" and jobs[job_id]["meta"]["stage"] == "discarded", jobs[job_id]
    reg = Registry(Path(client.app.state.backend.settings.projects_dir))
    after_change = [v for v in reg.versions(project_id) if v.number > reg.get_version(project_id, changed).number]
    assert after_change and all(set(v.metrics["class_counts"]) == {"fresh", "rotten", "meh"} for v in after_change)
    assert reg.current(project_id).version in {v.version for v in after_change}


class Forwarder:
    """A TCP relay from a local port to Label Studio: LS "is down" until it starts (nothing listens there)."""

    def __init__(self, port: int, target: str):
        self.target = (urlparse(target).hostname, urlparse(target).port)
        self.server = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def close(self) -> None:
        self.server.close()


def test_a_first_scoring_that_failed_for_good_is_retried_once_label_studio_is_back(start_loop, ls_server):
    port = free_port()
    client, _ = start_loop(LABEL_STUDIO_URL=f"http://127.0.0.1:{port}", JOB_RETRIES="0", LABEL_STUDIO_TIMEOUT="5")
    project_id, key, ids, _ = make_project(ls_server, n_tasks=20, n_labelled=0)
    client.post("/setup", json={"project": key, "schema": CONFIG})

    def waiting_retry():
        status = client.get(f"/projects/{project_id}/status").json()
        late = [j for j in status["jobs"] if j["kind"] == "rescore" and j["status"] == "scheduled"]
        # the job's failure handler schedules the late re-score and records the error before rq moves the job
        # itself to its failed registry: wait for both, or a snapshot in between sees it still "started"
        failed = any(j["status"] == "failed" for j in status["jobs"])
        return status if late and failed and status["last_error"] else None

    status = wait_for("a later re-score to be scheduled after the failure", waiting_retry, timeout=120)
    assert "cannot reach Label Studio" in status["last_error"], status["last_error"]
    (late,) = [j for j in status["jobs"] if j["status"] == "scheduled"]
    assert late["meta"]["late_round"] == 1 and [j["status"] for j in status["jobs"]] == ["scheduled", "failed"]

    forwarder = Forwarder(port, ls_server.url)  # Label Studio is back
    try:
        queue = client.app.state.backend.queue()
        # skip the 10 minutes the late re-score would wait: make it due now, the worker's scheduler enqueues it
        queue.queue.scheduled_job_registry.schedule(Job.fetch(late["id"], connection=queue.redis), datetime.now(UTC))
        status = wait_for("the pool to be scored", lambda: settled(client, ls_server, project_id, min_jobs=2))
    finally:
        forwarder.close()
    assert status["jobs"][0]["id"] == late["id"] and status["jobs"][0]["status"] == "finished"
    assert status["last_error"] is None
    assert len(predictions_by_task(ls_server, project_id)) == 20


def prediction_requests(ls_server, project_id: int, since: int) -> list[str]:
    """The worker's requests that put predictions into LS or point the project, in LS's server log after byte
    ``since``, in order: "create" (one prediction), "import" (bulk) and "point" (PATCH of the project)."""
    with open(ls_server.log_path, encoding="utf-8", errors="replace") as f:
        f.seek(since)
        lines = f.read().splitlines()
    kinds = {
        '"POST /api/predictions/ ': "create",
        f'"POST /api/projects/{project_id}/import/predictions': "import",
        f'"PATCH /api/projects/{project_id}/ ': "point",
    }
    return [kind for line in lines for marker, kind in kinds.items() if marker in line]


def once_each(requests: list[str]) -> list[str]:
    """``prediction_requests`` with LS's log writing each request line twice (two log handlers, 1.23.2) undone:
    every run of one kind halved."""
    runs = [(kind, len(list(group))) for kind, group in itertools.groupby(requests)]
    assert all(n % 2 == 0 for _, n in runs), requests
    return [kind for kind, n in runs for _ in range(n // 2)]


def test_a_new_version_reaches_the_front_of_the_queue_before_the_rest_of_the_pool(start_loop, ls_server):
    """Front first: the K lowest scores of a new version are imported into LS first (bulk requests, the default
    FRONT_CREATE_CONCURRENCY=0) and the project points at the version while the rest of the pool is still being
    imported; LS then serves the front in the new version's order (the old version's predictions still in place),
    and the end state is one prediction of the new version per task. The cold start puts its front in the same
    way. (Single creates for the front: tests/integration/test_front.py.)"""
    k, n_tasks = 15, 300
    client, _ = start_loop(FRONT_FIRST_TASKS=str(k), IMPORT_BATCH_SIZE="5")  # a slow fill: a window to look into
    project_id, key, ids, _ = make_project(ls_server, n_tasks=n_tasks, n_labelled=12)
    log_start = ls_server.log_path.stat().st_size
    first = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]
    wait_for("the cold-start scoring", lambda: settled(client, ls_server, project_id, min_jobs=1), timeout=300)
    cold_start = once_each(prediction_requests(ls_server, project_id, log_start))
    assert "import" in cold_start and "create" not in cold_start, cold_start
    sdk = ls_server.sdk()
    log_start = ls_server.log_path.stat().st_size
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}})
    new = wait_for(
        "a trained version",
        lambda: (v := client.get(f"/projects/{project_id}/status").json()["current_version"]) != first and v,
        timeout=300,
        every=0.1,
    )
    unlabelled = n_tasks - 12

    def switched_mid_fill():
        # the project is read first: fewer predictions of its version afterwards means it pointed at it earlier
        if sdk.projects.get(project_id).model_version != new:
            return None
        with ls_server.client() as c:
            counts = c.get(f"/api/projects/{project_id}/model-versions/").json()
            if counts.get(new, 0) >= unlabelled:
                raise AssertionError(f"the fill was over before the project was seen pointing at {new}: {counts}")
            response = c.get(f"/api/projects/{project_id}/next/")
            if response.status_code >= 500:
                # LS on SQLite: /next writes the annotator's stream history inside a read transaction and fails
                # with "database is locked" while an import writes (LS's log shows it); the next poll asks again
                return None
            served = response.json()
        return counts, served, predictions_by_task(ls_server, project_id)

    counts, served, during = wait_for("the switch to the new version during the fill", switched_mid_fill, every=0.1)
    assert k <= counts[new] < unlabelled and counts.get(first) == unlabelled, counts  # the old version is still in
    status = wait_for("the fill to finish", lambda: settled(client, ls_server, project_id, min_jobs=3), timeout=300)
    rescore = status["jobs"][0]
    assert rescore["kind"] == "rescore" and rescore["meta"]["stage"] == "done" and rescore["meta"]["front"] == k

    # the front's bulk imports of 5, then the switch, then the fill's (the old version's deletion after)
    requests = once_each(prediction_requests(ls_server, project_id, log_start))
    fill = -(-(unlabelled - k) // 5)
    assert requests == ["import"] * (k // 5) + ["point"] + ["import"] * fill, requests

    final = predictions_by_task(ls_server, project_id)
    labelled = set(ids[:12])
    assert all([p["model_version"] for p in final[t]] == [new] for t in ids if t not in labelled), "one per task"
    assert not any(p["model_version"] == first for preds in final.values() for p in preds), "old version deleted"
    scores = sorted((final[t][0]["score"], t) for t in ids if t not in labelled)
    front = {t for _, t in scores[:k]}
    had_new = {t for t, preds in during.items() if any(p["model_version"] == new for p in preds)}
    assert front <= had_new, "the K most informative tasks were in LS when the project switched"
    # LS served the lowest score of the new version, not a random task and not by the old version's scores
    assert served["id"] == scores[0][1], (served["id"], scores[:3])
