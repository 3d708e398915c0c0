"""Quotas, all checked before a byte is stored: the largest object (413), a bucket's logical
bytes (507, counting stored versions and the room open uploads reserved), on tus creation,
deferred lengths, concatenation and native sessions. Concurrency is in test_limits.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TUS, patch_headers, tus_create, tus_metadata, tus_upload
from tests.server import ServerProcess

QUOTA = 100_000


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory):
    base: Path = tmp_path_factory.mktemp("quota")
    proc = ServerProcess(
        home=base / "home",
        database_url=f"sqlite:///{base / 'meta.db'}",
        env_extra={
            "EDGESTORE_BUCKET_QUOTAS": json.dumps(
                {"small": QUOTA, "tiny": 10, "deferred": 10, "parts": 10}
            ),
            "EDGESTORE_MAX_UPLOAD_SIZE": str(10 * QUOTA),
        },
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def _create(c, length: int | None, bucket: str, **headers: str):
    h = {**TUS, "Upload-Metadata": tus_metadata({"bucket": bucket}), **headers}
    h.update({"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"})
    return c.post("/files/", headers=h)


def test_object_size_limit_is_413_at_creation(quota_server: ServerProcess) -> None:
    with quota_server.client() as c:
        r = _create(c, 10 * QUOTA + 1, "big")
        assert r.status_code == 413 and "exceeds the maximum" in r.json()["message"]
        assert c.options("/files/").headers["Tus-Max-Size"] == str(10 * QUOTA)


def test_bucket_quota_counts_versions_and_reservations(quota_server: ServerProcess) -> None:
    with quota_server.client() as c:
        r = _create(c, QUOTA + 1, "small")
        assert r.status_code == 507
        body = r.json()
        assert body["error"] == "quota_exceeded" and "bucket 'small'" in body["message"]
        # an open upload reserves its declared length
        first = _create(c, 60_000, "small")
        assert first.status_code == 201
        assert _create(c, 60_000, "small").status_code == 507
        assert _create(c, 60_000, "elsewhere").status_code == 201  # no quota there
        # a terminated upload frees its room; a stored version keeps it
        assert c.delete(first.headers["Location"], headers=TUS).status_code == 204
        tus_upload(c, b"x" * 60_000, metadata={"bucket": "small", "key": "kept"})
        r = _create(c, 50_000, "small")
        assert r.status_code == 507 and "60000" in r.json()["message"]
        assert _create(c, 40_000, "small").status_code == 201


def test_deferred_length_is_checked_when_declared(quota_server: ServerProcess) -> None:
    with quota_server.client() as c:
        r = _create(c, None, "tiny")
        assert r.status_code == 201
        url = r.headers["Location"]
        r = c.patch(url, content=b"", headers=patch_headers(0, **{"Upload-Length": "11"}))
        assert r.status_code == 507
        r = c.patch(url, content=b"0123456789", headers=patch_headers(0, **{"Upload-Length": "10"}))
        assert r.status_code == 204


def test_deferred_length_bytes_are_bounded_as_they_arrive(quota_server: ServerProcess) -> None:
    """Bytes sent before the length is declared count against the bucket: an append may take
    only the room left, and what an open deferred upload holds is reserved from the others."""
    with quota_server.client() as c:
        url = _create(c, None, "deferred").headers["Location"]
        r = c.patch(url, content=b"x" * 11, headers=patch_headers(0))
        assert r.status_code == 507 and r.json()["error"] == "quota_exceeded"
        assert c.head(url, headers=TUS).headers["Upload-Offset"] == "0"  # nothing of it kept
        assert c.patch(url, content=b"x" * 6, headers=patch_headers(0)).status_code == 204
        assert c.head(url, headers=TUS).headers["Upload-Offset"] == "6"
        assert _create(c, 5, "deferred").status_code == 507  # the 6 bytes held are reserved
        other = _create(c, None, "deferred").headers["Location"]
        assert c.patch(other, content=b"y" * 5, headers=patch_headers(0)).status_code == 507
        assert c.patch(other, content=b"y" * 4, headers=patch_headers(0)).status_code == 204
        r = c.patch(url, content=b"", headers=patch_headers(6, **{"Upload-Length": "7"}))
        assert r.status_code == 507  # 7 + the other's 4 held > 10
        assert c.delete(other, headers=TUS).status_code == 204
        r = c.patch(url, content=b"x" * 4, headers=patch_headers(6, **{"Upload-Length": "10"}))
        assert r.status_code == 204 and r.headers["Upload-Offset"] == "10"


def test_concatenation_and_native_sessions_are_checked(quota_server: ServerProcess) -> None:
    with quota_server.client() as c:
        parts = []
        for body in (b"abcdef", b"ghijkl"):
            url = tus_create(c, len(body), headers={"Upload-Concat": "partial"})
            assert c.patch(url, content=body, headers=patch_headers(0)).status_code == 204
            parts.append(url)
        final = {**TUS, "Upload-Concat": "final;" + " ".join(parts),
                 "Upload-Metadata": tus_metadata({"bucket": "tiny", "key": "joined"})}  # fmt: skip
        r = c.post("/files/", headers=final)
        assert r.status_code == 507, r.text
        r = c.post("/v1/uploads", json={"bucket": "tiny", "key": "n", "size": 11})
        assert r.status_code == 507, r.text


def test_a_waiting_final_is_checked_when_its_length_becomes_known(
    quota_server: ServerProcess,
) -> None:
    """A final created before its partials' lengths were known reserved nothing; when the
    last partial completes, the concatenation is checked against the bucket's quota, and one
    that does not fit is terminated (the partials keep their bytes, nothing is charged)."""
    with quota_server.client() as c:
        parts = []
        for _ in range(2):
            r = _create(c, None, "ignored", **{"Upload-Concat": "partial"})
            assert r.status_code == 201, r.text
            parts.append(r.headers["Location"])
        final = {**TUS, "Upload-Concat": "final;" + " ".join(parts),
                 "Upload-Metadata": tus_metadata({"bucket": "tiny", "key": "late"})}  # fmt: skip
        r = c.post("/files/", headers=final)
        assert r.status_code == 201, r.text  # its size is unknown yet
        final_url = r.headers["Location"]
        for url, body in zip(parts, (b"abcdef", b"ghijkl"), strict=True):
            h = patch_headers(0, **{"Upload-Length": str(len(body))})
            assert c.patch(url, content=body, headers=h).status_code == 204
        assert c.head(final_url, headers=TUS).status_code in (404, 410)
        assert c.get("/objects/tiny/late").status_code == 404


def test_partial_uploads_count_in_their_bucket(quota_server: ServerProcess) -> None:
    """Partials a final never uses held bytes that counted nowhere, until they expired: they
    count in the bucket they were created for, and a final takes them over."""
    with quota_server.client() as c:
        r = _create(c, 11, "parts", **{"Upload-Concat": "partial"})
        assert r.status_code == 507, r.text
        url = _create(c, 6, "parts", **{"Upload-Concat": "partial"}).headers["Location"]
        assert c.patch(url, content=b"abcdef", headers=patch_headers(0)).status_code == 204
        assert _create(c, 5, "parts").status_code == 507  # the partial's 6 bytes are held
        final = {**TUS, "Upload-Concat": f"final;{url}",
                 "Upload-Metadata": tus_metadata({"bucket": "parts", "key": "one"})}  # fmt: skip
        assert c.post("/files/", headers=final).status_code == 201  # not counted twice
        assert _create(c, 4, "parts").status_code == 201
