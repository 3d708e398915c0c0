"""kill -9 the real server while it commits a version (a native finalize, a tus
concatenation final, made at once or by its last partial's PATCH): after a restart the
version exists whole or not at all, refcounts hold, no row points at a missing shard, and
the client's retry succeeds."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx
import pytest

from edgestore.config import load_settings
from edgestore.engine import Engine
from tests.crashpoints import assert_store_consistent
from tests.helpers import (
    SMALL_CHUNKS,
    TUS,
    KiB,
    MiB,
    StoreProbe,
    patch_when_unlocked,
    random_bytes,
    tus_create,
    tus_offset,
    tus_patch,
)
from tests.native import (
    SMALL_ENV,
    assert_refcounts_consistent,
    chunks_of,
    finalize,
    open_session,
    upload_all,
    versions_of,
)
from tests.server import ServerProcess

# The version's transaction (manifest rows written, not committed), and the moment just after
# a finalize's pins committed (before its whole-file check).
IN_VERSION_COMMIT = {"sql": r"^INSERT INTO manifests", "when": "after"}
BEFORE_VERSION_ROW = {"sql": r"^INSERT INTO object_versions"}
PINS_COMMITTED = {"sql": r"object_versions\.manifest_digest = "}


@pytest.fixture
def node(fresh_server: ServerProcess) -> ServerProcess:
    """The server under test, with 16/64/256 KiB chunks (many chunks per version)."""
    fresh_server.env_extra.update(SMALL_ENV)
    return fresh_server


def _died_under(node: ServerProcess, request: Any) -> None:
    """Send a request the server dies under (its crash point), and restart it unharmed."""
    with pytest.raises(httpx.TransportError):
        request()
    assert node.proc is not None and node.proc.wait(10) < 0, "the server outlived its point"
    node.crash_at = None
    node.start()


def _check_store(node: ServerProcess, probe: StoreProbe) -> None:
    assert_refcounts_consistent(probe)
    settings = load_settings(home=node.home, database_url=node.database_url, **SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        assert_store_consistent(engine)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [PINS_COMMITTED, BEFORE_VERSION_ROW, IN_VERSION_COMMIT],
    ids=["pins-committed", "before-version-row", "in-version-commit"],
)
def test_kill_during_native_finalize(node: ServerProcess, point: dict[str, Any]) -> None:
    data = random_bytes(3 * MiB + 5 * KiB, seed=601)
    chunks = chunks_of(data)
    sha = hashlib.sha256(data).hexdigest()
    node.crash_at = point
    node.start()
    probe = StoreProbe(node.database_url)
    try:
        with node.client() as http:
            uid = open_session(http, len(data), key="native.bin")
            upload_all(http, uid, chunks)
            _died_under(node, lambda: finalize(http, uid, chunks, sha))
        assert versions_of(probe, "native.bin") == 0  # not at all
        _check_store(node, probe)
        with node.client() as http:
            r = finalize(http, uid, chunks, sha)  # the client's retry
            assert r.status_code == 200, r.text
            got = http.get("/objects/default/native.bin")
            assert got.status_code == 200 and got.content == data
        assert versions_of(probe, "native.bin") == 1
        _check_store(node, probe)
    finally:
        probe.close()


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


@pytest.mark.slow
@pytest.mark.parametrize(
    "point", [BEFORE_VERSION_ROW, IN_VERSION_COMMIT], ids=["before-version-row", "in-commit"]
)
def test_kill_during_tus_concatenation_final(node: ServerProcess, point: dict[str, Any]) -> None:
    parts = [random_bytes(MiB + 7, seed=611), random_bytes(2 * MiB, seed=612)]
    node.crash_at = point
    node.start()
    probe = StoreProbe(node.database_url)
    final = {**TUS, "Upload-Metadata": f"key {_b64('joined.bin')}"}
    try:
        with node.client() as http:
            urls = []
            for part in parts:
                url = tus_create(http, len(part), headers={"Upload-Concat": "partial"})
                assert tus_patch(http, url, 0, part).status_code == 204
                urls.append(url)
            final["Upload-Concat"] = "final;" + " ".join(urls)
            _died_under(node, lambda: http.post("/files/", headers=final))
        assert versions_of(probe, "joined.bin") == 0
        _check_store(node, probe)
        with node.client() as http:
            r = http.post("/files/", headers=final)  # the client's retry
            assert r.status_code == 201, r.text
            got = http.get("/objects/default/joined.bin")
            assert got.status_code == 200 and got.content == b"".join(parts)
        assert versions_of(probe, "joined.bin") == 1
        _check_store(node, probe)
    finally:
        probe.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "point", [BEFORE_VERSION_ROW, IN_VERSION_COMMIT], ids=["before-version-row", "in-commit"]
)
def test_kill_as_the_last_partial_completes_its_final(
    node: ServerProcess, point: dict[str, Any]
) -> None:
    """The final waits for its last partial, whose completing PATCH makes the version in the
    transaction that commits its last parts (their references counted there, with the
    final's manifest): killed in it, neither the version nor those parts are kept, and the
    client's resumed PATCH completes both."""
    parts = [random_bytes(MiB + 7, seed=613), random_bytes(2 * MiB, seed=614)]
    node.crash_at = point
    node.start()
    probe = StoreProbe(node.database_url)
    final = {**TUS, "Upload-Metadata": f"key {_b64('awaited.bin')}"}
    try:
        with node.client() as http:
            urls = [tus_create(http, len(p), headers={"Upload-Concat": "partial"}) for p in parts]
            assert tus_patch(http, urls[0], 0, parts[0]).status_code == 204
            final["Upload-Concat"] = "final;" + " ".join(urls)
            assert http.post("/files/", headers=final).status_code == 201
            _died_under(node, lambda: tus_patch(http, urls[1], 0, parts[1]))
        assert versions_of(probe, "awaited.bin") == 0
        _check_store(node, probe)
        with node.client() as http:  # the client resumes its PATCH
            offset = tus_offset(http, urls[1])
            assert offset < len(parts[1])
            # (the dead writer's lease lapses within upload_lock_seconds, 6 s)
            r, _ = patch_when_unlocked(http, urls[1], offset, parts[1][offset:], timeout=10)
            assert r.status_code == 204, r.text
            got = http.get("/objects/default/awaited.bin")
            assert got.status_code == 200 and got.content == b"".join(parts)
        assert versions_of(probe, "awaited.bin") == 1
        _check_store(node, probe)
    finally:
        probe.close()
