"""POST with a body (creation-with-upload): the upload is created and its first bytes land.

A POST whose body cannot be accepted (wrong Content-Type, bad checksum header, too long) is
refused before anything is created: no upload row is left behind without a Location.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import pytest

from tests.api.tus.withheld import answer_to_head
from tests.helpers import (
    OFFSET_OCTET_STREAM,
    TUS,
    KiB,
    MiB,
    StoreProbe,
    random_bytes,
    sha256_hex,
    store_unchanged,
    tus_metadata,
    tus_offset,
    tus_patch,
)


def _post(http, body, *, length: int | None, **headers: str):
    h = {**TUS, "Content-Type": OFFSET_OCTET_STREAM, **headers}
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    return http.post("/files/", content=body, headers=h)


def _sha1(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


def test_whole_upload_in_the_post(http) -> None:
    data = random_bytes(2 * MiB + 9, seed=51)
    r = _post(http, data, length=len(data), **{"Upload-Metadata": tus_metadata({"k": "v"})})
    assert r.status_code == 201, r.text
    assert r.headers["Upload-Offset"] == str(len(data))
    url = r.headers["Location"]
    got = http.get(url)
    assert got.status_code == 200
    assert sha256_hex(got.content) == sha256_hex(data)


def test_first_part_in_the_post_then_patch(http) -> None:
    data = random_bytes(6 * MiB + 1, seed=52)
    r = _post(http, data[: 5 * MiB + 17], length=len(data))
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == str(5 * MiB + 17)
    url = r.headers["Location"]
    assert tus_offset(http, url) == 5 * MiB + 17
    assert tus_patch(http, url, 5 * MiB + 17, data[5 * MiB + 17 :]).status_code == 204
    assert http.get(url).content == data


def test_a_chunked_post_body(http) -> None:
    data = random_bytes(300 * KiB, seed=53)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(data), 32 * KiB):
            yield data[i : i + 32 * KiB]

    r = _post(http, pieces(), length=len(data))
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == str(len(data))
    assert http.get(r.headers["Location"]).content == data


def test_post_with_a_matching_checksum(http) -> None:
    data = random_bytes(100_000, seed=54)
    r = _post(http, data, length=len(data), **{"Upload-Checksum": _sha1(data)})
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == str(len(data))


def test_post_with_a_body_and_a_deferred_length(http) -> None:
    data = random_bytes(10_000, seed=55)
    r = _post(http, data, length=None)
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == str(len(data))
    h = http.head(r.headers["Location"], headers=TUS)
    assert h.headers["Upload-Defer-Length"] == "1"
    assert h.headers["Upload-Offset"] == str(len(data))


def test_empty_body_is_plain_creation(http) -> None:
    r = _post(http, b"", length=10)
    assert r.status_code == 201
    assert tus_offset(http, r.headers["Location"]) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream"])
def test_wrong_content_type_with_a_body_is_415_and_creates_nothing(
    http, probe, content_type: str
) -> None:
    with store_unchanged(http, probe):
        r = _post(http, b"abc", length=3, **{"Content-Type": content_type})
    assert r.status_code == 415


@pytest.mark.parametrize("checksum", ["crc32 AAAAAA==", "sha1", "sha1 !!!notbase64"])
def test_bad_checksum_header_with_a_body_is_400_and_creates_nothing(
    http, probe, checksum: str
) -> None:
    with store_unchanged(http, probe):
        r = _post(http, b"abc", length=3, **{"Upload-Checksum": checksum})
    assert r.status_code == 400


def test_checksum_mismatch_in_the_post_is_460_and_creates_nothing(http, probe) -> None:
    data = random_bytes(50_000, seed=56)
    with store_unchanged(http, probe):
        r = _post(http, data, length=len(data), **{"Upload-Checksum": _sha1(data + b"x")})
    assert r.status_code == 460


def test_checksum_mismatch_in_the_post_keeps_no_byte(http, probe) -> None:
    """Whatever happens to the upload row, none of the refused bytes is kept."""
    data = random_bytes(3 * MiB, seed=57)
    before = probe.counts()
    r = _post(http, data, length=len(data), **{"Upload-Checksum": _sha1(data + b"x")})
    assert r.status_code == 460
    after = probe.counts()
    for table in ("upload_parts", "upload_tails", "objects", "object_versions", "manifests"):
        assert after.get(table) == before.get(table), table


def test_post_body_longer_than_upload_length_is_413_and_creates_nothing(http, probe) -> None:
    data = random_bytes(2 * MiB, seed=58)
    with store_unchanged(http, probe):
        r = _post(http, data, length=len(data) - 1)
    assert r.status_code == 413


def test_chunked_post_body_longer_than_upload_length_is_413_and_creates_nothing(
    http, probe
) -> None:
    data = random_bytes(600 * KiB, seed=59)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(data), 32 * KiB):
            yield data[i : i + 32 * KiB]

    with store_unchanged(http, probe):
        r = _post(http, pieces(), length=len(data) - 1)
    assert r.status_code == 413


def test_post_with_a_body_and_no_tus_resumable_is_412_and_creates_nothing(http, probe) -> None:
    with store_unchanged(http, probe):
        r = http.post(
            "/files/",
            content=b"abc",
            headers={"Upload-Length": "3", "Content-Type": OFFSET_OCTET_STREAM},
        )
    assert r.status_code == 412
    assert "1.0.0" in r.headers["Tus-Version"]


def test_deferred_length_post_body_beyond_the_maximum_is_413_and_creates_nothing(
    fresh_server,
) -> None:
    """Upload-Defer-Length: 1 and a Content-Length beyond Tus-Max-Size: refused from the
    headers, as a body beyond Upload-Length is. The upload was created (its row, its quota),
    the body read up to the maximum, and only then the 413 came. A body beyond the bucket's
    room (a quota) is a 507 from the headers just the same."""
    fresh_server.env_extra["EDGESTORE_MAX_UPLOAD_SIZE"] = "100000"
    fresh_server.env_extra["EDGESTORE_BUCKET_QUOTAS"] = '{"default": 50000}'
    fresh_server.start()
    probe = StoreProbe(fresh_server.database_url)
    try:
        with fresh_server.client() as c, store_unchanged(c, probe):
            # Beyond the maximum (413), then within it but beyond the bucket's room (507).
            for content, status in ((100_001, 413), (50_001, 507)):
                head = (
                    "POST /files/ HTTP/1.1\r\nHost: edgestore\r\nConnection: close\r\n"
                    "Tus-Resumable: 1.0.0\r\nUpload-Defer-Length: 1\r\n"
                    f"Content-Type: {OFFSET_OCTET_STREAM}\r\nContent-Length: {content}\r\n\r\n"
                )
                got = answer_to_head(fresh_server.url, head)
                assert got.startswith(b"HTTP/1.1 %d " % status), got or "no answer: it waits"
            r = _post(c, random_bytes(150_000, seed=60), length=None)
            assert r.status_code == 413
            assert "Location" not in r.headers
            chunked = _post(c, iter([b"x" * 60_000, b"y" * 60_000]), length=None)
            assert chunked.status_code == 413  # no length to tell: refused as it arrives
        assert probe.count("uploads") == 0
    finally:
        probe.close()
