"""With Basic auth on, LS's auto-created webhook (no headers) must still reach /webhook: the backend adds the
credential to it. Real Label Studio, the real app behind uvicorn, real annotations."""

from __future__ import annotations

import time
import uuid

import pytest

from ml_backend.labelstudio.client import LabelStudioClient
from ml_backend.labelstudio.webhooks import webhook_headers
from tests.integration.test_api import TEXT
from tests.integration.test_faults import LiveServer


@pytest.mark.parametrize("secret", [None, "hook-token"])
def test_the_backend_adds_its_credential_to_the_webhook_ls_created(ls_server, tmp_path, configs_dir, encoders, secret):
    from ml_backend.api.app import create_app
    from ml_backend.settings import Settings

    settings = Settings(
        data_dir=tmp_path / "data",
        model_configs_dir=configs_dir,
        redis_url="redis://127.0.0.1:6379/14",
        queue_name=f"test-hook-{uuid.uuid4().hex[:8]}",
        label_studio_url=ls_server.url,
        label_studio_api_key=ls_server.token,
        basic_auth_user="ls",
        basic_auth_pass="pw",
        webhook_secret=secret,
    )
    server = LiveServer(create_app(settings, encoders=encoders))
    backend = server.server.config.app.state.backend
    try:
        sdk = ls_server.sdk()
        project = sdk.projects.create(title=f"hook-{time.time()}", label_config=TEXT)
        (task_id,) = sdk.projects.import_tasks(
            project.id, request=[{"text": "A fine film."}], return_task_ids=True
        ).task_ids
        sdk.ml.create(
            project=project.id,
            url=server.url,
            title="al-backend",
            is_interactive=False,
            auth_method="BASIC_AUTH",
            basic_auth_user="ls",
            basic_auth_pass="pw",
        )
        result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["fresh"]}}]
        sdk.annotations.create(id=task_id, result=result)
        time.sleep(2)  # LS posts webhooks synchronously; give it a moment anyway
        assert backend.counters["webhooks_accepted"] == 0  # LS's webhook carries no header: refused

        client = LabelStudioClient(ls_server.url, ls_server.token)
        headers = webhook_headers("ls", "pw", secret)
        assert client.secure_webhooks(project.id, headers) == 1
        assert client.secure_webhooks(project.id, headers) == 0  # idempotent

        sdk.annotations.create(id=task_id, result=result)
        deadline = time.monotonic() + 15
        while backend.counters["webhooks_accepted"] < 1:
            assert time.monotonic() < deadline, "LS's webhook never reached /webhook with the credential"
            time.sleep(0.2)
    finally:
        server.stop()
