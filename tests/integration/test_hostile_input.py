"""Hostile and malformed input on the real app: clear 4xx JSON (never a 500 with exception text), size limits,
model configs by name only, /predict never changing state, auth that works with LS's webhook, Prometheus metrics."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import yaml
from pydantic import ValidationError

from ml_backend.learning.embcache import content_key
from ml_backend.settings import Settings
from tests.integration.test_api import IMAGE, TEXT, predict, setup

LONG_ID = "7" * 300


def assert_clean_error(resp, status: int) -> dict:
    """A JSON error of ``status`` whose body carries no traceback, absolute path or exception dump."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["status"] == status
    text = json.dumps(body)
    assert "Traceback" not in text and "/work" not in text and "/tmp" not in text and "/home" not in text, text
    return body


@pytest.fixture()
def client(make_client):
    return make_client()


@pytest.mark.parametrize("project", [LONG_ID, f"{LONG_ID}.1", "²", "²³.1", "1²", "-1", "0"])
def test_setup_with_impossible_project_ids_is_a_422(client, project):
    assert_clean_error(client.post("/setup", json={"project": project, "schema": TEXT}), 422)


def test_routes_with_impossible_ids_are_4xx_not_500(client):
    assert_clean_error(client.get(f"/projects/{LONG_ID}/status"), 422)
    assert_clean_error(client.get(f"/versions?project={LONG_ID}"), 422)
    assert_clean_error(client.get("/projects/²/status"), 422)
    resp = client.post("/predict", json={"project": "²", "tasks": [{"id": 1, "data": {"text": "x"}}]})
    assert_clean_error(resp, 400)
    resp = client.post("/predict", json={"project": LONG_ID, "tasks": [{"id": 1, "data": {"text": "x"}}]})
    assert_clean_error(resp, 400)
    for project in ({"id": int(LONG_ID)}, int(LONG_ID), {"id": True}, "²"):
        resp = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": project})
        assert_clean_error(resp, 400)


def test_deeply_nested_json_is_a_400(client):
    nested = b'{"action": "ANNOTATION_CREATED", "project": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_clean_error(client.post("/webhook", content=nested, headers={"content-type": "application/json"}), 400)
    body = b'{"project": "1.1", "tasks": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert resp.status_code in (400, 422) and "Traceback" not in resp.text


def test_webhook_fields_of_the_wrong_type_are_not_500(client):
    setup(client, "21.1", TEXT)
    for payload in (
        {"action": "ANNOTATIONS_DELETED", "project": {"id": 21}, "annotations": 5},
        {"action": "ANNOTATION_CREATED", "project": {"id": 21}, "annotation": 5},
        {"action": "ANNOTATION_CREATED", "project": {"id": 21}, "annotation": [5, "x", None]},
        {"action": "TASKS_CREATED", "project": {"id": 21}, "tasks": 5},
    ):
        resp = client.post("/webhook", json=payload)
        assert resp.status_code in (200, 201), (payload, resp.text)


