"""The HTTP app with real models (MiniLM, EfficientNet-Lite0), posting LS-shaped payloads."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from PIL import Image

from ml_backend.learning.training import train_version as publish_version
from ml_backend.simulation.datasets import digits_png, rotten_tomatoes

TEXT = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text"><Choice value="fresh"/>'
    '<Choice value="rotten"/></Choices></View>'
)
MULTI = (
    '<View><Text name="text" value="$text"/><Choices name="topics" toName="text" choice="multiple">'
    '<Choice value="acting"/><Choice value="story"/><Choice value="music"/></Choices></View>'
)
IMAGE = (
    '<View><Image name="image" value="$image"/><Choices name="digit" toName="image"><Choice value="0"/>'
    '<Choice value="1"/><Choice value="2"/></Choices></View>'
)


def setup(client, project: str, config: str, **extra) -> str:
    resp = client.post(
        "/setup",
        json={
            "project": project,
            "schema": config,
            "hostname": "http://localhost:8080",
            "access_token": "x",
            "extra_params": extra or None,
        },
    )
    assert resp.status_code == 200, resp.text
    version = resp.json()["model_version"]
    assert isinstance(version, str) and version
    return version


def predict(client, project: str, config: str, tasks: list[dict]) -> list:
    resp = client.post(
        "/predict",
        json={
            "tasks": tasks,
            "project": project,
            "label_config": config,
            "params": {"login": None, "password": None, "context": None},
        },
    )
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == len(tasks)  # positional alignment, always
    return results


def assert_valid(results: list, version: str, n_ok: int) -> list[float]:
    ok = [r for r in results if r != []]
    assert len(ok) == n_ok
    for r in ok:
        assert r["model_version"] == version
        assert isinstance(r["result"], list)
        assert math.isfinite(r["score"]) and 0.0 <= r["score"] <= 1.0
    return [r["score"] for r in ok]


def train_version(client, project_id: int, texts: list[str], labels: list[list[str]]) -> str:
    """Publish a trained version with the training job's own step (``learning.training.train_version``), no LS."""
    service = client.app.state.backend.service
    state = service.state(project_id)
    tasks = [{"id": i + 1, "data": {state.schema.value_key: t}} for i, t in enumerate(texts)]
    result = publish_version(service, state, tasks, labels)
    assert result.version is not None and result.trained and result.promoted, result
    return result.version.version


@pytest.fixture()
def client(make_client):
    return make_client()


def test_health_and_unknown_routes_answer_json(client):
    assert client.get("/health").json()["status"] == "UP"
    assert client.get("/").status_code == 200
    resp = client.get("/nope")
    assert resp.status_code == 404 and resp.json()["status"] == 404


def test_setup_rejects_unsupported_configs_with_what_is_supported(client):
    resp = client.post(
        "/setup",
        json={
            "project": "1.1",
            "schema": '<View><Text name="t" value="$t"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>',
        },
    )
    assert resp.status_code == 422
    assert "supported" in resp.json()["detail"] and "Choices" in resp.json()["detail"]
    resp = client.post("/setup", json={"project": "1.1", "schema": TEXT, "extra_params": {"model_config": "nope"}})
    assert resp.status_code == 400 and "available" in resp.json()["detail"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 422, "invalid request body"),
        (b'{"project": "1.2"}', 422, "tasks"),
        (b'{"tasks": "x", "project": "1.2"}', 422, "tasks"),
        (b'{"tasks": [{"id": 1, "data": {"text": "hi"}}]}', 400, "project"),
    ],
)
def test_malformed_predict_requests_get_clear_json_errors(client, body, status, words):
    resp = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status
    assert words in str(resp.json()["detail"])


def test_predict_for_an_unknown_project_without_config_is_404(client):
    resp = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "a"}}], "project": "99.1"})
    assert resp.status_code == 404 and "unknown" in resp.json()["detail"]


def test_text_cold_start_scores_every_good_task_and_skips_bad_ones(client):
    version = setup(client, "3.1700000000", TEXT)
    data = rotten_tomatoes(n=12, seed=1)
    tasks = [{"id": i + 1, "data": {"text": t}, "project": 3} for i, t in enumerate(data.texts)]
    tasks.insert(3, {"id": 100, "data": {"other": "x"}})  # no $text key
    tasks.insert(5, {"id": 101, "data": {"text": "   "}})  # empty text
    tasks.insert(7, "not a task")
    results = predict(client, "3.1700000000", TEXT, tasks)
    assert results[3] == [] and results[5] == [] and results[7] == []
    scores = assert_valid(results, version, n_ok=12)
    assert len(set(scores)) == 12 and np.ptp(scores) > 1e-3  # ordered, never a constant
    assert all(r["result"] == [] for r in results if r != [])  # untrained: no random pre-annotation
    # /setup and /predict agree on the version (LS filters on it)
    assert setup(client, "3.1700000000", TEXT) == version


