"""The request-context middleware, in process: request ids on every answer and log record,
including those of errors nothing maps (a bug's 500)."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from fastapi import FastAPI, Request

from edgestore.api.app import create_app
from edgestore.api.logs import _RequestIdFilter
from tests.conftest import SettingsFactory


def _app_with_a_bug(make_settings: SettingsFactory) -> FastAPI:
    """The real app plus one route that fails the way a bug does (no domain error)."""
    app = create_app(make_settings(auth_enabled=False, maintenance_interval_seconds=0))

    @app.get("/bug")
    async def bug(request: Request) -> None:
        request.state.error_headers = {"Tus-Resumable": "1.0.0"}  # as the tus routes set
        raise RuntimeError("failed on /srv/secret/path")

    return app


def _get(app: FastAPI, path: str, headers: dict[str, str]) -> httpx.Response:
    async def run() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://es") as c:
                return await c.get(path, headers=headers)

    return asyncio.run(run())


def test_an_unexpected_error_is_a_500_with_the_request_id(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Starlette answers unmapped errors outside every middleware: the 500 went out without
    X-Request-ID (the docs promise it on every response) and its traceback was logged under
    "-", so the one log record an operator needs could not be found from the client's id."""
    app = _app_with_a_bug(make_settings)
    caplog.handler.addFilter(_RequestIdFilter())
    caplog.set_level(logging.INFO)
    r = _get(app, "/bug", {"X-Request-Id": "bug-rid-7"})
    assert r.status_code == 500
    assert r.json() == {
        "error": "internal_error",
        "message": "internal server error; see the server log",
    }
    assert "/srv/secret" not in r.text
    assert r.headers.get("x-request-id") == "bug-rid-7"
    assert r.headers.get("tus-resumable") == "1.0.0"
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None, errors  # one traceback
    assert [getattr(rec, "request_id", None) for rec in errors] == ["bug-rid-7"]
    access = [rec for rec in caplog.records if getattr(rec, "path", None) == "/bug"]
    assert [rec.status for rec in access] == [500]  # type: ignore[attr-defined]


def test_a_client_request_id_is_kept_whole_or_replaced(make_settings: SettingsFactory) -> None:
    """docs/operations.md: the client's X-Request-ID is used when it is a plain token of at
    most 64 characters, else one is generated. A longer one was cut to its first 64: the
    client got back (and the log held) an id it never sent, matching none of its own."""
    app = _app_with_a_bug(make_settings)
    exact, long = "a" * 64, "trace-" + "b" * 70
    assert _get(app, "/healthz", {"X-Request-Id": exact}).headers["x-request-id"] == exact
    answered = _get(app, "/healthz", {"X-Request-Id": long}).headers["x-request-id"]
    assert answered != long[:64] and answered != long
    assert len(answered) == 16  # one of the server's own
