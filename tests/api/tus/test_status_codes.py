"""One row per status code the tus 1.0.0 spec (and its extensions) defines, tusd style:
a request against an upload in a known state → the expected status and headers, and, for
every refusal, a store left exactly as it was.

200 201 204 400 403 404 409 410 412 413 415 423 460
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import pytest

from tests.helpers import (
    OFFSET_OCTET_STREAM,
    TUS,
    KiB,
    TricklingPatch,
    random_bytes,
    store_unchanged,
    tus_create,
    tus_patch,
    upload_id_of,
)

DATA = random_bytes(2 * 1024 * KiB, seed=150)  # every upload below is DATA, 400 bytes in
SENT = 400
PRESENT = object()  # the header must be there, whatever its value
ABSENT = None  # the header must not be there


@dataclass(frozen=True)
class Row:
    name: str
    state: str  # none | started | finished-partial | final | terminated | expired | locked
    method: str
    target: str  # collection | upload | unknown
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    expect: dict[str, object] = field(default_factory=dict)
    refusal: bool = True  # a refused request changes nothing


def _sha1(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


PATCH = {**TUS, "Content-Type": OFFSET_OCTET_STREAM, "Upload-Offset": str(SENT)}
BODY = DATA[SENT : SENT + 1000]

# fmt: off
ROWS = [
    Row("200-head", "started", "HEAD", "upload", 200, TUS,
        expect={"Upload-Offset": str(SENT), "Upload-Length": str(len(DATA)),
                "Cache-Control": "no-store"}),
    Row("201-post", "none", "POST", "collection", 201, {**TUS, "Upload-Length": "10"},
        expect={"Location": PRESENT}, refusal=False),
    Row("201-post-with-upload", "none", "POST", "collection", 201,
        {**TUS, "Upload-Length": "10", "Content-Type": OFFSET_OCTET_STREAM}, b"0123456789",
        expect={"Location": PRESENT, "Upload-Offset": "10"}, refusal=False),
    Row("204-patch", "started", "PATCH", "upload", 204, PATCH, BODY,
        expect={"Upload-Offset": str(SENT + len(BODY))}, refusal=False),
    Row("204-delete", "started", "DELETE", "upload", 204, TUS, refusal=False),
    Row("204-options", "none", "OPTIONS", "collection", 204, {},
        expect={"Tus-Version": PRESENT, "Tus-Extension": PRESENT, "Tus-Max-Size": PRESENT,
                "Tus-Checksum-Algorithm": PRESENT}),
    Row("400-post-negative-length", "none", "POST", "collection", 400,
        {**TUS, "Upload-Length": "-1"}, expect={"Location": ABSENT}),
    Row("400-post-bad-metadata", "none", "POST", "collection", 400,
        {**TUS, "Upload-Length": "1", "Upload-Metadata": "filename %%%"}),
    Row("400-post-length-and-defer", "none", "POST", "collection", 400,
        {**TUS, "Upload-Length": "1", "Upload-Defer-Length": "1"}),
    Row("400-patch-bad-offset", "started", "PATCH", "upload", 400,
        {**PATCH, "Upload-Offset": "-1"}, BODY),
    Row("400-patch-unsupported-checksum", "started", "PATCH", "upload", 400,
        {**PATCH, "Upload-Checksum": "crc32 AAAAAA=="}, BODY),
    Row("400-patch-malformed-checksum", "started", "PATCH", "upload", 400,
        {**PATCH, "Upload-Checksum": "sha1"}, BODY),
    Row("403-patch-final", "final", "PATCH", "upload", 403,
        {**PATCH, "Upload-Offset": "100"}, b"x"),
    Row("404-head-unknown", "none", "HEAD", "unknown", 404, TUS),
    Row("404-patch-unknown", "none", "PATCH", "unknown", 404,
        {**PATCH, "Upload-Offset": "0"}, b"x"),
    Row("404-delete-unknown", "none", "DELETE", "unknown", 404, TUS),
    Row("404-final-of-unknown", "none", "POST", "collection", 404,
        {**TUS, "Upload-Concat": f"final;/files/{uuid.uuid4()}"}),
    Row("409-patch-offset", "started", "PATCH", "upload", 409,
        {**PATCH, "Upload-Offset": str(SENT + 1)}, BODY),
    Row("410-head-terminated", "terminated", "HEAD", "upload", 410, TUS),
    Row("410-patch-terminated", "terminated", "PATCH", "upload", 410, PATCH, BODY),
    Row("410-head-expired", "expired", "HEAD", "upload", 410, TUS),
    Row("410-patch-expired", "expired", "PATCH", "upload", 410, PATCH, BODY),
    Row("412-post-no-version", "none", "POST", "collection", 412, {"Upload-Length": "10"},
        expect={"Tus-Version": PRESENT, "Location": ABSENT}),
    Row("412-patch-old-version", "started", "PATCH", "upload", 412,
        {**PATCH, "Tus-Resumable": "0.2.2"}, BODY, expect={"Tus-Version": PRESENT}),
    Row("412-head-no-version", "started", "HEAD", "upload", 412, {},
        expect={"Tus-Version": PRESENT}),
    Row("413-post-above-max", "none", "POST", "collection", 413,
        {**TUS, "Upload-Length": str((1 << 40) + 1)}),
    Row("413-patch-beyond-length", "started", "PATCH", "upload", 413, PATCH,
        DATA[SENT:] + b"!"),
    Row("415-patch-content-type", "started", "PATCH", "upload", 415,
        {**PATCH, "Content-Type": "application/octet-stream"}, BODY),
    Row("423-patch-locked", "locked", "PATCH", "upload", 423, PATCH, BODY),
    Row("460-patch-checksum", "started", "PATCH", "upload", 460,
        {**PATCH, "Upload-Checksum": _sha1(b"something else")}, BODY),
]
# fmt: on


@contextmanager
def _upload_in_state(http, probe, server, state: str) -> Iterator[str | None]:
    """An upload URL (None for `none`) in the named state, cleaned up afterwards."""
    if state == "none":
        yield None
        return
    if state == "final":
        part = tus_create(http, 100, headers={"Upload-Concat": "partial"})
        assert tus_patch(http, part, 0, DATA[:100]).status_code == 204
        r = http.post("/files/", headers={**TUS, "Upload-Concat": f"final;{part}"})
        assert r.status_code == 201
        yield r.headers["Location"]
        return
    url = tus_create(http, len(DATA))
    assert tus_patch(http, url, 0, DATA[:SENT]).status_code == 204
    if state == "terminated":
        assert http.delete(url, headers=TUS).status_code == 204
    elif state == "expired":
        probe.set_expires_at(upload_id_of(url), time.time() - 5)
    if state != "locked":
        yield url
        return
    writer = TricklingPatch(server.url, url, SENT, DATA[SENT:], first=64 * KiB).start()
    try:
        time.sleep(0.5)  # the writer now holds the upload and keeps sending
        yield url
    finally:
        status, _ = writer.finish()
        assert status == 204
        assert http.get(url).content == DATA  # nothing interleaved


def _check_headers(r, row: Row) -> None:
    if row.method != "OPTIONS":
        assert r.headers.get("Tus-Resumable") == "1.0.0", dict(r.headers)
    for name, want in row.expect.items():
        if want is ABSENT:
            assert name not in r.headers, name
        elif want is PRESENT:
            assert r.headers.get(name), name
        else:
            assert r.headers.get(name) == want, (name, r.headers.get(name))


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_status(http, probe, server, row: Row) -> None:
    with _upload_in_state(http, probe, server, row.state) as url:
        target = {
            "collection": "/files/",
            "upload": url,
            "unknown": f"/files/{uuid.uuid4()}",
        }[row.target]
        assert target is not None
        if not row.refusal:
            guard = nullcontext()
        elif row.state == "locked":
            guard = store_unchanged(http, probe)  # the live writer moves its own upload
        else:
            guard = store_unchanged(http, probe, url)
        with guard:
            r = http.request(row.method, target, headers=row.headers, content=row.body or None)
        assert r.status_code == row.status, (r.status_code, r.text)
        _check_headers(r, row)


def test_every_status_the_spec_defines_has_a_row() -> None:
    codes = {int(r.name.split("-")[0]) for r in ROWS}
    assert codes == {200, 201, 204, 400, 403, 404, 409, 410, 412, 413, 415, 423, 460}


# --- Tus-Resumable on the answers no tus handler writes ----------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/files/"), ("PUT", "/files/x"), ("POST", "/files/x")]
)
def test_a_method_the_url_does_not_take_still_answers_tus_resumable(
    http, method: str, path: str
) -> None:
    """Spec (core): Tus-Resumable "MUST be included in every ... response except for OPTIONS
    requests", so also in the 405 the router writes (tusd's middleware sets it on all)."""
    r = http.request(method, path, headers=TUS)
    assert r.status_code == 405
    assert r.headers.get("Tus-Resumable") == "1.0.0", dict(r.headers)
    assert ("POST" if path == "/files/" else "PATCH") in r.headers["Allow"]


def test_refusals_before_the_tus_handlers_answer_tus_resumable(auth_server) -> None:
    """A 401 from authentication, in front of the tus handlers, is a tus response too; an
    IETF-draft request's is not (that protocol has no Tus-Resumable)."""
    target = f"/files/{uuid.uuid4()}"
    with auth_server.client(headers={}) as c:
        for method, path in [("POST", "/files/"), ("HEAD", target), ("PATCH", target)]:
            r = c.request(method, path, headers={**TUS, "Content-Type": OFFSET_OCTET_STREAM})
            assert r.status_code == 401, (method, r.status_code)
            assert r.headers.get("Tus-Resumable") == "1.0.0", (method, dict(r.headers))
        r = c.post("/files/", headers={"Upload-Draft-Interop-Version": "8"})
        assert r.status_code == 401
        assert "Tus-Resumable" not in r.headers