def test_trained_text_model_pre_annotates_and_is_unsure_where_labels_conflict(client, configs_dir):
    # entropy: the hand-made case below is aleatoric (conflicting labels), which BALD by design does not rank
    setup(client, "4.1", TEXT, model_config="text-minilm-entropy")
    sure, unsure, other = (
        "An utterly joyful, brilliant and moving film.",
        "The movie is about a family.",
        "A dull, tedious and painfully bad film.",
    )
    texts = [sure] * 10 + [unsure] * 10 + [other] * 10
    labels = [["fresh"]] * 10 + [["fresh"], ["rotten"]] * 5 + [["rotten"]] * 10
    version = train_version(client, 4, texts, labels)
    results = predict(client, "4.1", TEXT, [{"id": 1, "data": {"text": sure}}, {"id": 2, "data": {"text": unsure}}])
    scores = assert_valid(results, version, n_ok=2)
    assert scores[1] < scores[0]  # B (unsure) is served before A (sure)
    assert results[0]["result"][0]["value"]["choices"] == ["fresh"]
    assert results[0]["result"][0]["from_name"] == "sentiment" and results[0]["result"][0]["to_name"] == "text"


@pytest.mark.parametrize("strategy", ["margin", "least_confidence"])
def test_other_strategies_also_rank_the_conflicting_task_first(client, strategy):
    setup(client, "5.1", TEXT, model_config=f"text-minilm-{strategy}")
    texts = ["Wonderful!"] * 8 + ["It has actors."] * 8
    labels = [["fresh"]] * 8 + [["fresh"], ["rotten"]] * 4
    version = train_version(client, 5, texts, labels)
    results = predict(
        client, "5.1", TEXT, [{"id": 1, "data": {"text": "Wonderful!"}}, {"id": 2, "data": {"text": "It has actors."}}]
    )
    scores = assert_valid(results, version, n_ok=2)
    assert scores[1] < scores[0]


def test_default_model_scores_with_mc_dropout(client):
    version0 = setup(client, "6.1", TEXT)
    data = rotten_tomatoes(n=40, seed=2)
    version = train_version(client, 6, data.texts[:30], [[label] for label in data.labels[:30]])
    assert version != version0
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(data.texts[30:])]
    results = predict(client, "6.1", TEXT, tasks)
    scores = assert_valid(results, version, n_ok=10)
    assert len(set(scores)) == 10
    assert all(r["result"][0]["value"]["choices"][0] in ("fresh", "rotten") for r in results)
    # the project status reports the serving version
    assert client.get("/projects/6/status").json()["current_version"] == version


def test_multilabel_text_project(client):
    version0 = setup(client, "7.1", MULTI)
    texts = [
        "Great acting by the lead.",
        "The story is gripping.",
        "The soundtrack is beautiful.",
        "Great acting and a gripping story.",
    ] * 4
    labels = [["acting"], ["story"], ["music"], ["acting", "story"]] * 4
    cold = predict(client, "7.1", MULTI, [{"id": 1, "data": {"text": texts[0]}}, {"id": 2, "data": {"text": texts[1]}}])
    assert_valid(cold, version0, n_ok=2)
    version = train_version(client, 7, texts, labels)
    results = predict(client, "7.1", MULTI, [{"id": i, "data": {"text": t}} for i, t in enumerate(texts[:4])])
    assert_valid(results, version, n_ok=4)
    chosen = [set(r["result"][0]["value"]["choices"]) if r["result"] else set() for r in results]
    assert chosen[0] == {"acting"} and chosen[3] == {"acting", "story"}


