"""The admin's view on a real project: a real Label Studio, real Redis, the real jobs run by an rq worker, three
trained versions; the dashboard rendered by headless Chromium, and the exports read back by the tools' formats.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rq import SimpleWorker

from ml_backend.jobs import context
from ml_backend.labelstudio.client import LabelStudioClient
from ml_backend.simulation.datasets import rotten_tomatoes

CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>'
)
REDIS_URL = "redis://127.0.0.1:6379/12"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _annotation(label: str) -> dict:
    return {"result": [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]}


class Project:
    """An LS project taken through 3 trainings by the product's own jobs, and the app serving its dashboard."""

    def __init__(self, ls_server, configs_dir, encoders, data_dir: Path):
        from fastapi.testclient import TestClient

        from ml_backend.api.app import create_app
        from ml_backend.settings import Settings

        self.ls_server = ls_server
        self.settings = Settings(
            data_dir=data_dir,
            redis_url=REDIS_URL,
            queue_name=f"test-dash-{uuid.uuid4().hex[:8]}",
            label_studio_url=ls_server.url,
            label_studio_api_key=ls_server.token,
            model_configs_dir=configs_dir,
        )
        self.client = TestClient(create_app(self.settings, encoders=encoders))
        self.backend = self.client.app.state.backend
        self.sdk = ls_server.sdk()
        data = rotten_tomatoes(n=90, seed=5)
        project = self.sdk.projects.create(title=f"dashboard-{time.time()}", label_config=CONFIG)
        self.id = project.id
        tasks = [{"data": {"text": t}} for t in data.texts]
        ids = self.sdk.projects.import_tasks(self.id, request=tasks, return_task_ids=True).task_ids
        self.truth = dict(zip(ids, data.labels))
        self.labelled: set[int] = set()
        created = int(project.created_at.timestamp()) if project.created_at else 0
        setup = self.client.post("/setup", json={"project": f"{self.id}.{created}", "schema": CONFIG})
        assert setup.status_code == 200, setup.text
        context.install(context.WorkerContext(self.settings, encoders))
        self.run_jobs()

    def run_jobs(self) -> None:
        """What `ml-backend worker` does, in this process: run every queued job (train, re-score) to the end."""
        queue = self.backend.queue()
        SimpleWorker(queue.queues, connection=queue.redis).work(burst=True)

    def label_next(self, n: int) -> None:
        """Annotate the first ``n`` tasks of the served queue with their true label, then let a training run."""
        status = self.client.get(f"/projects/{self.id}/status").json()
        for task in status["next_tasks"]["tasks"][:n]:
            self.sdk.annotations.create(task["task"], **_annotation(self.truth[task["task"]]))
            self.labelled.add(task["task"])
        self.backend.queue().request_training(self.id)
        self.run_jobs()


@pytest.fixture(scope="module")
def project(ls_server, configs_dir, encoders, tmp_path_factory):
    p = Project(ls_server, configs_dir, encoders, tmp_path_factory.mktemp("dashboard-data"))
    for _ in range(3):  # three trainings: v1..v3 after the untrained v0
        p.label_next(12)
    return p


