"""Workers on two "machines" sharing Redis and an S3 model store, nothing else: real `ml-backend worker` processes,
real Label Studio, MiniLM, and a real S3-compatible server (moto's, over HTTP).

Each worker has a DATA_DIR of its own (its local flags, task list, embedding cache and copies of version files), as
two machines without a shared mount have. The pool's first scoring is fanned out over both, the chunks' vectors
travel through the store to the gathering re-score; a training on whichever worker publishes a version the other
serves, and the new version's re-score finds the whole pool embedded on whichever machine it runs; a third machine
that never ran a job sees the same versions and the same current one. A worker whose store endpoint is down fails
clearly, loses nothing, and scores the pool once the endpoint answers again.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from redis import Redis
from rq import Queue, Worker
from rq.job import Job

from ml_backend.learning.registry import Registry
from ml_backend.settings import Settings
from tests.integration.test_learning_loop import (  # noqa: F401 (fixtures, by name)
    CONFIG,
    REDIS_URL,
    Forwarder,
    idle,
    loop_configs,
    make_project,
    start_loop,
    wait_for,
)
from tests.lsserver import free_port

N_TASKS, LABELLED, CHUNK = 132, 12, 40


def test_two_machines_share_versions_and_chunk_embeddings_through_s3_only(
    request, ls_server, s3_server, tmp_path, monkeypatch
):
    for name, value in s3_server.env.items():  # the web app (here) and the workers (inherit) read them
        monkeypatch.setenv(name, value)
    store_url = f"s3://models/workers-{uuid.uuid4().hex[:8]}"
    env = {"QUEUE_NAME": f"test-s3-{uuid.uuid4().hex[:8]}", "MODEL_STORE_URL": store_url, "EMBED_CHUNK_SIZE": "40"}
    start = request.getfixturevalue("start_loop")
    machines = [tmp_path / f"machine-{i}" for i in range(2)]
    client = [start(**env, DATA_DIR=str(folder))[0] for folder in machines][0]
    redis = Redis.from_url(REDIS_URL)
    wait_for(
        "2 workers to listen",
        lambda: len(Worker.all(queue=Queue(env["QUEUE_NAME"], connection=redis))) == 2,
        timeout=180,
    )
    project_id, key, _, _ = make_project(ls_server, n_tasks=N_TASKS, n_labelled=LABELLED)
    first = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]

    def rescored(version: str) -> dict | None:
        """The result of the finished re-score of ``version`` once the project is idle."""
        status = idle(client, project_id)
        done = [j for j in (status or {}).get("jobs") or [] if j["kind"] == "rescore" and j["meta"]["stage"] == "done"]
        results = [Job.fetch(j["id"], connection=redis).return_value() for j in done]
        return next((r for r in results if r and r["version"] == version), None)

    cold = wait_for("the fanned-out cold-start scoring", lambda: rescored(first), timeout=300)
    embedding = cold["embedding"]
    assert embedding["chunks"] == embedding["finished"] == 3 and embedding["failed"] == 0, embedding
    assert embedding["embedded"] == N_TASKS - LABELLED and len(embedding["per_worker"]) == 2, embedding

    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project_id}})
    trained = wait_for(
        "a trained version",
        lambda: (v := client.get(f"/projects/{project_id}/status").json()["current_version"]) != first and v,
        timeout=300,
    )
    rescore = wait_for("the new version's re-score", lambda: rescored(trained), timeout=300)
    assert ls_server.sdk().projects.get(project_id).model_version == trained
    # whichever machine ran it found the whole pool embedded (the other machine's chunks merged from the store)
    assert rescore["embedding"] is None and rescore["imported"] == N_TASKS - LABELLED, rescore

    # a machine that never ran a job reads the same truth from the store alone
    third = Registry.from_settings(Settings(data_dir=tmp_path / "machine-2", model_store_url=store_url))
    assert [v.version for v in third.versions(project_id)] == [first, trained]
    assert third.current(project_id).version == trained and third.current(project_id).trained
    assert third.read_file(project_id, trained, "model.pt")
    assert third.ranking(project_id, trained) is not None
    # versions live in the store only; so do the chunks' packs, one per chunk
    for folder in machines:
        assert not (folder / "projects" / str(project_id) / "versions").exists()
    prefix = f"{store_url.removeprefix('s3://models/')}/embeddings/"
    assert len(s3_server.client().list_objects_v2(Bucket="models", Prefix=prefix)["Contents"]) == 3


def test_a_worker_that_cannot_reach_the_store_fails_clearly_loses_nothing_and_scores_once_it_is_back(
    request, ls_server, s3_server, tmp_path, monkeypatch
):
    """The web app reaches the store, the worker's endpoint is down (its network, its MinIO): the first scoring
    fails with the store's message in the project status and one log line, the version /setup published stays
    current, a later re-score is scheduled (as when LS is down), and once the endpoint answers it scores the pool."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)  # the web app's (this process); the worker gets a dead endpoint below
    port = free_port()  # nothing listens there until the forwarder below
    store_url = f"s3://models/down-{uuid.uuid4().hex[:8]}"
    start = request.getfixturevalue("start_loop")
    client, _ = start(MODEL_STORE_URL=store_url, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", JOB_RETRIES="0")
    project_id, key, _, _ = make_project(ls_server, n_tasks=20, n_labelled=0)
    version = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]

    def waiting_retry():
        status = client.get(f"/projects/{project_id}/status").json()
        late = [j for j in status["jobs"] if j["kind"] == "rescore" and j["status"] == "scheduled"]
        return status if late and status["last_error"] else None

    status = wait_for("a later re-score to be scheduled after the failure", waiting_retry, timeout=120)
    assert status["last_error"].startswith(f"rescore: model store {store_url}/projects: could not read")
    assert "EndpointConnectionError" in status["last_error"]
    assert status["current_version"] == version  # nothing the worker did touched the store
    (late,) = [j for j in status["jobs"] if j["status"] == "scheduled"]
    log_path = tmp_path / "worker-0.log"  # start_loop's
    assert "StoreError: model store" in log_path.read_text() and "Traceback" not in log_path.read_text()

    forwarder = Forwarder(port, s3_server.endpoint_url)  # the worker's endpoint answers again
    try:
        queue = client.app.state.backend.queue()
        # skip the 10 minutes the late re-score would wait: make it due now, the worker's scheduler enqueues it
        queue.queue.scheduled_job_registry.schedule(Job.fetch(late["id"], connection=queue.redis), datetime.now(UTC))
        status = wait_for("the pool to be scored", lambda: scored(client, project_id))
    finally:
        forwarder.close()
    assert status["jobs"][0]["id"] == late["id"] and status["jobs"][0]["status"] == "finished", status["jobs"]
    assert status["last_error"] is None
    assert ls_server.sdk().projects.get(project_id).model_version == version


def scored(client, project_id: int) -> dict | None:
    """The status once the late re-score ran: idle, with it and the failed first scoring."""
    status = idle(client, project_id)
    return status if status and len(status["jobs"]) >= 2 else None
