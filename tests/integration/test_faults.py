"""The real app behind a real HTTP server (uvicorn in a thread) under Redis faults and load.

A hung Redis is a test-owned redis-server frozen with SIGSTOP (it accepts connections and never answers, like a
network partition); a Redis that is down is one that was stopped. Latencies are measured over real sockets.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from redis import Redis

from ml_backend.api.app import create_app
from ml_backend.settings import Settings
from ml_backend.simulation.datasets import rotten_tomatoes
from tests.integration.conftest import OwnRedis
from tests.integration.test_api import TEXT
from tests.lsserver import free_port


class LiveServer:
    """The app on 127.0.0.1:<free port>, served by uvicorn in a thread (lifespan included)."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture()
def live(tmp_path, configs_dir, encoders):
    servers: list[LiveServer] = []

    def start(**overrides) -> LiveServer:
        values = dict(data_dir=tmp_path / "data", model_configs_dir=configs_dir, redis_url="redis://127.0.0.1:6379/14")
        values.update(overrides)
        server = LiveServer(create_app(Settings(**values), encoders=encoders))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


WEBHOOK = {"action": "ANNOTATION_CREATED", "project": {"id": 50}, "annotation": {"id": 1, "result": [{"x": 1}]}}


def test_a_hung_redis_never_stalls_health_or_predict(live, own_redis):
    server = live(redis_url=own_redis.url)
    http = httpx.Client(base_url=server.url, timeout=30)
    assert http.post("/setup", json={"project": "50.1", "schema": TEXT}).status_code == 200
    tasks = [{"id": 1, "data": {"text": "A fine film."}}]
    assert http.post("/predict", json={"project": "50.1", "tasks": tasks}).status_code == 200  # warm
    own_redis.freeze()
    try:
        with ThreadPoolExecutor(12) as pool:
            hooks = [pool.submit(_timed, lambda: httpx.post(f"{server.url}/webhook", json=WEBHOOK, timeout=30))]
            hooks += [
                pool.submit(_timed, lambda: httpx.post(f"{server.url}/webhook", json=WEBHOOK, timeout=30))
                for _ in range(9)
            ]
            time.sleep(0.05)
            health = [_timed(lambda: http.get("/health"))[1] for _ in range(20)]
            predict_resp, predict_time = _timed(lambda: http.post("/predict", json={"project": "50.1", "tasks": tasks}))
            status_resp, status_time = _timed(lambda: http.get("/projects/50/status"))
            webhooks = [f.result() for f in hooks]
        deferred = http.get("/projects/50/status").json()["labels_deferred"]
    finally:
        own_redis.thaw()
    slowest_hook = max(t for _, t in webhooks)
    print(
        f"Redis frozen: 10 concurrent webhooks deferred in <= {slowest_hook:.2f} s; /health max "
        f"{max(health) * 1000:.0f} ms; /predict {predict_time * 1000:.0f} ms; status {status_time * 1000:.0f} ms"
    )
    assert all(r.status_code == 202 and r.json()["status"] == "deferred" for r, _ in webhooks)
    assert slowest_hook < 2.5  # within LS's reach (1 s timeout, response ignored), and never queued 5 s each
    assert max(health) < 1.0  # LS's /health budget; a stall on the frozen Redis lasts its socket timeout (seconds)
    assert predict_resp.status_code == 200 and predict_time < 1.0
    assert status_resp.status_code == 200 and status_resp.json()["jobs"] is None and status_time < 2.0
    assert deferred == 10  # all kept, none lost to concurrent appends
    # Redis back: the deferred labels are enqueued (one coalesced training) and webhooks are accepted again
    status = _eventually(lambda: len((s := http.get("/projects/50/status").json())["jobs"] or []) == 2 and s)
    assert sorted(j["kind"] for j in status["jobs"]) == ["rescore", "train"]  # /setup's scoring, then the training
    assert status["labels_deferred"] == 0
    assert http.post("/webhook", json=WEBHOOK).status_code == 201


