"""A pool embedding fanned out over real `ml-backend worker` processes: real Redis, real Label Studio, MiniLM.

Two workers share one queue and one DATA_DIR but each has its own embedding cache (EMBEDDING_CACHE_DIR), as two
machines sharing Redis and a data mount do. A re-score of a pool larger than EMBED_CHUNK_SIZE splits its embedding
into chunk jobs; both workers must embed some, the gathering re-score must bring the other machine's vectors into
its own cache, and the scores must be the very ones a single worker computes for the same pool (the one worker
finishes the fan-out on its own too: no job waits for another on a worker).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
from redis import Redis
from rq import Queue, Worker
from rq.job import Job

from ml_backend.learning.registry import Registry
from ml_backend.simulation.datasets import digits_png
from tests.integration.test_api import IMAGE, setup
from tests.integration.test_learning_loop import (  # noqa: F401 (fixtures, by name)
    CONFIG,
    REDIS_URL,
    idle,
    loop_configs,
    make_project,
    start_loop,
    wait_for,
)

N_TASKS, CHUNK = 200, 40


def fanned_out_rescore(
    start, project: tuple[int, str, list[int]], data_dir: Path, workers: int
) -> tuple[list[float], dict, str]:
    """Connect the LS project to a fresh backend (DATA_DIR, queue) with ``workers`` worker processes, each with an
    embedding cache of its own; returns the stored scores in task order, the gathering re-score's result and the
    name of the worker that ran it."""
    project_id, key, ids = project
    env = {
        "QUEUE_NAME": f"test-fanout-{uuid.uuid4().hex[:8]}",
        "DATA_DIR": str(data_dir),
        "EMBED_CHUNK_SIZE": str(CHUNK),
    }
    client = [start(**env, EMBEDDING_CACHE_DIR=str(data_dir / f"machine-{i}"))[0] for i in range(workers)][0]
    redis = Redis.from_url(REDIS_URL)
    # every worker must be listening before the pool is split, or the first one up takes every chunk
    wait_for(
        f"{workers} workers to listen",
        lambda: len(Worker.all(queue=Queue(env["QUEUE_NAME"], connection=redis))) == workers,
        timeout=180,
    )
    started = time.monotonic()
    version = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]

    def scored():
        status = idle(client, project_id)
        done = [j for j in (status or {}).get("jobs") or [] if j["kind"] == "rescore" and j["meta"]["stage"] == "done"]
        return done[0] if done else None

    gather = Job.fetch(wait_for("the fanned-out re-score to finish", scored, timeout=300)["id"], connection=redis)
    assert not any(Job.exists(i, connection=redis) for i in gather.meta["fanout"])  # their vectors left Redis
    print(f"{workers} worker(s): pool of {N_TASKS} scored {time.monotonic() - started:.1f} s after /setup")
    ranking = Registry(data_dir / "projects").ranking(project_id, version)
    assert ranking is not None
    return [ranking.scores[t] for t in ids], gather.return_value(), gather.worker_name


def test_two_workers_split_a_pool_embedding_and_score_it_as_one_worker_does(request, ls_server, tmp_path):
    start = request.getfixturevalue("start_loop")  # test_learning_loop's: worker processes on a queue we name
    # one LS project for both backends: the scores' tie-break depends on the task id, so the ids must be the same
    project_id, key, ids, _ = make_project(ls_server, n_tasks=N_TASKS, n_labelled=0)
    two_scores, two, two_gatherer = fanned_out_rescore(start, (project_id, key, ids), tmp_path / "two", workers=2)
    one_scores, one, _ = fanned_out_rescore(start, (project_id, key, ids), tmp_path / "one", workers=1)

    for result in (two, one):
        expected = {"chunks": N_TASKS // CHUNK, "finished": N_TASKS // CHUNK, "failed": 0, "embedded": N_TASKS}
        assert {k: result["embedding"][k] for k in expected} == expected, result
        assert result["imported"] == N_TASKS and result["skipped"] == {}, result
    per_worker = two["embedding"]["per_worker"]
    print("chunks per worker:", per_worker)
    assert len(per_worker) == 2, f"one worker embedded every chunk: {per_worker}"
    # the gathering worker's cache got the vectors of the chunks the other "machine" embedded, and only those
    others = sum(n for name, n in per_worker.items() if not name.endswith(f"/{two_gatherer}"))
    assert two["embedding"]["stored_here"] == others * CHUNK > 0, two
    assert len(one["embedding"]["per_worker"]) == 1 and one["embedding"]["stored_here"] == 0, one
    # the same embeddings and the same batch-aware order: the very same scores, task for task
    assert np.array_equal(np.array(two_scores), np.array(one_scores))


def test_a_chunk_whose_worker_dies_loses_none_of_the_others_and_the_pool_is_still_scored(request, ls_server, tmp_path):
    """A chunk that fails for good (its work horse killed, no retry left) does not hold up the gathering re-score:
    the other chunks count, the failure is reported, and the re-score embeds the lost chunk's tasks itself."""
    start = request.getfixturevalue("start_loop")
    queue = f"test-fanout-{uuid.uuid4().hex[:8]}"
    client, _ = start(QUEUE_NAME=queue, EMBED_CHUNK_SIZE=str(CHUNK), JOB_RETRIES="0")
    redis = Redis.from_url(REDIS_URL)
    project_id, key, ids, _ = make_project(ls_server, n_tasks=N_TASKS, n_labelled=0)
    version = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]

    def waiting_gather():
        jobs = client.get(f"/projects/{project_id}/status").json()["jobs"] or []
        return next((j for j in jobs if j["status"] == "deferred" and "fanout" in j["meta"]), None)

    gather = wait_for("the pool embedding to fan out", waiting_gather, every=0.1)
    assert gather["meta"]["total"] == N_TASKS // CHUNK  # the dashboard's progress: chunks done / total

    def embedding_chunk():
        # the second chunk (one worker runs them in order): the first may be over before we look, and three more
        # come after it, so the re-score waits long enough for its progress to be seen
        meta = Job.fetch(gather["meta"]["fanout"][1], connection=redis).meta
        return meta["pid"] if meta.get("stage") == "embedding" else None

    os.kill(wait_for("a chunk to be embedding", embedding_chunk, every=0.02), signal.SIGKILL)

    progress: list[int] = []  # what the dashboard shows of the waiting re-score: chunks finished so far

    def started_gathering():
        job = next(j for j in client.get(f"/projects/{project_id}/status").json()["jobs"] if j["id"] == gather["id"])
        if job["status"] == "deferred":
            progress.append(job["meta"]["done"])
        return job["status"] != "deferred"

    wait_for("the chunks to end", started_gathering, timeout=300, every=0.1)
    assert progress == sorted(progress) and 1 <= progress[-1] <= 4, progress

    def done():
        status = idle(client, project_id)
        jobs = (status or {}).get("jobs") or []
        return next((j for j in jobs if j["id"] == gather["id"] and j["meta"]["stage"] == "done"), None)

    wait_for("the gathering re-score to finish", done, timeout=300)
    result = Job.fetch(gather["id"], connection=redis).return_value()
    embedding = result["embedding"]
    assert (embedding["chunks"], embedding["finished"], embedding["failed"]) == (5, 4, 1), embedding
    assert embedding["embedded"] == N_TASKS - CHUNK
    # the killed chunk's tasks were embedded by the re-score itself: the whole pool is scored and in LS
    assert result["imported"] == N_TASKS and result["skipped"] == {}, result
    ranking = Registry(Path(client.app.state.backend.settings.projects_dir)).ranking(project_id, version)
    assert ranking is not None and set(ranking.scores) == set(ids)


