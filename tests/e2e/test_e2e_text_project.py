"""End to end, text: Choices on Text, 240 real Rotten Tomatoes snippets, a real Label Studio and `ml-backend serve`.

Connect by URL -> the backend scores the whole pool and points the project at its version -> /next serves the
lowest score -> 20 annotations (one skip, one corrected by PATCH) via webhooks -> a new version replaces the old one
everywhere and /next serves the new lowest score.
"""

from __future__ import annotations

import pytest

from tests.e2e import scenario

pytestmark = pytest.mark.e2e

N_TASKS = 240
N_ANNOTATE = 20

LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="fresh"/>
    <Choice value="rotten"/>
  </Choices>
</View>"""


def _rotten_tomatoes(n: int, seed: int):
    from ml_backend.simulation.datasets import rotten_tomatoes

    data = rotten_tomatoes(n, seed=seed)
    return data.texts, data.labels


def test_text_project_active_learning_loop(ls_api, start_backend):
    texts, labels = _rotten_tomatoes(N_TASKS, seed=7)
    assert len(texts) == N_TASKS and set(labels) == {"fresh", "rotten"}

    project = ls_api.create_project("e2e text: rotten tomatoes", LABEL_CONFIG)
    pid = project["id"]
    imported = ls_api.import_tasks(pid, [{"text": t} for t in texts])
    assert imported["task_count"] == N_TASKS, imported
    label_of = dict(zip(texts, labels))  # the loader keeps each text once
    truth = {t["id"]: label_of[t["data"]["text"]] for t in ls_api.tasks(pid)}
    all_ids = set(truth)
    assert len(all_ids) == N_TASKS

    backend = start_backend(name="text-backend", RETRAIN_EVERY="1")
    conn = scenario.connect(ls_api, backend, pid, title="al-backend e2e text")

    # 1. the backend scores the whole pool on its own and points the project at the /setup version
    state = scenario.wait_initial_predictions(ls_api, backend, conn, all_ids)
    assert state.project_version == conn.setup_version
    assert state.versions == {conn.setup_version: N_TASKS}, state.versions
    scores = list(scenario.scores_of(state).values())
    assert len(set(round(s, 6) for s in scores)) > 1, f"all {len(scores)} scores are equal: no ranking"
    scenario.assert_next_is_lowest(ls_api, pid, state, all_ids)

    # 2. label 20 tasks in /next order (one skip, one update); the backend retrains from the webhooks
    log = scenario.label_following_next(
        ls_api,
        pid,
        truth,
        "sentiment",
        "text",
        N_ANNOTATE,
        skip_at=3,
        update_at=5,
        wrong_label={"fresh": "rotten", "rotten": "fresh"},
    )
    assert len(log["annotated"]) == N_ANNOTATE

    state, unlabelled = scenario.wait_retrained(ls_api, backend, pid, conn.setup_version, all_ids)
    new_version = state.backend_version
    assert new_version != conn.setup_version
    assert state.project_version == new_version
    assert conn.setup_version not in state.versions, f"old predictions remain: {state.versions}"
    assert unlabelled == all_ids - set(log["annotated"]) | set(log["skipped"]), "LS's is_labeled disagrees"
    assert N_TASKS - N_ANNOTATE + 1 <= state.versions[new_version] <= N_TASKS, state.versions
    for t in unlabelled:  # the trained version pre-annotates every unlabelled task
        (r,) = state.per_task[t][0].result
        assert (r["from_name"], r["to_name"], r["type"]) == ("sentiment", "text", "choices"), r
        assert r["value"]["choices"] in (["fresh"], ["rotten"]), r

    status = backend.status(pid)
    assert status["trained"] is True, status

    # LS asks the backend for its versions (GET /versions through /api/ml/{id}/versions)
    versions = ls_api.ml_versions(conn.ml["id"])
    assert new_version in versions.get("versions", []), versions

    # 3. /next serves the lowest score of the new version among the tasks nobody has touched
    untouched = all_ids - set(log["annotated"])
    scenario.assert_next_is_lowest(ls_api, pid, state, untouched)
