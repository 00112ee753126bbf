"""End to end, personal access token: the backend runs with LABEL_STUDIO_API_KEY=<PAT> (a JWT refresh token, the
only kind of token LS 1.23 offers new users by default) instead of the legacy token, against a project of uploaded
images. LS answers 401 to ``Bearer <PAT>`` on /data/upload, so the backend must exchange it for an access token:
the predictions appear only if it downloaded every image."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e import scenario
from tests.e2e.images import create_image_project, digit_images

pytestmark = pytest.mark.e2e

PER_CLASS = 8


def test_backend_with_personal_access_token_downloads_uploads(ls_server, ls_api, start_backend, tmp_path):
    pat = ls_server.create_pat()
    assert pat.count(".") == 2, "a PAT is a JWT"

    images = digit_images(tmp_path / "png", PER_CLASS)
    pid, truth = create_image_project(ls_api, "e2e image: PAT", images)
    all_ids = set(truth)

    # the premise: the uploads are protected, and the PAT itself is not a bearer token for them
    some_task = next(t for t in ls_api.tasks(pid))
    path = some_task["data"]["image"]
    with httpx.Client(base_url=ls_server.url, trust_env=False, timeout=30) as c:
        assert c.get(path).status_code in (401, 403), "uploads readable without a token"
        assert c.get(path, headers={"Authorization": f"Bearer {pat}"}).status_code == 401
        access = ls_server.access_token(pat)
        assert c.get(path, headers={"Authorization": f"Bearer {access}"}).status_code == 200

    backend = start_backend(api_key=pat, name="pat-backend")
    assert backend.env["LABEL_STUDIO_API_KEY"] == pat
    conn = scenario.connect(ls_api, backend, pid, title="al-backend e2e PAT")
    state = scenario.wait_initial_predictions(ls_api, backend, conn, all_ids)
    assert state.versions == {conn.setup_version: len(all_ids)}, state.versions
    assert state.project_version == conn.setup_version
    assert state.sampling == "Uncertainty sampling"
