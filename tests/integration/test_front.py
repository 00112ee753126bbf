"""The front of a new version against a real Label Studio and a real Redis: a task deleted between the ranking and
the front's creation is skipped, and a cold start points the project at a ranked sample of the pool before the
rest of the pool is embedded (a real ``ml-backend worker``, whose fill fans the rest out into chunk jobs)."""

from __future__ import annotations

import pytest

from ml_backend.jobs import context, tasks
from ml_backend.jobs.lock import ProjectLock
from ml_backend.jobs.queue import RESCORE_SLOT, TRAIN_SLOT
from ml_backend.labelstudio.tasklist import TaskList
from ml_backend.learning.registry import Registry
from tests.integration.test_learning_loop import (  # noqa: F401  (start_loop, loop_configs: fixtures)
    CONFIG,
    REDIS_URL,
    current_predictions_problems,
    idle,
    loop_configs,
    make_project,
    predictions_by_task,
    start_loop,
    wait_for,
)
from tests.integration.test_tasklist import delete_task, worker_settings

# ruff: noqa: F811  (pytest fixtures imported above are parameters of the tests below)

RESULT = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["fresh"]}}]


def test_a_task_deleted_between_the_ranking_and_the_front_is_skipped_without_failing_the_job(
    ls_server, tmp_path, loop_configs, monkeypatch
):
    """The re-score runs in-process so the deletion lands exactly between the ranking and the front's creation.
    The project's tasks hold another model's predictions and FRONT_CREATE_CONCURRENCY is set (as for LS on
    PostgreSQL), so the front is created one request each."""
    project_id, key, ids, _ = make_project(ls_server, n_tasks=30, n_labelled=0)
    sdk = ls_server.sdk()
    foreign = [{"task": t, "result": RESULT, "score": 0.5, "model_version": "someone-else"} for t in ids]
    sdk.projects.import_predictions(project_id, request=foreign)
    settings = worker_settings(ls_server, tmp_path, loop_configs, front_first_tasks=5, front_create_concurrency=8)
    ctx = context.WorkerContext.build(settings, preload=False)
    ctx.service.register(project_id, key, CONFIG)
    state = ctx.service.state(project_id)
    create = ctx.ls.create_predictions
    deleted: list[int] = []

    def delete_then_create(pid, front, concurrency):
        deleted.append(front[1]["task"])  # one of the front: ranked, then deleted in LS before its prediction lands
        delete_task(ls_server, deleted[0])
        return create(pid, front, concurrency)

    monkeypatch.setattr(ctx.ls, "create_predictions", delete_then_create)
    with ProjectLock(ctx.redis, ctx.queue.key("lock:score", project_id), "test-front", wait=10) as lock:
        result = tasks._rescore_pool(ctx, project_id, state, lock)

    version = state.version.version
    assert result["front"] == 5 and result["front_deleted_tasks"] == 1, result
    assert sdk.projects.get(project_id).model_version == version
    assert ctx.ls.model_versions(project_id) == {version: 29, "someone-else": 29}  # foreign rows stay
    final = predictions_by_task(ls_server, project_id)
    assert deleted[0] not in final and len(final) == 29
    assert all([p["model_version"] for p in preds].count(version) == 1 for preds in final.values())
    store = TaskList.of_project(settings.projects_dir, project_id)
    assert deleted[0] not in store.ids() and store.version_counts() == {version: 29, "someone-else": 29}
    assert not store.sync(ctx.ls, project_id).predictions_reloaded  # the store knew what LS holds


