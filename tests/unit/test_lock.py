"""The project lock on a real Redis: its heartbeat rides out short outages and it knows when ownership is lost.

Outages are real: a redis-server owned by the test is frozen with SIGSTOP (connections hang, as with a network
partition) and thawed with SIGCONT.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from ml_backend.jobs.lock import LockLost, LockTimeout, ProjectLock
from tests.lsserver import free_port

REDIS_URL = "redis://127.0.0.1:6379/13"
TTL = 1.0  # seconds; the heartbeat runs every TTL / 3


def _wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture()
def redis() -> Iterator[Redis]:
    client = Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"these tests need the Redis at {REDIS_URL}: {exc}")
    yield client


@pytest.fixture()
def key(redis: Redis) -> Iterator[str]:
    name = f"al:test-lock-{uuid.uuid4().hex[:8]}:lock:train:1"
    yield name
    redis.delete(name)


@pytest.fixture()
def own_redis() -> Iterator[tuple[subprocess.Popen, Redis]]:
    """A redis-server of this test alone, so that freezing it disturbs nobody else; a client with short timeouts."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = Redis(host="127.0.0.1", port=port, socket_timeout=0.2, socket_connect_timeout=0.2)
    assert _wait_until(lambda: _pings(client), 10), "the test's redis-server did not start"
    yield proc, client
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def test_the_heartbeat_keeps_the_lock_past_its_ttl_and_release_frees_it(redis, key):
    with ProjectLock(redis, key, "job-a", ttl=TTL) as lock:
        time.sleep(TTL * 2.5)
        assert redis.get(key) == b"job-a" and lock.owned() and not lock.lost.is_set()
        lock.ensure_owned("publishing")  # does not raise
    assert redis.get(key) is None


def test_a_second_owner_waits_and_the_same_owner_takes_over(redis, key):
    with (
        ProjectLock(redis, key, "job-a", ttl=TTL),
        pytest.raises(LockTimeout),
        ProjectLock(redis, key, "job-b", ttl=TTL, wait=0.3),
    ):
        pass
    redis.set(key, "job-c", px=60_000)  # a killed attempt of job-c left its key behind
    with ProjectLock(redis, key, "job-c", ttl=TTL, wait=0.3) as lock:  # its retry takes it over at once
        assert lock.owned()


def test_a_deleted_key_is_noticed_and_the_job_stops(redis, key):
    with ProjectLock(redis, key, "job-a", ttl=TTL) as lock:
        redis.delete(key)
        assert lock.lost.wait(TTL), "the heartbeat did not notice the key was gone"
        assert not lock.owned()
        with pytest.raises(LockLost, match="stopped before publishing"):
            lock.ensure_owned("publishing")
        redis.set(key, "job-b", px=60_000)  # someone else took it meanwhile
    assert redis.get(key) == b"job-b"  # leaving the block does not release another owner's lock


def test_a_key_taken_by_another_owner_is_lost_at_the_next_check(redis, key):
    with ProjectLock(redis, key, "job-a", ttl=60) as lock:  # the heartbeat would only run in 20 s
        redis.set(key, "job-b", px=60_000)
        assert not lock.owned() and lock.lost.is_set() and "another owner" in lock.lost_reason
    assert redis.get(key) == b"job-b"


def test_the_heartbeat_survives_a_short_redis_outage(own_redis, key):
    proc, client = own_redis
    ttl = 2 * TTL  # each failing call takes ttl / 4: room for two of them inside the TTL on a busy machine
    with ProjectLock(client, key, "job-a", ttl=ttl) as lock:
        assert lock.owned()  # confirmed now: the outage starts with a full TTL ahead
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(ttl * 0.3)  # heartbeats fail with timeouts, within the TTL
        assert lock.owned(), "ownership must hold while the last confirmation is younger than the TTL"
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(ttl * 1.5)  # the heartbeat retried and extended the key again
        assert lock._beat is not None and lock._beat.is_alive()
        assert not lock.lost.is_set() and lock.owned() and client.get(key) == b"job-a"


def test_redis_unreachable_past_the_ttl_loses_the_lock(own_redis, key):
    proc, client = own_redis
    with ProjectLock(client, key, "job-a", ttl=TTL) as lock:
        os.kill(proc.pid, signal.SIGSTOP)
        assert lock.lost.wait(TTL * 3), "the heartbeat did not give up after the TTL"
        assert "unreachable" in lock.lost_reason and not lock.owned()
        os.kill(proc.pid, signal.SIGCONT)
        assert not lock.owned()  # once lost, it stays lost even if the key came back