def test_image_project_downloads_scores_and_survives_bad_images(client, file_server):
    version = setup(client, "8.1", IMAGE)
    data = digits_png(file_server.root / "digits", n=30, seed=0)
    good = [p for p, label in zip(data.paths, data.labels) if label in ("0", "1", "2")][:4]
    (file_server.root / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    Image.new("L", (8000, 6000)).save(file_server.root / "bomb.png")  # 48 MP: over the 40 MP guard
    urls = [f"{file_server.url}/digits/{p.name}" for p in good]
    tasks = [{"id": i, "data": {"image": u}} for i, u in enumerate(urls)]
    tasks.insert(1, {"id": 90, "data": {"image": f"{file_server.url}/missing.png"}})
    tasks.insert(2, {"id": 91, "data": {"image": f"{file_server.url}/not-an-image.png"}})
    tasks.insert(3, {"id": 92, "data": {"image": f"{file_server.url}/bomb.png"}})
    tasks.append({"id": 93, "data": {"image": "http://127.0.0.1:9/unreachable.png"}})
    results = predict(client, "8.1", IMAGE, tasks)
    assert results[1] == [] and results[2] == [] and results[3] == [] and results[-1] == []
    assert_valid(results, version, n_ok=len(good))


def test_webhook_validates_ignores_and_reports_redis_down_fast(make_client):
    client = make_client(redis_url="redis://127.0.0.1:9/0")  # nothing listens there
    setup(client, "9.1", TEXT)
    assert client.post("/webhook", content=b"nope").status_code == 400
    assert client.post("/webhook", json={"no": "action"}).status_code == 400
    unknown = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 9}})
    assert unknown.status_code == 200 and unknown.json()["status"] == "Unknown event"
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 12345}}).status_code == 404
    started = time.perf_counter()
    resp = client.post(
        "/webhook",
        json={
            "action": "ANNOTATION_CREATED",
            "project": {"id": 9},
            "annotation": {"id": 1, "result": [{"from_name": "sentiment"}]},
        },
    )
    # LS never resends a webhook: the label is kept on disk instead of refused
    assert resp.status_code == 202 and resp.json()["status"] == "deferred" and "Redis" in resp.json()["detail"]
    assert time.perf_counter() - started < 3.0  # at once, not after a long connect timeout
    assert client.get("/projects/9/status").json()["labels_deferred"] == 1
    # serving goes on without Redis
    assert predict(client, "9.1", TEXT, [{"id": 1, "data": {"text": "fine"}}])[0]["score"] >= 0


def test_basic_auth_protects_every_route(make_client):
    client = make_client(basic_auth_user="ls", basic_auth_pass="secret")
    resp = client.get("/health")
    assert resp.status_code == 401 and "Basic" in resp.headers["www-authenticate"]
    assert client.get("/health", auth=("ls", "secret")).status_code == 200
    assert client.get("/health", auth=("ls", "wrong")).status_code == 401


def test_full_fine_tuning_version_owns_its_encoder_and_reloads_identically(make_client, tmp_path):
    client = make_client()
    setup(client, "10.1", TEXT, model_config="text-minilm-full")
    data = rotten_tomatoes(n=24, seed=4)
    version = train_version(client, 10, data.texts[:16], [[label] for label in data.labels[:16]])
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(data.texts[16:])]
    first = predict(client, "10.1", TEXT, tasks)
    assert_valid(first, version, n_ok=8)
    clf = client.app.state.backend.service.classifier(client.app.state.backend.service.state(10))
    assert clf.finetuned and clf.encoder.fingerprint != clf.base_encoder.fingerprint
    # a new process (here: a new app on the same data folder) loads the fine-tuned weights from the version
    again = predict(make_client(), "10.1", TEXT, tasks)
    assert [r["score"] for r in again] == pytest.approx([r["score"] for r in first], abs=1e-6)


def test_config_edits_keep_the_model_unless_the_label_set_changes(client):
    v0 = setup(client, "11.1", TEXT)
    data = rotten_tomatoes(n=12, seed=5)
    v1 = train_version(client, 11, data.texts, [[label] for label in data.labels])
    relaid = TEXT.replace("<View>", '<View style="padding: 4px"><Header value="Review"/>')
    assert setup(client, "11.1", relaid) == v1  # layout-only edit: the trained version keeps serving
    relabelled = TEXT.replace('<Choice value="rotten"/>', '<Choice value="rotten"/><Choice value="mixed"/>')
    v2 = setup(client, "11.1", relabelled)
    assert v2 not in (v0, v1) and "-v2-" in v2  # a new label set starts from an untrained head, never resets numbering
    results = predict(client, "11.1", relabelled, [{"id": 1, "data": {"text": data.texts[0]}}])
    assert results[0]["model_version"] == v2 and results[0]["result"] == []
