"""Coalescing on a real Redis: one waiting training per project, whatever the burst."""

import uuid

import pytest

from ml_backend.jobs.queue import JobQueue, connect

REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture()
def queue():
    redis = connect(REDIS_URL)
    try:
        redis.ping()
    except Exception as exc:
        pytest.fail(f"these tests need the Redis at {REDIS_URL}: {exc}")
    q = JobQueue(redis, f"test-queue-{uuid.uuid4().hex[:8]}", job_timeout=60, retries=2, retrain_every=3)
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


def test_a_started_job_frees_the_slot_for_the_next_waiting_one(queue):
    first = queue.request_training(7)
    queue.redis.delete(queue.key("pending", 7))  # what the job does once it holds the project lock
    second = queue.request_training(7)
    assert second != first and queue.queue.count == 2


def test_a_lost_waiting_job_is_replaced(queue):
    first = queue.request_training(8)
    queue.queue.remove(first)
    from rq.job import Job

    Job.fetch(first, connection=queue.redis).delete()
    assert queue.request_training(8) != first


def test_status_lists_recent_jobs_with_their_meta(queue):
    job_id = queue.request_rescore(9, "m-v1-x")
    jobs = queue.recent_jobs(9)
    assert [j["id"] for j in jobs] == [job_id]
    assert jobs[0]["kind"] == "rescore" and jobs[0]["status"] == "queued" and jobs[0]["meta"]["project"] == 9


def test_redis_down_is_an_error_at_once():
    from redis.exceptions import RedisError

    with pytest.raises(RedisError):
        connect("redis://127.0.0.1:9/0").ping()