def test_a_cold_start_points_the_project_at_a_ranked_sample_before_the_rest_of_the_pool_is_embedded(
    start_loop, ls_server, tmp_path
):
    """COLD_START_SAMPLE=60 of 300 texts: the project points at the first version while LS holds predictions of
    the sample only; the rest of the pool is then embedded in chunk jobs and filled. The front is the sample's
    batch-aware front, below every other score; the other tasks get the score /predict gives them."""
    n_tasks, sample, k = 300, 60, 10
    client, _ = start_loop(COLD_START_SAMPLE=str(sample), FRONT_FIRST_TASKS=str(k), EMBED_CHUNK_SIZE="50")
    project_id, key, ids, _ = make_project(ls_server, n_tasks=n_tasks, n_labelled=0)
    sdk = ls_server.sdk()
    version = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]

    def pointed():
        if sdk.projects.get(project_id).model_version != version:
            return None
        with ls_server.client() as c:
            return c.get(f"/api/projects/{project_id}/model-versions/").json()

    counts = wait_for("the project to point at the first version", pointed, timeout=300, every=0.1)
    assert k <= counts[version] <= sample, counts  # only the sample was scored when the project switched

    def whole_pool():
        status = idle(client, project_id)
        return status if status and not current_predictions_problems(client, ls_server, project_id) else None

    status = wait_for("the whole pool", whole_pool, timeout=300)
    gather = [j for j in status["jobs"] if j["kind"] == "rescore" and "fanout" in j["meta"]]
    assert len(gather) == 1 and gather[0]["meta"]["gathered"]["finished"] == 5, gather  # 240 tasks in chunks of 50

    ranking = Registry(tmp_path / "data" / "projects").ranking(project_id, version)
    assert ranking is not None and len(ranking.scores) == sample  # the ranked sample
    final = {t: preds[0]["score"] for t, preds in predictions_by_task(ls_server, project_id).items()}
    order = sorted(final, key=lambda t: (final[t], t))
    assert set(order[:k]) <= set(ranking.scores) and all(final[t] < ranking.rest_floor for t in order[:k])
    assert all(final[t] >= ranking.rest_floor for t in final if t not in ranking.scores)
    # the rest of the pool has the score /predict gives it (one score per task per version), up to float32 rounding:
    # its density is a float32 product over the batch scored together (64 in the fill, 5 here), ~1e-8 apart
    outside = [t for t in ids if t not in ranking.scores][:5]
    with ls_server.client() as c:
        asked = [c.get(f"/api/tasks/{t}/").json() for t in outside]
    answer = client.post("/predict", json={"tasks": asked, "project": key}).json()["results"]
    assert [r["score"] for r in answer] == pytest.approx([final[t] for t in outside], abs=1e-6)
    with ls_server.client() as c:
        assert c.get(f"/api/projects/{project_id}/next/").json()["id"] == order[0]


@pytest.mark.parametrize("event", ["training waits", "newer version promoted"])
def test_a_fill_stops_for_a_waiting_training_or_a_newer_version_and_a_rescore_follows(
    ls_server, tmp_path, loop_configs, monkeypatch, event
):
    """Annotators keep labelling while a large pool fills. The fill (in-process, batches of 5) stops before its
    next import request once a training of the project waits for a worker, or once a newer version is current
    (promoted by a training on another worker); it deletes nothing, and a newer version gets its re-score."""
    project_id, key, ids, _ = make_project(ls_server, n_tasks=30, n_labelled=0)
    settings = worker_settings(ls_server, tmp_path, loop_configs, front_first_tasks=5, import_batch_size=5)
    ctx = context.WorkerContext.build(settings, preload=False)
    ctx.service.register(project_id, key, CONFIG)
    state = ctx.service.state(project_id)
    version = state.version.version
    send = ctx.ls.import_predictions
    requests: list[int] = []
    happened: dict[str, str] = {}

    def import_then_label(pid, predictions, batch_size, concurrency):
        created = send(pid, predictions, batch_size, concurrency)
        requests.append(len(predictions))
        if len(requests) == 3:  # the front, two batches of the fill: then an annotator's label lands
            if event == "training waits":
                happened["yielded_to"] = ctx.queue.request_training(project_id)
            else:
                newer = ctx.registry.publish_next(
                    project_id, state.config, trained=False, promote=True, note="", files={}
                )
                happened["newer_version"] = newer.version
        return created

    monkeypatch.setattr(ctx.ls, "import_predictions", import_then_label)
    with ProjectLock(ctx.redis, ctx.queue.key("lock:score", project_id), "test-fill", wait=10) as lock:
        result = tasks._rescore_pool(ctx, project_id, state, lock)

    assert requests == [5, 5, 5], requests  # no request after the event
    assert {k: result[k] for k in happened} == happened, result
    assert result["imported"] == 15 and "deleted_old_predictions" not in result
    assert ctx.ls.model_versions(project_id) == {version: 15}
    assert ls_server.sdk().projects.get(project_id).model_version == version  # LS serves the front meanwhile
    # a fill that starts while this holds (e.g. the re-score a burst's earlier training requested) stops before it
    # scores anything
    scored: list[int] = []
    score = tasks._score_and_collect
    monkeypatch.setattr(tasks, "_score_and_collect", lambda *a, **kw: scored.append(1) or score(*a, **kw))
    with ProjectLock(ctx.redis, ctx.queue.key("lock:score", project_id), "test-fill", wait=10) as lock:
        again = tasks._fill(ctx, project_id, state, lock)
    assert scored == [] and requests == [5, 5, 5], (scored, requests)
    assert {k: again[k] for k in happened} == happened and "imported" not in again, again
    waiting_rescore = ctx.queue.ready(RESCORE_SLOT, project_id)
    if event == "training waits":
        assert waiting_rescore is None  # the training requests the re-score when it ends
        assert ctx.queue.ready(TRAIN_SLOT, project_id) == happened["yielded_to"]
    else:
        assert result["continued_by"] == waiting_rescore is not None