def test_body_size_limit_is_a_413_with_or_without_content_length(make_client):
    client = make_client(max_request_bytes=1_000_000)
    big = json.dumps({"project": "1.1", "tasks": [{"id": 1, "data": {"text": "x" * 1_200_000}}]}).encode()
    body = assert_clean_error(client.post("/predict", content=big, headers={"content-type": "application/json"}), 413)
    assert "MAX_REQUEST_BYTES" in body["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    resp = client.post("/webhook", content=chunks(), headers={"content-type": "application/json"})
    assert_clean_error(resp, 413)
    assert client.get("/health").status_code == 200


def test_too_many_tasks_in_one_predict_is_a_413(make_client):
    client = make_client(max_tasks_per_predict=5)
    setup(client, "22.1", TEXT)
    tasks = [{"id": i, "data": {"text": f"text {i}"}} for i in range(6)]
    resp = client.post("/predict", json={"project": "22.1", "tasks": tasks})
    assert "at most 5" in assert_clean_error(resp, 413)["detail"]
    assert len(predict(client, "22.1", TEXT, tasks[:5])) == 5


def test_huge_texts_are_truncated_by_characters_before_tokenising(make_client):
    client = make_client(max_text_chars=200)
    setup(client, "23.1", TEXT)
    head = "A warm, funny and clever film about growing up. " * 4  # 196 characters
    huge = head[:200] + "Q" * 5_000_000
    started = time.perf_counter()
    results = predict(client, "23.1", TEXT, [{"id": 1, "data": {"text": huge}}, {"id": 2, "data": {"text": head}}])
    elapsed = time.perf_counter() - started
    print(f"/predict with a 5 MB text: {elapsed:.2f} s")
    assert elapsed < 10
    assert results[0]["score"] >= 0
    # what was embedded is exactly the first 200 characters (the cache holds that text's key, nothing longer)
    service = client.app.state.backend.service
    cache = service.embedding_cache(service.classifier(service.state(23)))
    assert content_key("text", huge[:200]) in cache.get_many([content_key("text", huge[:200])])


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../model_configs/text-minilm", "/abs/x.yaml", "text-minilm.yaml", "a/b", "..", ""]
)
def test_model_configs_are_chosen_by_name_only(client, configs_dir, name):
    resp = client.post("/setup", json={"project": "24.1", "schema": TEXT, "extra_params": {"model_config": name}})
    body = assert_clean_error(resp, 400)
    assert str(configs_dir) not in body["detail"] and "text-minilm" in body["detail"]  # lists the names, not paths


def test_a_broken_model_config_is_named_but_its_values_stay_in_the_log(client, configs_dir):
    (configs_dir / "text-broken.yaml").write_text(
        yaml.safe_dump({"name": "s3cr3t-value", "kind": "text", "encoder": {"pretrained": "x"}, "bogus": 1})
    )
    extra = {"model_config": "text-broken"}
    resp = client.post("/setup", json={"project": "25.1", "schema": TEXT, "extra_params": extra})
    body = assert_clean_error(resp, 400)
    assert "text-broken" in body["detail"] and "s3cr3t" not in resp.text and "bogus" not in resp.text


def test_predict_never_changes_a_projects_state(client):
    version = setup(client, "26.1700000000", TEXT)
    registry = client.app.state.backend.registry
    # another creation suffix (e.g. a stale or forged key): served from the registered state, nothing archived
    results = predict(client, "26.1800000000", TEXT, [{"id": 1, "data": {"text": "fine"}}])
    assert results[0]["model_version"] == version
    assert registry.get_project(26).project_key == "26.1700000000"
    assert [v.version for v in registry.versions(26)] == [version]
    assert not list(registry.root.glob("26.archived-*"))
    # a label config with another label set: refused until /setup registers it
    relabelled = TEXT.replace('<Choice value="rotten"/>', '<Choice value="rotten"/><Choice value="meh"/>')
    resp = client.post("/predict", json={"project": "26.1700000000", "label_config": relabelled, "tasks": []})
    assert_clean_error(resp, 409)
    # a project /setup never registered: 404, nothing created
    resp = client.post("/predict", json={"project": "27.1", "label_config": TEXT, "tasks": [{"id": 1, "data": {}}]})
    assert_clean_error(resp, 404)
    assert registry.get_project(27) is None
    # /setup itself still replaces a project whose LS database was replaced (same id, new creation time)
    assert setup(client, "26.1800000000", TEXT) != version or registry.get_project(26).project_key == "26.1800000000"


