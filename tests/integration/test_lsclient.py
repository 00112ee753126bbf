"""The LS client against a real Label Studio: paging, versions, tokens and clear errors."""

import time

import pytest

from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError

CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="a"/>'
    '<Choice value="b"/></Choices></View>'
)


@pytest.fixture(scope="module")
def project(ls_server):
    sdk = ls_server.sdk()
    p = sdk.projects.create(title=f"client-{time.time()}", label_config=CONFIG)
    ann = {"result": [{"from_name": "c", "to_name": "text", "type": "choices", "value": {"choices": ["a"]}}]}
    skip = {"result": [], "was_cancelled": True}
    tasks = [{"data": {"text": f"t{i}"}, "annotations": [ann] if i < 2 else [skip] if i == 2 else []} for i in range(6)]
    ids = sdk.projects.import_tasks(p.id, request=tasks, return_task_ids=True).task_ids
    return p.id, list(ids)


def test_paging_stops_at_the_total_even_on_an_exact_multiple_of_the_page_size(ls_server, project):
    client = LabelStudioClient(ls_server.url, ls_server.token)
    pid, ids = project
    assert [t["id"] for t in client.iter_tasks(pid, page_size=3)] == ids  # 6 tasks, 2 full pages, no 404 after
    assert [t["id"] for t in client.iter_tasks(pid, page_size=2)] == ids
    assert [t["id"] for t in client.iter_tasks(pid, labelled_only=True, page_size=2)] == ids[:2]  # the skip is no label


def test_import_point_and_delete_versions(ls_server, project):
    client = LabelStudioClient(ls_server.url, ls_server.token)
    pid, ids = project
    for version in ("m-v1-x", "m-v2-x"):
        preds = [{"task": t, "result": [], "score": 0.5, "model_version": version} for t in ids[2:]]  # 4 tasks
        assert client.import_predictions(pid, preds, batch_size=3) == 4
    client.set_model_version(pid, "m-v2-x")
    assert client.model_versions(pid) == {"m-v1-x": 4, "m-v2-x": 4}
    assert client.delete_model_version(pid, "m-v1-x") == 4
    assert client.model_versions(pid) == {"m-v2-x": 4}
    assert client.get_project(pid).model_version == "m-v2-x"


def test_parallel_import_requests_create_every_prediction_once(ls_server, project):
    client = LabelStudioClient(ls_server.url, ls_server.token)
    pid, ids = project
    preds = [{"task": t, "result": [], "score": i / 10, "model_version": "m-par"} for i, t in enumerate(ids)]
    assert client.import_predictions(pid, preds, batch_size=1, concurrency=4) == len(ids)
    stored = sorted((task, score) for _, task, score in client.predictions_of_version(pid, "m-par"))
    assert stored == sorted((p["task"], p["score"]) for p in preds)
    assert client.delete_model_version(pid, "m-par") == len(ids)


def test_a_personal_access_token_is_exchanged_for_access_tokens(ls_server, project):
    pat = ls_server.create_pat()
    client = LabelStudioClient(ls_server.url, pat)
    token = client.access_token()
    assert token != pat and token.count(".") == 2
    assert client.access_token() == token  # cached until it nearly expires
    assert [t["id"] for t in client.iter_tasks(project[0])] == project[1]


def test_errors_say_what_to_check(ls_server, project):
    with pytest.raises(LabelStudioError, match="401.*LABEL_STUDIO_API_KEY"):
        LabelStudioClient(ls_server.url, "f" * 40).get_project(project[0])
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio"):
        LabelStudioClient("http://127.0.0.1:9", "x", timeout=2).get_project(1)
    with pytest.raises(LabelStudioError, match="must start with http"):
        LabelStudioClient("localhost:8080", "x")


def test_duplicates_of_a_version_are_removed_keeping_ours_else_the_newest(ls_server, project):
    client = LabelStudioClient(ls_server.url, ls_server.token)
    pid, ids = project
    pool = ids[2:]
    ours = {t: 0.25 for t in pool}
    client.import_predictions(
        pid, [{"task": t, "result": [], "score": ours[t], "model_version": "m-v3-x"} for t in pool]
    )
    # LS's own /predict results raced our import: later rows for three tasks; another version is left alone
    raced = [{"task": t, "result": [], "score": 0.75, "model_version": "m-v3-x"} for t in pool[:3]]
    client.import_predictions(pid, raced)
    client.import_predictions(pid, [{"task": pool[0], "result": [], "score": 0.5, "model_version": "other"}])
    before = client.predictions_of_version(pid, "m-v3-x")
    assert len(before) == len(pool) + 3
    # our score is known for all but pool[2]: there the newest row stays
    assert client.remove_duplicate_predictions(pid, "m-v3-x", {t: ours[t] for t in pool if t != pool[2]}) == 3
    after = client.predictions_of_version(pid, "m-v3-x")
    assert sorted(task for _, task, _ in after) == sorted(pool)  # one per task
    assert {task: score for _, task, score in after} == {**ours, pool[2]: 0.75}
    assert client.model_versions(pid)["other"] == 1
    assert client.remove_duplicate_predictions(pid, "m-v3-x", ours) == 0
    assert not client.delete_prediction(max(pred for pred, _, _ in after) + 10_000)  # already gone: no error
