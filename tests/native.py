"""Helpers for the native-protocol and client tests: small-chunk servers, chunking as the
server does, and a snapshot of everything a server stores (rows and shard files)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from edgestore.chunking import chunk_stream
from edgestore.metadata import totals
from edgestore.metadata.chunks import reference_mismatches
from edgestore.types import ChunkerParams
from tests.helpers import SMALL_CHUNKS, StoreProbe
from tests.server import ServerProcess

SMALL_PARAMS = ChunkerParams(
    SMALL_CHUNKS["chunk_min_size"], SMALL_CHUNKS["chunk_avg_size"], SMALL_CHUNKS["chunk_max_size"]
)
SMALL_ENV = {f"EDGESTORE_{name.upper()}": str(value) for name, value in SMALL_CHUNKS.items()}
DB_PARAMS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def small_chunk_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, **env: str
) -> Iterator[ServerProcess]:
    """A real server with 16/64/256 KiB chunks (many chunks from small files), on the
    database `request.param` names."""
    from tests.conftest import server_store_url

    base = tmp_path_factory.mktemp("native-server")
    url = server_store_url(request, tmp_path_factory, base)
    proc = ServerProcess(home=base / "home", database_url=url, env_extra={**SMALL_ENV, **env})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module", params=DB_PARAMS, name="server")
def small_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The `server` fixture of the native API test modules (which import it): a small-chunk
    server per module, on SQLite and on PostgreSQL."""
    with small_chunk_server(request, tmp_path_factory) as proc:
        yield proc


def chunks_of(data: bytes, params: ChunkerParams = SMALL_PARAMS) -> list[tuple[str, bytes]]:
    """(chunk id, bytes) exactly as the server cuts `data`."""
    return [(hashlib.sha256(c).hexdigest(), c) for c in chunk_stream([data], params)]


def manifest(chunks: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    return [{"id": cid, "size": len(c)} for cid, c in chunks]


def shard_files(server: ServerProcess) -> int:
    return sum(1 for p in (server.home / "shards").rglob("*") if p.is_file())


def rows(probe: StoreProbe, sql: str, **params: Any) -> list[sa.Row]:
    with probe.engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def snapshot(probe: StoreProbe, server: ServerProcess) -> dict[str, Any]:
    """Every stored thing a refused request must leave alone."""
    return {
        **probe.counts(),
        "chunks": probe.chunk_count(),
        "upload_pins": probe.count("upload_pins"),
        "refcounts": rows(probe, "SELECT coalesce(sum(refcount), 0) FROM chunks")[0][0],
        "shard_files": shard_files(server),
    }


@contextmanager
def unchanged(probe: StoreProbe, server: ServerProcess) -> Iterator[None]:
    before = snapshot(probe, server)
    yield
    assert snapshot(probe, server) == before, "a refused request changed the store"


def pins_of(probe: StoreProbe, upload_id: str) -> set[str]:
    found = rows(probe, "SELECT chunk_id FROM upload_pins WHERE upload_id = :u", u=upload_id)
    return {r[0] for r in found}


def assert_refcounts_consistent(probe: StoreProbe) -> None:
    """Every chunk's refcount equals the manifest, part and pin rows that reference it (and
    every bucket's totals the sum of its versions)."""
    with probe.engine.connect() as conn:
        assert reference_mismatches(conn) == []
        assert totals.mismatches(conn) == {}


def versions_of(probe: StoreProbe, key: str) -> int:
    found = rows(
        probe,
        "SELECT count(*) FROM object_versions v JOIN objects o ON o.object_id = v.object_id "
        "WHERE o.key = :k",
        k=key,
    )
    return found[0][0]


# --- the native API over HTTP -------------------------------------------------------------


def open_session(http: httpx.Client, size: int, **extra) -> str:
    r = http.post("/v1/uploads", json={"size": size, **extra})
    assert r.status_code == 201, r.text
    return r.json()["upload_id"]


def put(http: httpx.Client, uid: str, cid: str, body: bytes, **headers) -> httpx.Response:
    return http.put(f"/v1/uploads/{uid}/chunks/{cid}", content=body, headers=headers)


def upload_all(http: httpx.Client, uid: str, chunks: list[tuple[str, bytes]]) -> None:
    for cid, c in chunks:
        assert put(http, uid, cid, c).status_code in (200, 201)


def finalize(http: httpx.Client, uid: str, chunks, sha256: str | None) -> httpx.Response:
    body = {"chunks": manifest(chunks)}
    if sha256 is not None:
        body["sha256"] = sha256
    return http.post(f"/v1/uploads/{uid}/finalize", json=body)


def expire(probe, uid: str) -> None:
    probe.set_expires_at(uid, time.time() - 10)


def finalized_session(http: httpx.Client, data: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """A session that received all of `data` and was finalized: (its id, its chunks)."""
    chunks = chunks_of(data)
    uid = open_session(http, len(data))
    upload_all(http, uid, chunks)
    assert finalize(http, uid, chunks, hashlib.sha256(data).hexdigest()).status_code == 200
    return uid, chunks