class _Dom(HTMLParser):
    """The elements of a DOM dump: (tag, attributes) in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))


def test_status_json_carries_what_the_page_shows(project):
    status = project.client.get(f"/projects/{project.id}/status").json()
    trained = [v for v in status["versions"] if v["trained"]]
    assert len(status["versions"]) >= 4 and len(trained) >= 3
    assert [p["n_labels"] for p in status["learning_curve"]] == sorted(p["n_labels"] for p in status["learning_curve"])
    assert status["budget"] == {"budget": None, "spent": 36, "left": None, "exhausted": False}
    assert sum(status["class_balance"].values()) == 36
    kappa = next(c for c in status["stopping"]["criteria"] if c["name"] == "stable predictions")
    assert kappa["decisive"] and status["versions"][-1]["kappa_with_previous"] is not None
    tasks = status["next_tasks"]["tasks"]
    assert len(tasks) == 20 and tasks[0]["rank"] == 1
    assert [t["score"] for t in tasks] == sorted(t["score"] for t in tasks)
    assert all(t["url"] == f"{project.ls_server.url}/projects/{project.id}/data?task={t['task']}" for t in tasks)
    assert all(t["predicted"] in ("fresh", "rotten") and t["reason"] for t in tasks)
    assert not project.labelled & {t["task"] for t in tasks}  # the queue never serves a labelled task
    assert status["jobs"] and any(j["meta"].get("total") for j in status["jobs"])
    flips = status["hard_examples"]["flips"]
    assert all(f["flips"] >= 1 and f["url"] for f in flips)


def test_dashboard_renders_in_headless_chromium(project, tmp_path):
    assert CHROMIUM, "the dashboard test needs the Debian package chromium (.ci/run installs it)"
    page = project.client.get(f"/dashboard/projects/{project.id}?refresh=0")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    offline = page.text.replace(project.ls_server.url, "").replace("http://www.w3.org/2000/svg", "")
    assert not any(s in offline for s in ("http://", "https://", "<script", "<link"))  # no CDN, nothing to fetch
    html = tmp_path / "dashboard.html"
    html.write_text(page.text)
    png = tmp_path / "dashboard.png"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run(
        [*args, f"--screenshot={png}", "--window-size=1280,2200", html.as_uri()],
        check=True,
        timeout=120,
        capture_output=True,
    )
    assert png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = subprocess.run([*args, "--dump-dom", html.as_uri()], check=True, timeout=120, capture_output=True, text=True)
    parser = _Dom()
    parser.feed(dom.stdout)
    elements = parser.elements
    ids = {attrs.get("id") for _, attrs in elements}
    assert {"learning-curve", "versions", "next-tasks", "jobs", "stopping", "class-balance"} <= ids
    assert sum(1 for tag, a in elements if tag == "polyline" and a.get("data-series") == "accuracy") == 1
    assert sum(1 for tag, _ in elements if tag == "circle") >= 3  # one point per trained version (and series)
    links = [a["href"] for tag, a in elements if tag == "a" and "ls-link" in a.get("class", "")]
    prefix = f"{project.ls_server.url}/projects/{project.id}/data?task="
    assert len([h for h in links if h.startswith(prefix)]) >= 20
    bars = [a for tag, a in elements if tag == "div" and a.get("role") == "progressbar"]
    assert bars and any(a["aria-valuenow"] == "100" for a in bars)  # the finished jobs' done/total
    version_rows = dom.stdout.split('id="versions"')[1].split("</table>")[0].count("<tr>")
    assert version_rows >= 1 + 4  # header + v0..v3
    if os.environ.get("DASHBOARD_SCREENSHOT"):  # refresh the README's screenshot: DASHBOARD_SCREENSHOT=docs/...
        shutil.copy(png, os.environ["DASHBOARD_SCREENSHOT"])


def test_dashboard_index_and_auth(project, encoders):
    from fastapi.testclient import TestClient

    from ml_backend.api.app import create_app

    index = project.client.get("/dashboard")
    assert index.status_code == 200 and f'href="/dashboard/projects/{project.id}"' in index.text
    assert '<meta http-equiv="refresh" content="10">' in index.text  # refreshes itself by default
    assert project.client.get("/dashboard/projects/999999").status_code == 404
    guarded = TestClient(
        create_app(project.settings.model_copy(update={"basic_auth_user": "u", "basic_auth_pass": "p"}), encoders)
    )
    assert guarded.get("/dashboard").status_code == 401
    assert guarded.get(f"/dashboard/projects/{project.id}").status_code == 401
    assert guarded.get(f"/dashboard/projects/{project.id}", auth=("u", "p")).status_code == 200


def test_ls_json_export_reimports_into_label_studio(project):
    sdk = project.sdk
    for what, annotated in (("labelled", True), ("next", False)):
        resp = project.client.get(f"/projects/{project.id}/export", params={"what": what, "format": "ls-json"})
        assert resp.status_code == 200, resp.text
        tasks = json.loads(resp.content)
        assert len(tasks) == (36 if what == "labelled" else 90 - 36) == int(resp.headers["x-export-count"])
        target = sdk.projects.create(title=f"reimport-{what}-{time.time()}", label_config=CONFIG)
        imported = sdk.projects.import_tasks(target.id, request=tasks, return_task_ids=True)
        assert len(imported.task_ids) == len(tasks)
        back = list(LabelStudioClient(project.ls_server.url, project.ls_server.token).iter_tasks(target.id))
        assert len(back) == len(tasks)
        assert {t["data"]["text"] for t in back} == {t["data"]["text"] for t in tasks}
        kind = "annotations" if annotated else "predictions"
        assert all(len(t[kind]) == 1 for t in back)
        choices = {t["data"]["text"]: t[kind][0]["result"][0]["value"]["choices"] for t in back}
        assert choices == {t["data"]["text"]: t[kind][0]["result"][0]["value"]["choices"] for t in tasks}
        if not annotated:
            assert {t["predictions"][0]["model_version"] for t in back} == {status_version(project)}


def status_version(project: Project) -> str:
    return project.client.get(f"/projects/{project.id}/status").json()["current_version"]


def test_prodigy_csv_and_the_cli(project, tmp_path):
    resp = project.client.get(
        f"/projects/{project.id}/export", params={"what": "next", "format": "prodigy-jsonl", "limit": 5}
    )
    rows = [json.loads(line) for line in resp.text.splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert row["text"] and row["label"] in ("fresh", "rotten") and row["accept"] == [row["label"]]
        assert 0.0 <= row["meta"]["score"] <= 1.0 and row["meta"]["task_id"] in project.truth
    labelled = project.client.get(
        f"/projects/{project.id}/export", params={"what": "labelled", "format": "prodigy-jsonl"}
    ).text.splitlines()
    assert all(json.loads(line)["answer"] == "accept" for line in labelled) and len(labelled) == 36
    bad = project.client.get(f"/projects/{project.id}/export", params={"format": "cvat-xml"})
    assert bad.status_code == 400 and "image" in bad.json()["detail"]
    assert project.client.get(f"/projects/{project.id}/export", params={"what": "best"}).status_code == 400

    out = tmp_path / "hard.csv"
    env = {
        **os.environ,
        "DATA_DIR": str(project.settings.data_dir),
        "MODEL_CONFIGS_DIR": str(project.settings.model_configs_dir),
        "LABEL_STUDIO_URL": project.ls_server.url,
        "LABEL_STUDIO_API_KEY": project.ls_server.token,
    }
    cli = [sys.executable, "-m", "ml_backend.cli", "export", "--project", str(project.id)]
    done = subprocess.run(
        [*cli, "--what", "hard", "--format", "csv", "--limit", "7", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    header, *lines = list(csv.reader(io.StringIO(out.read_text())))
    hard = project.client.get(f"/projects/{project.id}/status").json()["hard_examples"]
    expected = len({d["task"] for d in hard["disagreements"]} | {f["task"] for f in hard["flips"]})
    assert header[:5] == ["task_id", "input", "labels", "source", "score"] and len(lines) == min(7, expected)
    assert all(int(row[0]) in project.truth and row[2] in ("fresh", "rotten") for row in lines)
    refused = subprocess.run([*cli, "--format", "cvat-xml"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "image" in refused.stderr


def test_a_budget_set_in_ls_extra_params_reaches_the_status(make_client):
    """LS sends the model's extra params with /setup: the budget is kept with the project, spent by trainings."""
    from ml_backend.learning.training import train_version

    client = make_client()
    sent = {"project": "41.1700000000", "schema": CONFIG, "extra_params": {"label_budget": 20}}
    assert client.post("/setup", json=sent).status_code == 200
    status = client.get("/projects/41/status").json()
    assert status["budget"] == {"budget": 20, "spent": 0, "left": 20, "exhausted": False}
    assert not status["stopping"]["stop"]

    service = client.app.state.backend.service
    data = rotten_tomatoes(n=24, seed=1)
    tasks = [{"id": i + 1, "data": {"text": t}} for i, t in enumerate(data.texts)]
    assert train_version(service, service.state(41), tasks, [[label] for label in data.labels]).trained
    status = client.get("/projects/41/status").json()
    assert status["budget"] == {"budget": 20, "spent": 24, "left": 0, "exhausted": True}
    assert status["stopping"]["stop"] and status["stopping"]["reasons"] == [
        "label budget: 24 of 20 labels spent, 4 over"
    ]
    page = client.get("/dashboard/projects/41?refresh=0").text
    assert "Stop labelling" in page and 'aria-label="label budget"' in page

    bad = client.post("/setup", json={**sent, "extra_params": {"label_budget": "many"}})
    assert bad.status_code == 400 and "label_budget" in bad.json()["detail"]


def test_status_and_page_answer_when_the_model_config_no_longer_loads(make_client, configs_dir, tmp_path):
    """The admin needs the page most when jobs fail: a broken config file must not take the status down."""
    folder = tmp_path / "configs"
    shutil.copytree(configs_dir, folder)
    (folder / "text-mine.yaml").write_text((folder / "text-minilm.yaml").read_text())
    client = make_client(model_configs_dir=folder)
    sent = {"project": "42.1700000000", "schema": CONFIG, "extra_params": {"model_config": "text-mine"}}
    assert client.post("/setup", json=sent).status_code == 200
    (folder / "text-mine.yaml").write_text("name: mine\nkind: text\nencoder: {pretrained: x}\nhead: {hidden: -1}\n")
    status = client.get("/projects/42/status")
    assert status.status_code == 200, status.text
    body = status.json()
    assert "text-mine" in body["model_config_error"] and "hidden" not in body["model_config_error"]
    assert body["budget"]["spent"] == 0 and body["current_version"].startswith("minilm-v0-")
    page = client.get("/dashboard/projects/42?refresh=0")
    assert page.status_code == 200 and "is invalid" in page.text
