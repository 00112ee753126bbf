"""Coalescing on a real Redis: one waiting training and one waiting re-score per project, whatever the burst;
late re-scores after rq's retries; debounced duplicate clean-ups after /predict; the status's last error."""

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from rq.job import Job

from ml_backend.jobs.queue import (
    DEDUPE_AFTER,
    DEDUPE_PER_TASK,
    RESCORE_SLOT,
    TRAIN_SLOT,
    JobQueue,
    connect,
    last_error,
)

REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture()
def queue():
    redis = connect(REDIS_URL)
    try:
        redis.ping()
    except Exception as exc:
        pytest.fail(f"these tests need the Redis at {REDIS_URL}: {exc}")
    q = JobQueue(
        redis,
        f"test-queue-{uuid.uuid4().hex[:8]}",
        job_timeout=60,
        retries=2,
        retrain_every=3,
        late_retries=(600, 1800),
    )
    yield q
    for key in redis.scan_iter(f"*{q.queue.name}*"):
        redis.delete(key)


def test_labels_accumulate_until_retrain_every_then_one_job_waits(queue):
    assert queue.add_labels(1, 1) is None and queue.add_labels(1, 1) is None  # 2 < RETRAIN_EVERY=3
    first = queue.add_labels(1, 1)
    assert first is not None and queue.queue.count == 1
    ids = {queue.add_labels(1, 1) for _ in range(50)}  # a burst while the job waits
    assert ids == {first} and queue.queue.count == 1
    assert queue.add_labels(2, 0, force=True) not in (None, first)  # another project gets its own job


def test_a_starting_training_takes_the_reported_annotations_and_resets_the_count(queue):
    from ml_backend.labelstudio.webhooks import parse_event

    event = parse_event(
        {
            "action": "ANNOTATIONS_CREATED",
            "project": {"id": 3},
            "annotation": [{"id": 11, "result": [1]}, {"id": 12, "result": [1], "was_cancelled": True}, {"id": 13}],
        }
    )
    assert event.labels == 1 and event.annotation_ids == [11]  # a skip and an empty result are no labels
    queue.add_labels(3, event.labels, annotation_ids=event.annotation_ids)
    queue.add_labels(3, 1, annotation_ids=[14])
    assert queue.take_reported_labels(3) == {11, 14}
    assert queue.take_reported_labels(3) == set() and int(queue.redis.get(queue.key("labels", 3))) == 0


def test_a_started_job_frees_the_slot_for_the_next_waiting_one(queue):
    first = queue.request_training(7)
    queue.redis.delete(queue.key("pending", 7))  # what the job does once it holds the project lock
    second = queue.request_training(7)
    assert second != first and queue.queue.count == 2


def test_a_lost_waiting_job_is_replaced(queue):
    first = queue.request_training(8)
    queue.queue.remove(first)
    Job.fetch(first, connection=queue.redis).delete()
    assert queue.request_training(8) != first


def test_a_burst_of_rescore_requests_leaves_one_waiting_and_one_more_once_it_starts(queue):
    first = queue.request_rescore(5)
    assert {queue.request_rescore(5) for _ in range(30)} == {first} and queue.queue.count == 1
    queue.started(RESCORE_SLOT, 5, "someone-else")  # only the waiting job itself frees the slot
    assert queue.request_rescore(5) == first
    queue.started(RESCORE_SLOT, 5, first)  # it took the scoring lock: what it scores is read from now on
    second = queue.request_rescore(5)
    assert second != first and {queue.request_rescore(5) for _ in range(30)} == {second}
    assert queue.queue.count == 2 and queue.request_training(5) not in (first, second)  # trainings apart


def test_ready_names_the_waiting_job_only_while_a_worker_would_run_it_now(queue):
    """A fill yields to a waiting training (tasks._superseded): not to one that waits out a retry's backoff."""
    assert queue.ready(TRAIN_SLOT, 9) is None
    job_id = queue.request_training(9)
    assert queue.ready(TRAIN_SLOT, 9) == job_id and queue.ready(RESCORE_SLOT, 9) is None
    job = Job.fetch(job_id, connection=queue.redis)
    queue.queue.remove(job)
    queue.queue.schedule_job(job, datetime.now(UTC) + timedelta(minutes=5))  # as rq's retry does
    assert queue.redis.get(queue.key("pending", 9)).decode() == job_id and queue.ready(TRAIN_SLOT, 9) is None
    job.delete()
    assert queue.ready(TRAIN_SLOT, 9) is None