def _eventually(check, timeout: float = 20.0):
    """The first truthy value of ``check()`` within ``timeout`` s (the app retries deferred work every 5 s)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "deferred work was not enqueued after Redis came back"
        time.sleep(0.2)
    return value


def test_health_answers_at_once_while_the_scoring_pool_is_full(live):
    server = live()
    http = httpx.Client(base_url=server.url, timeout=120)
    assert http.post("/setup", json={"project": "51.1", "schema": TEXT}).status_code == 200
    texts = rotten_tomatoes(n=400, seed=7).texts

    def predict(i: int) -> int:
        tasks = [{"id": i * 10 + j, "data": {"text": f"{texts[(i * 4 + j) % 400]} #{i}"}} for j in range(4)]
        return httpx.post(f"{server.url}/predict", json={"project": "51.1", "tasks": tasks}, timeout=300).status_code

    with ThreadPoolExecutor(100) as pool:
        futures = [pool.submit(predict, i) for i in range(100)]  # more than the 40 threads of the pool
        time.sleep(0.5)
        health = []
        while not all(f.done() for f in futures) and len(health) < 50:
            health.append(_timed(lambda: http.get("/health"))[1])
            time.sleep(0.05)
        codes = [f.result() for f in futures]
    print(f"/health during 100 concurrent /predict: max {max(health) * 1000:.0f} ms over {len(health)} calls")
    assert codes == [200] * 100
    assert len(health) >= 5 and max(health) < 0.5


def test_setup_while_redis_is_down_enqueues_the_first_scoring_once_redis_is_back(live, tmp_path):
    redis = OwnRedis(tmp_path).start()
    port = redis.port
    redis.stop()  # down: connections refused
    server = live(redis_url=redis.url, queue_name="faults-setup")
    http = httpx.Client(base_url=server.url, timeout=30)
    resp, elapsed = _timed(lambda: http.post("/setup", json={"project": "52.1", "schema": TEXT}))
    assert resp.status_code == 200 and elapsed < 3.0  # LS gives /setup 3 s
    assert http.get("/projects/52/status").json()["rescore_pending"] is True
    redis = OwnRedis(tmp_path, port=port).start()
    try:
        client = Redis.from_url(redis.url)
        deadline = time.monotonic() + 20
        while client.llen("rq:queue:faults-setup") == 0:
            assert time.monotonic() < deadline, "the pool scoring was never enqueued after Redis came back"
            time.sleep(0.2)
        (job_id,) = [j.decode() for j in client.lrange("rq:queue:faults-setup", 0, -1)]
        assert job_id.startswith("rescore-52-")
        status = http.get("/projects/52/status").json()
        assert status["rescore_pending"] is False and [j["id"] for j in status["jobs"]] == [job_id]
    finally:
        redis.stop()


def test_webhooks_while_redis_is_down_are_kept_on_disk_and_enqueued_once_redis_is_back(live, tmp_path):
    """LS sends each webhook once: new tasks and labels that Redis refused must still reach the worker."""
    redis = OwnRedis(tmp_path).start()
    port = redis.port
    redis.stop()
    server = live(redis_url=redis.url, queue_name="faults-webhooks")
    http = httpx.Client(base_url=server.url, timeout=30)
    assert http.post("/setup", json={"project": "53.1", "schema": TEXT}).status_code == 200
    hooks = [
        {"action": "ANNOTATION_CREATED", "project": {"id": 53}, "annotation": {"id": 1, "result": [{"x": 1}]}},
        {"action": "ANNOTATIONS_CREATED", "project": {"id": 53}, "annotation": [{"result": [1]}, {"result": [1]}]},
        {"action": "TASKS_CREATED", "project": {"id": 53}, "tasks": [{"id": 7, "data": {"text": "new"}}]},
    ]
    for hook in hooks:
        resp = http.post("/webhook", json=hook)
        assert resp.status_code == 202 and resp.json()["status"] == "deferred", resp.text
    status = http.get("/projects/53/status").json()
    assert status["labels_deferred"] == 3 and status["rescore_pending"] is True
    page = http.get("/dashboard/projects/53").text
    assert "Waiting for Redis: a pool scoring and 3 labels." in page
    redis = OwnRedis(tmp_path, port=port).start()
    try:
        status = _eventually(
            lambda: (
                (s := http.get("/projects/53/status").json())["labels_deferred"] == 0
                and not s["rescore_pending"]
                and len(s["jobs"]) == 2
                and s
            )
        )
        assert sorted(j["kind"] for j in status["jobs"]) == ["rescore", "train"]
        client = Redis.from_url(redis.url)
        assert int(client.get("al:faults-webhooks:labels:53")) == 3  # the labels were counted, not just a job
    finally:
        redis.stop()
