"""Every error leaves as JSON ``{"status": code, "detail": ...}`` (label-studio-ml's shape), never HTML.

An unexpected error's body says only that it happened: exception text can carry absolute paths, file contents or
secrets, so it goes to the server log, never to the caller.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml_backend.learning.store import StoreError

log = logging.getLogger(__name__)


def error(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": status, "detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "problem": e.get("msg")}
            for e in exc.errors()
        ]
        return error(422, {"message": "invalid request body", "problems": problems})

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # JSON nested thousands of levels deep exhausts the parser's recursion: the caller's fault, not ours
        return error(400, "the body is nested too deeply")

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        # a deployment problem that passes (endpoint down, credentials rotated): LS may retry; nothing was lost
        log.error("model store unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error(503, "the model store is unavailable (details are in the server log)")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, "internal error (details are in the server log)")