def test_a_version_trained_during_the_pools_embedding_serves_its_front_before_the_embedding_ends(
    ls_server, tmp_path, loop_configs, encoders
):
    """A 100k project's first labels arrive long before its embedding chunks end. Here the chunks wait on their own
    queue while an rq worker (in this process) serves only the main queue: the connect's re-score ranks a sample
    and fans the rest out, the training on the first labels runs while every chunk still waits, and its re-score
    points the project at the trained version with a front ranked from the embedded part, without fanning the same
    pool out again. Serving both queues then finishes the fan-out, whose re-score fills the pool with the trained
    version and deletes the first one."""
    from fastapi.testclient import TestClient
    from rq import SimpleWorker

    from ml_backend.api.app import create_app

    n_tasks, sample, chunk, k = 300, 60, 50, 10
    settings = worker_settings(
        ls_server, tmp_path, loop_configs, cold_start_sample=sample, embed_chunk_size=chunk, front_first_tasks=k
    )
    client = TestClient(create_app(settings, encoders=encoders))
    context.install(context.WorkerContext(settings, encoders))
    queue = client.app.state.backend.queue()
    project_id, key, ids, truth = make_project(ls_server, n_tasks=n_tasks, n_labelled=0)
    sdk = ls_server.sdk()
    first = client.post("/setup", json={"project": key, "schema": CONFIG}).json()["model_version"]

    def run(queues) -> None:
        SimpleWorker(queues, connection=queue.redis).work(burst=True)

    run([queue.queue])  # the main queue only: the chunks stay queued
    gather = queue.fanout_in_flight(project_id)
    chunks = queue.chunks.count
    assert gather is not None and chunks == (n_tasks - sample + chunk - 1) // chunk, chunks
    assert sdk.projects.get(project_id).model_version == first

    # the first labels, both classes, from the sample LS serves
    served = [t for t in ids if t in Registry(settings.projects_dir).ranking(project_id, first).scores]
    labelled = [t for t in served if truth[t] == "fresh"][:4] + [t for t in served if truth[t] == "rotten"][:4]
    for t in labelled:
        sdk.annotations.create(t, result=[{**RESULT[0], "value": {"choices": [truth[t]]}}])
    queue.request_training(project_id)
    run([queue.queue])  # the training and its re-score, every chunk still waiting

    status = client.get(f"/projects/{project_id}/status").json()
    trained = status["current_version"]
    assert trained != first and sdk.projects.get(project_id).model_version == trained
    rescore = next(j for j in status["jobs"] if j["kind"] == "rescore" and j["status"] == "finished")
    assert queue.chunks.count == chunks and queue.fanout_in_flight(project_id) == gather  # not fanned out again
    # the embedded part: the sample's unlabelled tasks, topped up to COLD_START_SAMPLE
    ranking = Registry(settings.projects_dir).ranking(project_id, trained)
    assert ranking is not None and len(ranking.scores) == sample, rescore
    assert set(served) - set(labelled) <= set(ranking.scores)
    with ls_server.client() as c:
        counts = c.get(f"/api/projects/{project_id}/model-versions/").json()
        nxt = c.get(f"/api/projects/{project_id}/next/").json()["id"]
    assert counts == {first: sample, trained: sample}, (counts, rescore)
    assert nxt in ranking.scores and ranking.scores[nxt] == min(ranking.scores.values())

    run(queue.queues)  # the chunks, then the fan-out's re-score
    assert queue.fanout_in_flight(project_id) is None
    assert not current_predictions_problems(client, ls_server, project_id)
    with ls_server.client() as c:
        assert c.get(f"/api/projects/{project_id}/model-versions/").json() == {trained: n_tasks - len(labelled)}
