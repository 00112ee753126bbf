"""End to end, images: Choices on Image, 60 handwritten digits UPLOADED to Label Studio (the backend must download
them with its token), the same loop as the text project: pool scored on connect, /next lowest first, 12 annotations
(one skip, one PATCH), a new version replaces the old one."""

from __future__ import annotations

import pytest

from tests.e2e import scenario
from tests.e2e.images import DIGIT_CLASSES, create_image_project, digit_images

pytestmark = pytest.mark.e2e

PER_CLASS = 20
N_ANNOTATE = 12


def test_image_project_active_learning_loop(ls_api, start_backend, tmp_path):
    images = digit_images(tmp_path / "png", PER_CLASS)
    pid, truth = create_image_project(ls_api, "e2e image: uploaded digits", images)
    all_ids = set(truth)
    n = len(all_ids)
    assert n == PER_CLASS * len(DIGIT_CLASSES)

    backend = start_backend(name="image-backend", RETRAIN_EVERY="4")
    conn = scenario.connect(ls_api, backend, pid, title="al-backend e2e image")

    state = scenario.wait_initial_predictions(ls_api, backend, conn, all_ids)
    assert state.versions == {conn.setup_version: n}, state.versions
    scenario.assert_next_is_lowest(ls_api, pid, state, all_ids)

    wrong = {c: DIGIT_CLASSES[(i + 1) % len(DIGIT_CLASSES)] for i, c in enumerate(DIGIT_CLASSES)}
    log = scenario.label_following_next(
        ls_api, pid, truth, "digit", "image", N_ANNOTATE, skip_at=2, update_at=4, wrong_label=wrong
    )

    state, unlabelled = scenario.wait_retrained(ls_api, backend, pid, conn.setup_version, all_ids)
    assert state.backend_version != conn.setup_version
    assert state.project_version == state.backend_version
    assert conn.setup_version not in state.versions, state.versions
    assert unlabelled == (all_ids - set(log["annotated"])) | set(log["skipped"])
    assert backend.status(pid)["trained"] is True
    for t in unlabelled:  # the trained version pre-annotates every unlabelled task
        (r,) = state.per_task[t][0].result
        assert (r["from_name"], r["to_name"], r["type"]) == ("digit", "image", "choices"), r
        assert len(r["value"]["choices"]) == 1 and r["value"]["choices"][0] in DIGIT_CLASSES, r

    scenario.assert_next_is_lowest(ls_api, pid, state, all_ids - set(log["annotated"]))
