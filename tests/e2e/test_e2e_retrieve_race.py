"""End to end: "Retrieve predictions" right after connecting races the backend's own import of the same version.

An admin connects the backend (the backend starts scoring the pool in the background) and at once runs the Data
Manager action *Retrieve predictions* on all tasks: LS calls /predict and saves those predictions too. When the loop
settles, every task has exactly one prediction of the version, and its score is the one /predict gives for the task
(a task's score does not depend on the path that scored it).
"""

from __future__ import annotations

import math

import pytest

from tests.e2e import scenario
from tests.e2e.test_e2e_text_project import LABEL_CONFIG, _rotten_tomatoes

pytestmark = pytest.mark.e2e

N_TASKS = 120
N_SAMPLE = 12


def test_retrieve_predictions_while_the_backend_imports_leaves_one_prediction_per_task(ls_api, start_backend):
    texts, _ = _rotten_tomatoes(N_TASKS, seed=11)
    pid = ls_api.create_project("e2e retrieve race", LABEL_CONFIG)["id"]
    assert ls_api.import_tasks(pid, [{"text": t} for t in texts])["task_count"] == N_TASKS
    all_ids = {t["id"] for t in ls_api.tasks(pid)}

    backend = start_backend(name="race-backend")
    conn = scenario.connect(ls_api, backend, pid, title="al-backend e2e race")
    retrieved = ls_api.retrieve_predictions(pid)  # while the first pool scoring runs in the backend's worker
    assert retrieved["processed_items"] == N_TASKS, retrieved
    with backend.client() as c:
        asked = c.get("/metrics", params={"format": "json"}).json().get("tasks_scored", 0)
    assert asked > 0, "LS did not call /predict: the race this test is about did not happen"

    state = scenario.wait_initial_predictions(ls_api, backend, conn, all_ids)  # exactly one per task, settled
    assert state.versions == {conn.setup_version: N_TASKS}, state.versions

    tasks = {t["id"]: t for t in ls_api.tasks(pid)}
    sample = sorted(all_ids)[:: max(1, N_TASKS // N_SAMPLE)]
    with backend.client() as c:
        resp = c.post("/predict", json={"tasks": [tasks[t] for t in sample], "project": str(pid)})
    assert resp.status_code == 200, resp.text
    fresh = resp.json()["results"]
    mismatches = {}
    for tid, again in zip(sample, fresh):
        (stored,) = state.per_task[tid]
        assert again["model_version"] == stored.model_version == conn.setup_version
        if not math.isclose(again["score"], stored.score, rel_tol=0, abs_tol=1e-9):
            mismatches[tid] = (stored.score, again["score"])
    assert not mismatches, f"stored vs fresh /predict scores differ for {len(mismatches)} tasks: {mismatches}"