def test_a_late_rescore_is_scheduled_with_its_error_and_the_rounds_are_bounded(queue):
    before = time.time()
    job_id = queue.schedule_late_rescore(4, 0, "cannot reach Label Studio")
    (scheduled,) = queue.queue.scheduled_job_registry.get_job_ids()
    assert scheduled == job_id and queue.queue.count == 0  # not runnable before its time
    at = queue.queue.scheduled_job_registry.get_scheduled_time(job_id).timestamp()
    assert before + 600 - 5 <= at <= time.time() + 600 + 5
    job = Job.fetch(job_id, connection=queue.redis)
    assert job.meta["late_round"] == 1 and job.meta["last_error"] == "cannot reach Label Studio"
    assert queue.schedule_late_rescore(4, 1, "still down") is not None
    assert queue.schedule_late_rescore(4, 2, "still down") is None  # two rounds configured, then it stops
    jobs = queue.recent_jobs(4)
    assert [j["status"] for j in jobs] == ["scheduled", "scheduled"]
    assert last_error(jobs) == "rescore: still down"


def test_a_fan_out_puts_its_chunks_behind_the_main_queue_and_is_in_flight_until_its_rescore_ends(queue):
    """Chunks wait on their own queue, which workers serve after the main one, so a training requested during a
    long fan-out runs first; the gathering re-score is the project's fan-out in flight, not its waiting re-score
    (a re-score requested meanwhile is a job of its own and runs at once)."""
    gather = queue.fan_out_embedding(4, "v0", [[{"id": 1}], [{"id": 2}], [{"id": 3}]])
    assert [q.name for q in queue.queues] == [queue.queue.name, f"{queue.queue.name}-embed"]
    assert queue.chunks.count == 3 and queue.queue.count == 0  # the re-score waits for its chunks (deferred)
    assert queue.depth()["queued_chunks"] == 3 and queue.depth()["queued"] == 0
    assert queue.fanout_in_flight(4) == gather and queue.fanout_in_flight(5) is None
    rescore = queue.request_rescore(4)
    assert rescore != gather and queue.queue.count == 1
    assert queue.request_training(4) not in (gather, rescore) and queue.queue.count == 2
    Job.fetch(gather, connection=queue.redis).cancel()
    assert queue.fanout_in_flight(4) is None


def test_last_error_is_cleared_by_a_later_finished_job_of_the_same_kind():
    def job(kind, status, error=None):
        return {"kind": kind, "status": status, "error": error, "meta": {}}

    assert last_error([job("rescore", "finished"), job("rescore", "failed", "LS 401")]) is None
    assert last_error([job("train", "finished"), job("rescore", "failed", "LS 401")]) == "rescore: LS 401"
    assert last_error([job("rescore", "scheduled", "LS 502"), job("rescore", "finished")]) == "rescore: LS 502"
    assert last_error([]) is None


def test_predict_schedules_one_dedupe_after_ls_should_have_saved_every_prediction(queue):
    assert queue.dedupe_wait(6) == 0.0
    first = queue.predicted(6, 100)  # LS saves 100 predictions after our answer
    expected = DEDUPE_AFTER + 100 * DEDUPE_PER_TASK
    at = queue.queue.scheduled_job_registry.get_scheduled_time(first).timestamp()
    assert time.time() + expected - 2 <= at <= time.time() + expected + 1
    assert {queue.predicted(6, 1) for _ in range(10)} == {first}  # one waiting clean-up
    assert expected - 2 <= queue.dedupe_wait(6) <= expected  # a small /predict later does not shorten the wait
    assert queue.recent_jobs(6)[0]["kind"] == "dedupe"


def test_status_lists_recent_jobs_with_their_meta(queue):
    job_id = queue.request_rescore(9)
    jobs = queue.recent_jobs(9)
    assert [j["id"] for j in jobs] == [job_id]
    assert jobs[0]["kind"] == "rescore" and jobs[0]["status"] == "queued" and jobs[0]["meta"]["project"] == 9


def test_redis_down_is_an_error_at_once():
    from redis.exceptions import RedisError

    with pytest.raises(RedisError):
        connect("redis://127.0.0.1:9/0").ping()
