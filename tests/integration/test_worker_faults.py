"""Failures around the real `ml-backend worker` process: Label Studio down during a burst of webhooks, Label Studio
not configured at all, Redis restarting under the worker. Real Redis, real worker, the real app (TestClient)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from rq.job import Job

from ml_backend.api.app import create_app
from ml_backend.settings import Settings
from tests.integration.test_api import TEXT
from tests.integration.test_learning_loop import wait_for
from tests.lsserver import free_port, stop_process_group, tail_file

REDIS_URL = "redis://127.0.0.1:6379/12"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def start_worker(tmp_path, configs_dir, encoders):
    """start_worker(**env) -> (web client, worker process, log path): one DATA_DIR, a fresh queue, same settings."""
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(redis_url: str = REDIS_URL, **env_overrides: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "BASIC_AUTH_"))}
        env.update(
            {
                "DATA_DIR": str(tmp_path / "data"),
                "REDIS_URL": redis_url,
                "QUEUE_NAME": f"test-faults-{uuid.uuid4().hex[:8]}",
                "MODEL_CONFIGS_DIR": str(configs_dir),
                "TORCH_THREADS": "1",
                "LOG_LEVEL": "INFO",
                "PYTHONPATH": str(ROOT),  # this checkout's code, whatever the venv's editable install points at
                **env_overrides,
            }
        )
        log_path = tmp_path / f"worker-{len(started)}.log"
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "ml_backend.cli", "worker", "--no-preload"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        started.append((worker, log_path))
        fields = {name.upper(): name for name in Settings.model_fields}
        settings = Settings(**{fields[k]: v for k, v in env.items() if k in fields})
        return TestClient(create_app(settings, encoders=encoders)), worker, log_path

    yield start
    for worker, log_path in started:
        stop_process_group(worker)
        print(f"--- worker log tail ({log_path})\n{tail_file(log_path, 80)}")


def jobs(client, project_id: int, kind: str) -> list[dict]:
    return [j for j in client.get(f"/projects/{project_id}/status").json()["jobs"] or [] if j["kind"] == kind]


def attempts(client, kind: str) -> int:
    durations = client.app.state.backend.queue().durations()
    return sum(count for (k, _), (count, _) in durations.items() if k == kind)


def webhook(project_id: int, i: int) -> dict:
    result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["fresh"]}}]
    return {"action": "ANNOTATION_CREATED", "project": {"id": project_id}, "annotation": {"id": i, "result": result}}


def test_a_burst_of_1000_webhooks_with_label_studio_down_costs_at_most_two_trainings(start_worker):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: Label Studio is down
    # two retries, after 5 and 30 s: the first job's retries outlast the burst
    client, _, log_path = start_worker(LABEL_STUDIO_URL=down, LABEL_STUDIO_API_KEY="x" * 40, JOB_RETRIES="2")
    assert client.post("/setup", json={"project": "60.1", "schema": TEXT}).status_code == 200
    seen_pending = None
    burst_started = time.monotonic()
    for i in range(1000):  # spread over ~15 s: webhooks arrive while attempts fail and while retries wait
        assert client.post("/webhook", json=webhook(60, i)).status_code == 201
        time.sleep(0.01)
        if i % 100 == 99 and seen_pending is None:
            status = client.get("/projects/60/status").json()
            seen_pending = status if status["retry_pending"] else None

    burst_seconds = time.monotonic() - burst_started

    def settled():
        trains = jobs(client, 60, "train")
        return trains if trains and all(j["status"] in ("failed", "finished", "canceled") for j in trains) else None

    def retry_shown():
        status = client.get("/projects/60/status").json()
        return status if status["retry_pending"] and status["last_error"] else None

    seen_pending = seen_pending or wait_for("a retry to be pending", retry_shown, timeout=60, every=0.2)
    assert "cannot reach Label Studio" in seen_pending["last_error"], seen_pending["last_error"]
    trains = wait_for("the trainings to give up", settled, timeout=180)
    ran = [j for j in trains if j["status"] != "canceled"]  # a waiting job a failed job's retry replaced never ran
    print(
        f"1000 webhooks over {burst_seconds:.0f} s, LS down: {len(ran)} training job(s) ran "
        f"({len(trains) - len(ran)} replaced by a retry), {attempts(client, 'train')} attempt(s)"
    )
    assert 1 <= len(ran) <= 2, trains
    assert attempts(client, "train") <= (1 + 2) + 1  # one job and its two retries, plus at most one more attempt
    assert "Traceback" not in log_path.read_text()  # LS down is one line per attempt, not a stack trace


def test_missing_label_studio_configuration_fails_at_once_without_retries(start_worker):
    client, _, log_path = start_worker(JOB_RETRIES="3")
    assert client.post("/setup", json={"project": "61.1", "schema": TEXT}).status_code == 200

    def failed():
        rescores = jobs(client, 61, "rescore")
        return rescores if rescores and rescores[0]["status"] == "failed" else None

    started = time.monotonic()
    rescores = wait_for("the first scoring to fail", failed, timeout=90)
    status = client.get("/projects/61/status").json()
    assert len(rescores) == 1 and rescores[0]["retries_left"] == 0  # not retried, no later re-score scheduled
    assert "LABEL_STUDIO_URL" in status["last_error"] and status["retry_pending"] is False
    assert client.post("/webhook", json=webhook(61, 1)).status_code == 201
    trains = wait_for("the training to fail", lambda: [j for j in jobs(client, 61, "train") if j["status"] == "failed"])
    assert trains[0]["retries_left"] == 0 and attempts(client, "train") == 1
    print(f"no LS configured: both jobs failed for good in {time.monotonic() - started:.1f} s")
    assert "Traceback" not in log_path.read_text()


def test_the_workers_scheduler_survives_a_redis_restart(own_redis, start_worker):
    # own_redis first: pytest stops it after the worker, so the worker never sees it vanish at teardown
    client, _, log_path = start_worker(redis_url=own_redis.url)
    queue_name = client.app.state.backend.settings.queue_name
    conn = Redis.from_url(own_redis.url)
    wait_for("the worker to register", lambda: conn.scard("rq:workers") > 0, timeout=90)
    wait_for("its scheduler to start", lambda: "Scheduler for" in log_path.read_text(), timeout=30)
    own_redis.stop()
    time.sleep(3)  # the worker and its scheduler lose their connections; rq's scheduler process dies
    own_redis.start()
    conn = Redis.from_url(own_redis.url)
    started = time.monotonic()
    job = Queue(queue_name, connection=conn).enqueue_in(timedelta(seconds=1), "os.getpid")
    wait_for("the scheduled job to run", lambda: Job.fetch(job.id, connection=conn).is_finished, timeout=90, every=0.5)
    print(f"after a Redis restart, a job due in 1 s ran after {time.monotonic() - started:.1f} s")
    assert log_path.read_text().count("Scheduler for") >= 2  # the worker started a new scheduler process


def test_a_project_whose_model_config_is_gone_fails_its_jobs_without_retries(start_worker, configs_dir):
    config = configs_dir / "text-removed-later.yaml"
    config.write_text((configs_dir / "text-minilm.yaml").read_text())
    down = f"http://127.0.0.1:{free_port()}"
    client, _, log_path = start_worker(LABEL_STUDIO_URL=down, LABEL_STUDIO_API_KEY="x" * 40, JOB_RETRIES="3")
    extra = {"model_config": "text-removed-later"}
    assert client.post("/setup", json={"project": "62.1", "schema": TEXT, "extra_params": extra}).status_code == 200
    config.unlink()  # the admin removed the file the project uses
    start = {"action": "START_TRAINING", "project": {"id": 62}}
    assert client.post("/webhook", json=start).status_code == 201
    trains = wait_for("the training to fail", lambda: [j for j in jobs(client, 62, "train") if j["status"] == "failed"])
    assert trains[0]["retries_left"] == 0 and attempts(client, "train") == 1
    assert "text-removed-later" in client.get("/projects/62/status").json()["last_error"]
    assert "Traceback" not in log_path.read_text()
