"""Who may call the backend: HTTP Basic auth on every route, and a webhook credential LS can actually send.

LS authenticates its ML calls (/health, /setup, /predict) with Basic auth, but the webhook it auto-creates for the
backend carries no header at all. So /webhook also accepts ``Authorization: Bearer <WEBHOOK_SECRET>`` (or
``?token=<WEBHOOK_SECRET>`` in the URL, for webhooks created by hand), and the worker adds the right header to LS's
webhook itself (``LabelStudioClient.secure_webhooks``). With a secret set, /webhook refuses calls without it even
when Basic auth is off.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import FastAPI, Request

from ml_backend.api.errors import error
from ml_backend.labelstudio.webhooks import webhook_headers
from ml_backend.settings import Settings

WEBHOOK_PATH = "/webhook"


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Add the auth middleware when Basic auth or a webhook secret is configured (Settings refuses half-set Basic)."""
    basic = webhook_headers(settings.basic_auth_user, settings.basic_auth_pass, None).get("Authorization")
    secret = settings.webhook_secret
    if not basic and not secret:
        return

    def allowed(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if basic and _same(header, basic):
            return True
        if request.url.path != WEBHOOK_PATH:
            return basic is None  # only a webhook secret: the other routes stay open
        if secret is None:
            return False
        return _same(header, f"Bearer {secret}") or _same(request.query_params.get("token", ""), secret)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if allowed(request):
            return await call_next(request)
        headers = {"WWW-Authenticate": 'Basic realm="ml-backend"'} if basic else None
        return error(401, "authentication required", headers)