def test_an_image_chunk_skips_a_broken_image_and_the_pool_check_then_needs_no_download(make_client, file_server):
    """Images: an embedding chunk embeds the good images despite a broken one, and afterwards the re-score's
    check of what is left to embed knows the downloaded URLs' content without fetching them again."""
    client = make_client()
    setup(client, "81.1", IMAGE)
    service = client.app.state.backend.service
    state = service.state(81)
    folder = file_server.root / "fanout"
    data = digits_png(folder, n=12, seed=1)
    (folder / "broken.png").write_bytes(b"this is text, not a PNG")
    tasks = [{"id": i, "data": {"image": f"{file_server.url}/fanout/{p.name}"}} for i, p in enumerate(data.paths[:6])]
    tasks.append({"id": 90, "data": {"image": f"{file_server.url}/fanout/broken.png"}})
    tasks.append({"id": 91, "data": {}})  # unusable: nothing to embed, the scoring path reports it

    assert service.uncached(state, state.version, tasks) == list(range(7))  # no URL seen yet: all usable ones
    fingerprint, vectors, embedded, skipped = service.embed_part(state, state.version, tasks, batch_size=4)
    assert embedded == 6 and set(skipped) == {"90", "91"}, skipped
    assert len(vectors) == 6 and fingerprint == service.embedding_cache(service.classifier(state)).path.stem
    service.fetch_file = None  # no downloader now (as without LS): the check below must not need one
    assert service.uncached(state, state.version, tasks) == [6]  # only the broken image is still to embed
