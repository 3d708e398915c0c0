"""Chunk bodies of the native API, in process: a slow body that keeps coming is read to its
end however long it takes, and only one that goes quiet is given up."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from edgestore.api import native as native_api
from edgestore.api.app import create_app
from tests.conftest import SettingsFactory
from tests.helpers import KiB, random_bytes


def _put_slowly(
    make_settings: SettingsFactory, body: bytes, *, pieces: int, pause: float
) -> tuple[httpx.Response, dict]:
    """PUT `body` as one chunk of a new session, in `pieces` with `pause` seconds before each;
    the answer, and the session's status afterwards."""
    app = create_app(make_settings(auth_enabled=False, maintenance_interval_seconds=0))
    cid = hashlib.sha256(body).hexdigest()

    async def trickle() -> AsyncIterator[bytes]:
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            await asyncio.sleep(pause)
            yield body[i : i + step]

    async def run() -> tuple[httpx.Response, dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://es") as c:
                uid = (await c.post("/v1/uploads", json={"size": len(body)})).json()["upload_id"]
                r = await c.put(
                    f"/v1/uploads/{uid}/chunks/{cid}",
                    content=trickle(),
                    headers={"Content-Length": str(len(body))},
                )
                return r, (await c.get(f"/v1/uploads/{uid}")).json()

    return asyncio.run(run())


def test_a_slow_chunk_body_that_keeps_coming_is_stored(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk body had 600 s to arrive whole: over a slow uplink shared by the client's
    connections (8 MiB at 10 KB/s each takes ~14 min) every PUT was cut with 400
    transfer_interrupted, which the client does not retry, so the upload could never finish.
    Only silence means the client is gone."""
    monkeypatch.setattr(native_api, "CHUNK_BODY_IDLE_SECONDS", 1.0)
    body = random_bytes(64 * KiB, seed=61)
    r, status = _put_slowly(make_settings, body, pieces=8, pause=0.3)  # 2.4 s, never quiet 1 s
    assert r.status_code == 201, r.text
    assert (status["pinned_chunks"], status["pinned_bytes"]) == (1, len(body))


def test_a_chunk_body_that_goes_quiet_is_given_up(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native_api, "CHUNK_BODY_IDLE_SECONDS", 1.0)
    body = random_bytes(64 * KiB, seed=62)
    r, status = _put_slowly(make_settings, body, pieces=2, pause=1.5)
    assert (r.status_code, r.json()["error"]) == (400, "transfer_interrupted"), r.text
    assert "no bytes from the client for 1s" in r.json()["message"]
    assert status["pinned_chunks"] == 0