def test_half_set_basic_auth_refuses_to_start():
    with pytest.raises(ValidationError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        Settings(basic_auth_pass="secret")
    with pytest.raises(ValidationError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        Settings(basic_auth_user="ls")


def test_the_cli_refuses_to_start_with_half_set_auth(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "BASIC_AUTH_PASS": "hunter2", "REDIS_URL": "redis://127.0.0.1:6379/14"}
    env.pop("BASIC_AUTH_USER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ml_backend.cli", "serve", "--no-worker", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "BASIC_AUTH_USER and BASIC_AUTH_PASS" in proc.stderr
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


def test_cli_help_is_plain_text_with_a_version():
    import subprocess
    import sys

    from ml_backend import __version__

    run = [sys.executable, "-m", "ml_backend.cli"]
    for args in ([], ["serve"], ["simulate"]):
        out = subprocess.run([*run, *args, "--help"], capture_output=True, text=True, timeout=120).stdout
        assert "``" not in out, args
    serve = subprocess.run([*run, "serve", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "env HOST" in serve and "env PORT" in serve
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=120).stdout
    assert version.strip() == f"ml-backend {__version__}"


WEBHOOK = {"action": "ANNOTATION_CREATED", "project": {"id": 28}, "annotation": {"id": 1, "result": [{"x": 1}]}}


def test_webhook_secret_alone_protects_only_the_webhook(make_client):
    client = make_client(webhook_secret="hook-token")
    setup(client, "28.1", TEXT)
    assert_clean_error(client.post("/webhook", json=WEBHOOK), 401)
    assert_clean_error(client.post("/webhook", json=WEBHOOK, headers={"Authorization": "Bearer wrong"}), 401)
    assert client.post("/webhook", json=WEBHOOK, headers={"Authorization": "Bearer hook-token"}).status_code == 201
    assert client.post("/webhook?token=hook-token", json=WEBHOOK).status_code == 201
    assert client.get("/health").status_code == 200  # LS's ML calls need no credential in this mode


def test_basic_auth_and_a_webhook_secret_together(make_client):
    client = make_client(basic_auth_user="ls", basic_auth_pass="pw", webhook_secret="hook-token")
    assert_clean_error(client.get("/health"), 401)
    assert client.get("/health", auth=("ls", "pw")).status_code == 200
    assert client.post("/setup", json={"project": "28.1", "schema": TEXT}, auth=("ls", "pw")).status_code == 200
    assert_clean_error(client.post("/webhook", json=WEBHOOK), 401)
    assert client.post("/webhook", json=WEBHOOK, headers={"Authorization": "Bearer hook-token"}).status_code == 201
    assert client.post("/webhook", json=WEBHOOK, auth=("ls", "pw")).status_code == 201
    # the webhook secret opens /webhook only
    assert_clean_error(client.get("/health", headers={"Authorization": "Bearer hook-token"}), 401)


def test_metrics_are_prometheus_text_with_json_on_request(client):
    setup(client, "29.1", TEXT)
    predict(client, "29.1", TEXT, [{"id": 1, "data": {"text": "fine"}}])
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert 'ml_backend_request_duration_seconds_bucket{le="0.1",method="POST",route="/predict",status="200"}' in text
    assert 'ml_backend_model_versions{project="29"} 1.0' in text
    assert 'ml_backend_events_total{event="predict_requests"} 1.0' in text
    client.post("/predict", content=b"x" * 100, headers={"content-length": str(10**9)})  # refused for size: timed too
    text = client.get("/metrics").text
    assert 'route="unmatched",status="413"' in text
    assert "ml_backend_redis_up 1.0" in text and 'ml_backend_queue_jobs{state="queued"}' in text
    assert client.get("/metrics?format=json").json()["predict_requests"] == 1
    assert client.get("/metrics", headers={"Accept": "application/json"}).json()["tasks_scored"] == 1


def test_setup_hostname_and_token_are_used_when_the_environment_names_no_label_studio(make_client, file_server):
    from PIL import Image

    client = make_client(label_studio_url=None, label_studio_api_key=None)
    (file_server.root / "setup-conn").mkdir(exist_ok=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(file_server.root / "setup-conn" / "red.png")
    resp = client.post(
        "/setup", json={"project": "30.1", "schema": IMAGE, "hostname": file_server.url, "access_token": "tok"}
    )
    assert resp.status_code == 200
    results = predict(client, "30.1", IMAGE, [{"id": 1, "data": {"image": f"{file_server.url}/setup-conn/red.png"}}])
    assert results[0]["score"] >= 0
    saved = client.app.state.backend.registry.root / "ls-connection.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600  # the token is a credential
    assert client.app.state.backend.registry.ls_connection() == (file_server.url, "tok")
    # a worker on the same DATA_DIR, with no LS in its environment either, talks to that LS
    from ml_backend.jobs.context import WorkerContext

    worker = WorkerContext(client.app.state.backend.settings, client.app.state.backend.service.encoders)
    assert (worker.ls.url, worker.ls.api_key) == (file_server.url, "tok")
    # and the status links tasks into that LS
    status = client.get("/projects/30/status").json()
    assert status["label_studio_url"] == file_server.url
