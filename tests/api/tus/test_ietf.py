"""The IETF resumable-upload draft on /files/, raw HTTP against a real server.

Interop version 6 is what tus-js-client's `protocol: 'ietf-draft-05'` speaks; 8 is the newest.
The 104 interim responses are in test_ietf_interim.py.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.api.tus.ietf_requests import (
    PARTIAL,
    VERSIONS,
    append,
    assert_object,
    draft,
    pieces,
)
from tests.helpers import KiB, MiB, random_bytes, tus_metadata


@pytest.mark.parametrize("version", VERSIONS)
def test_options_announces_limits_and_media_type(server, version: str) -> None:
    with server.client() as c:
        r = c.options("/files/", headers=draft(version))
        assert r.status_code == 204
        assert r.headers["Accept-Patch"] == PARTIAL
        assert r.headers["Upload-Limit"].startswith("max-size=")
        assert r.headers["Upload-Draft-Interop-Version"] == version
        assert "Tus-Resumable" not in r.headers
        tus = c.options("/files/")
        assert tus.headers["Tus-Version"] == "1.0.0"
        assert "Upload-Limit" not in tus.headers


@pytest.mark.parametrize("version", VERSIONS)
def test_create_incomplete_then_append_then_complete(server, version: str) -> None:
    data = random_bytes(3 * MiB + 17, seed=61)
    cut = 1 * MiB + 5
    with server.client() as c:
        r = c.post("/files/", headers=draft(version, Upload_Complete="?0"))
        assert r.status_code == 201, r.text
        url = r.headers["Location"]
        assert r.headers["Upload-Offset"] == "0"
        assert r.headers["Upload-Complete"] == "?0"
        assert "Upload-Length" not in r.headers  # none given yet
        assert "Tus-Resumable" not in r.headers

        r = append(c, url, 0, data[:cut], complete=False, version=version)
        assert r.status_code == 204, r.text
        assert (r.headers["Upload-Offset"], r.headers["Upload-Complete"]) == (str(cut), "?0")

        h = c.head(url, headers=draft(version))
        assert h.status_code == 204
        assert (h.headers["Upload-Offset"], h.headers["Upload-Complete"]) == (str(cut), "?0")
        assert h.headers["Cache-Control"] == "no-store"
        lifetime = "expires=" if version == "6" else "max-age="
        assert lifetime in h.headers["Upload-Limit"]
        assert c.get(url).status_code == 404  # no object before completion

        r = append(c, url, cut, data[cut:], complete=True, version=version)
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Offset"] == str(len(data))
        assert r.headers["Upload-Complete"] == "?1"

        h = c.head(url, headers=draft(version))
        assert h.headers["Upload-Complete"] == "?1"
        assert h.headers["Upload-Length"] == str(len(data))  # learnt from the completion
        assert_object(c, url, data)


@pytest.mark.parametrize("version", VERSIONS)
def test_create_with_all_data_and_complete_in_one_request(server, version: str) -> None:
    data = random_bytes(2 * MiB + 3, seed=62)
    with server.client() as c:
        r = c.post(
            "/files/",
            content=data,
            headers=draft(
                version,
                Upload_Complete="?1",
                Content_Type="text/plain",
                Content_Disposition="inline; filename=\"a b.txt\"; filename*=UTF-8''%C3%A4%20b.txt",
            ),
        )
        assert r.status_code == 201, r.text
        assert r.headers["Upload-Complete"] == "?1"
        assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == str(len(data))
        got = assert_object(c, r.headers["Location"], data)
        assert got.headers["Content-Type"].startswith("text/plain")
        assert "%C3%A4%20b.txt" in got.headers["Content-Disposition"]  # filename* won


def test_create_with_first_part_then_append(server) -> None:
    """What tus-js-client does with uploadDataDuringCreation: Upload-Length and a first part."""
    data = random_bytes(1 * MiB + 99, seed=63)
    cut = 300 * KiB
    with server.client() as c:
        r = c.post(
            "/files/",
            content=data[:cut],
            headers=draft(Upload_Complete="?0", Upload_Length=str(len(data)), Content_Type=PARTIAL),
        )
        assert r.status_code == 201, r.text
        assert r.headers["Upload-Offset"] == str(cut)
        assert r.headers["Upload-Length"] == str(len(data))
        url = r.headers["Location"]
        r = append(c, url, cut, data[cut:], complete=True)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1")
        assert_object(c, url, data)


def test_streamed_completion_without_any_length(server) -> None:
    """Upload-Complete: ?1 on chunked content: the length is learnt at the end."""
    data = random_bytes(1 * MiB + 1234, seed=64)
    with server.client() as c:
        r = c.post("/files/", content=pieces(data[:100_000]), headers=draft(Upload_Complete="?0"))
        assert r.status_code == 201, r.text
        url = r.headers["Location"]
        assert r.headers["Upload-Offset"] == "100000"
        r = append(c, url, 100_000, pieces(data[100_000:]), complete=True)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1"), r.text
        assert r.headers["Upload-Length"] == str(len(data))
        assert_object(c, url, data)

        r = c.post("/files/", content=pieces(data), headers=draft(Upload_Complete="?1"))
        assert (r.status_code, r.headers["Upload-Complete"]) == (201, "?1"), r.text
        assert_object(c, r.headers["Location"], data)


def test_empty_uploads_complete(server) -> None:
    with server.client() as c:
        # tus-js-client, for an empty file: Upload-Length: 0 with ?0, and nothing after.
        r = c.post("/files/", headers=draft(Upload_Complete="?0", Upload_Length="0"))
        assert (r.status_code, r.headers["Upload-Complete"]) == (201, "?1"), r.text
        assert_object(c, r.headers["Location"], b"")
        r = c.post("/files/", headers=draft(Upload_Complete="?1"))
        assert (r.status_code, r.headers["Upload-Length"]) == (201, "0"), r.text
        assert_object(c, r.headers["Location"], b"")


def test_head_reports_durable_offset_and_length(server) -> None:
    with server.client() as c:
        r = c.post("/files/", headers=draft(Upload_Complete="?0", Upload_Length="1000"))
        url = r.headers["Location"]
        assert append(c, url, 0, b"x" * 400, complete=False).status_code == 204
        h = c.head(url, headers=draft())
        assert h.status_code == 204
        assert (h.headers["Upload-Offset"], h.headers["Upload-Length"]) == ("400", "1000")
        assert h.headers["Upload-Limit"].startswith("max-size=")
        assert c.head("/files/nosuchupload", headers=draft()).status_code == 404


def test_offset_mismatch_is_409_with_the_right_offset(server) -> None:
    data = random_bytes(200 * KiB, seed=65)
    with server.client() as c:
        url = c.post("/files/", headers=draft(Upload_Complete="?0")).headers["Location"]
        assert append(c, url, 0, data[:1000], complete=False).status_code == 204
        for wrong in (0, 999, 5000):
            r = append(c, url, wrong, data[1000:], complete=True)
            assert r.status_code == 409, r.text
            assert r.headers["Upload-Offset"] == "1000"
            assert r.headers["Upload-Complete"] == "?0"
            assert r.json()["offset"] == 1000
        assert c.head(url, headers=draft()).headers["Upload-Offset"] == "1000"  # nothing kept
        assert append(c, url, 1000, data[1000:], complete=True).status_code == 204
        assert_object(c, url, data)


def test_append_rules(server) -> None:
    with server.client() as c:
        r = c.post("/files/", headers=draft(Upload_Complete="?0", Upload_Length="100"))
        url = r.headers["Location"]
        # The draft's media type, not tus's.
        r = c.patch(
            url,
            content=b"abc",
            headers=draft(
                Upload_Offset="0",
                Upload_Complete="?0",
                Content_Type="application/offset+octet-stream",
            ),
        )
        assert r.status_code == 415
        assert "Upload-Offset" in append(c, url, 0, b"", complete=False).headers
        r = c.patch(url, content=b"a", headers=draft(Upload_Complete="?0", Content_Type=PARTIAL))
        assert r.status_code == 400  # no Upload-Offset
        # Beyond the declared length, and inconsistent lengths: 400 (with the limits).
        r = append(c, url, 0, b"y" * 101, complete=False)
        assert r.status_code == 400
        assert r.headers["Upload-Limit"].startswith("max-size=")
        assert append(c, url, 0, b"y" * 99, complete=True).status_code == 400
        r = c.patch(
            url,
            content=b"",
            headers=draft(
                Upload_Offset="0", Upload_Complete="?0", Upload_Length="50", Content_Type=PARTIAL
            ),
        )
        assert r.status_code == 400
        r = c.post(
            "/files/", content=b"z" * 5, headers=draft(Upload_Complete="?1", Upload_Length="6")
        )
        assert r.status_code == 400
        assert c.head(url, headers=draft()).headers["Upload-Offset"] == "0"  # nothing kept


def test_completed_upload_takes_no_more_bytes(server) -> None:
    data = b"hello, draft"
    with server.client() as c:
        r = c.post("/files/", content=data, headers=draft(Upload_Complete="?1"))
        url = r.headers["Location"]
        r = append(c, url, len(data), b"more", complete=True)
        assert r.status_code == 400
        assert r.headers["Upload-Complete"] == "?1"
        # An empty completion at the final offset (a retry whose response was lost) is fine.
        r = append(c, url, len(data), b"", complete=True)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1")
        assert_object(c, url, data)


def test_reaching_the_declared_length_completes(server) -> None:
    data = random_bytes(50_000, seed=66)
    with server.client() as c:
        r = c.post("/files/", headers=draft(Upload_Complete="?0", Upload_Length=str(len(data))))
        url = r.headers["Location"]
        r = append(c, url, 0, data, complete=False)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1")
        assert append(c, url, len(data), b"", complete=True).status_code == 204
        assert_object(c, url, data)


@pytest.mark.parametrize("version", VERSIONS)
def test_cancellation(server, version: str) -> None:
    with server.client() as c:
        url = c.post("/files/", headers=draft(version, Upload_Complete="?0")).headers["Location"]
        assert append(c, url, 0, b"q" * 1000, complete=False, version=version).status_code == 204
        r = c.delete(url, headers=draft(version))
        assert r.status_code == 204
        assert "Tus-Resumable" not in r.headers
        gone = 404 if version == "6" else 410  # draft -05: no longer active is a 404
        assert c.head(url, headers=draft(version)).status_code == gone
        assert append(c, url, 1000, b"q", complete=True, version=version).status_code == gone
        assert c.delete(url, headers=draft(version)).status_code == gone
        assert c.delete("/files/nosuchupload", headers=draft(version)).status_code == 404


def test_interop_version_7_is_served(server) -> None:
    with server.client() as c:
        r = c.post("/files/", content=b"seven", headers=draft("7", Upload_Complete="?1"))
        assert (r.status_code, r.headers["Upload-Complete"]) == (201, "?1"), r.text
        assert "max-age=" not in r.headers["Upload-Limit"]  # complete: no lifetime left to tell
        assert_object(c, r.headers["Location"], b"seven")


@pytest.mark.parametrize("value", ["5", "3", "9", "x", ""])
def test_unsupported_interop_version_is_400(server, value: str) -> None:
    with server.client() as c:
        r = c.post("/files/", content=b"abc", headers=draft(value, Upload_Complete="?1"))
        assert r.status_code == 400
        assert "interop versions 6, 7, 8" in r.json()["message"]
        assert "Tus-Resumable" not in r.headers
        assert c.head("/files/whatever", headers=draft(value)).status_code == 400


def test_tus_requests_still_need_tus_resumable(server) -> None:
    with server.client() as c:
        r = c.post("/files/", headers={"Upload-Length": "10"})
        assert r.status_code == 412
        assert r.headers["Tus-Version"] == "1.0.0"
        r = c.post("/files/", headers={"Upload-Length": "10", "Tus-Resumable": "1.0.0"})
        assert r.status_code == 201
        assert r.headers["Tus-Resumable"] == "1.0.0"
        assert "Upload-Complete" not in r.headers
        r = c.patch(
            r.headers["Location"],
            content=b"0123456789",
            headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        )
        assert r.status_code == 412


def test_a_draft_upload_survives_an_interrupted_completion(server) -> None:
    """A ?1 request cut short keeps its durable prefix and does not complete the upload."""
    data = random_bytes(3 * MiB, seed=67)

    def cut_short() -> Iterator[bytes]:
        yield data[: 2 * MiB]
        raise ConnectionAbortedError("client gone")

    with server.client() as c:
        url = c.post("/files/", headers=draft(Upload_Complete="?0")).headers["Location"]
        with pytest.raises(ConnectionAbortedError):
            append(c, url, 0, cut_short(), complete=True)
    with server.client() as c:
        for _ in range(100):  # the server may still be committing what arrived
            h = c.head(url, headers=draft())
            assert h.headers["Upload-Complete"] == "?0"
            offset = int(h.headers["Upload-Offset"])
            r = append(c, url, offset, data[offset:], complete=True)
            if r.status_code not in (409, 423):
                break
            time.sleep(0.05)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1"), r.text
        assert_object(c, url, data)


# --- offsets and errors, as each draft requires -------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_head_after_a_stalled_append_reports_the_offset_the_next_append_takes(
    server, version: str
) -> None:
    """A link that dropped without the server noticing leaves an append waiting with bytes it
    has not made durable. The offset HEAD reports must be the one the next append is accepted
    at (-05 Offset Retrieval: "The offset MUST be accepted by a subsequent append"; -09 and
    later, Concurrency: "the server MUST NOT send outdated information"), not a 409 later."""
    data = random_bytes(12 * MiB, seed=73)
    port = int(server.url.rsplit(":", 1)[1])
    with server.client() as c:
        url = c.post("/files/", headers=draft(version, Upload_Complete="?0")).headers["Location"]
        with socket.create_connection(("127.0.0.1", port), timeout=60) as stalled:
            head = (
                f"PATCH {httpx.URL(url).path} HTTP/1.1\r\nHost: edgestore\r\n"
                f"Upload-Draft-Interop-Version: {version}\r\nUpload-Offset: 0\r\n"
                f"Upload-Complete: ?1\r\nContent-Type: {PARTIAL}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            )
            stalled.sendall(head.encode() + data[: 8 * MiB])
            time.sleep(2)  # the link is gone; the server's append still waits for the rest
            h = c.head(url, headers=draft(version))
            assert (h.status_code, h.headers["Upload-Complete"]) == (204, "?0")
            offset = int(h.headers["Upload-Offset"])
            r = append(c, url, offset, data[offset:], complete=True, version=version)
            assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1"), r.text
        assert_object(c, url, data)


def test_v6_failed_requests_on_an_active_upload_carry_its_offset(server) -> None:
    """Draft -05 (interop 6), Upload Creation and Upload Append: "The server MUST send the
    Upload-Offset header field in the response if it considers the upload active, either when
    the response is a success ..., or when the response is a failure"."""
    with server.client() as c:
        r = c.post("/files/", headers=draft(Upload_Complete="?0", Upload_Length="100"))
        url = r.headers["Location"]
        assert append(c, url, 0, b"a" * 40, complete=False).status_code == 204
        wrong_type = draft(Upload_Offset="40", Upload_Complete="?0", Content_Type="text/plain")
        for r in (
            append(c, url, 40, b"b" * 61, complete=False),  # beyond the length
            append(c, url, 40, b"b" * 10, complete=True),  # ?1, but short of the length
            c.patch(url, content=b"b", headers=wrong_type),
        ):
            assert r.status_code in (400, 415), r.text
            assert r.headers.get("Upload-Offset") == "40", (r.status_code, r.headers)
        # A creation whose content is refused once the upload exists.
        r = c.post(
            "/files/",
            content=pieces(b"z" * 20, 5),
            headers=draft(Upload_Complete="?0", Upload_Length="10"),
        )
        assert r.status_code == 400 and "Location" in r.headers, r.text
        assert r.headers.get("Upload-Offset") == "0", r.headers


def test_v6_append_beyond_the_length_is_400(server) -> None:
    """Draft -05, Upload Append: an append that exceeds the recorded final size is rejected
    "with a 400 (Bad Request) status code", with or without a Content-Length."""
    with server.client() as c:
        url = c.post("/files/", headers=draft(Upload_Complete="?0", Upload_Length="10")).headers[
            "Location"
        ]
        assert append(c, url, 0, b"y" * 11, complete=False).status_code == 400
        assert append(c, url, 0, pieces(b"y" * 20, 5), complete=False).status_code == 400
        assert c.head(url, headers=draft()).headers["Upload-Offset"] == "0"


def test_v6_head_and_delete_refuse_upload_fields(server) -> None:
    """Draft -05: a HEAD "MUST NOT include an Upload-Offset, Upload-Complete, or Upload-Length
    header field. The server MUST reject requests with either of these fields by responding
    with a 400"; a DELETE likewise with Upload-Offset or Upload-Complete."""
    with server.client() as c:
        url = c.post("/files/", headers=draft(Upload_Complete="?0")).headers["Location"]
        for name in ("Upload-Offset", "Upload-Complete", "Upload-Length"):
            value = "?0" if name == "Upload-Complete" else "0"
            assert c.head(url, headers={**draft(), name: value}).status_code == 400, name
        for name, value in (("Upload-Offset", "0"), ("Upload-Complete", "?1")):
            assert c.delete(url, headers={**draft(), name: value}).status_code == 400, name
        assert c.head(url, headers=draft()).status_code == 204  # still there
        assert c.head(url, headers=draft("8", Upload_Offset="0")).status_code == 204


def test_v6_an_inactive_upload_is_404(server) -> None:
    """Draft -05: for an upload resource the server does not consider active, HEAD, PATCH and
    DELETE "MUST respond with a 404 (Not Found) status code"."""
    with server.client() as c:
        url = c.post("/files/", headers=draft(Upload_Complete="?0")).headers["Location"]
        assert c.delete(url, headers=draft()).status_code == 204
        assert c.head(url, headers=draft()).status_code == 404
        assert append(c, url, 0, b"q", complete=True).status_code == 404
        assert c.delete(url, headers=draft()).status_code == 404


@pytest.mark.parametrize("version", VERSIONS)
def test_an_append_refused_for_inconsistent_lengths_records_neither(server, version: str) -> None:
    """An append whose Upload-Length and `Upload-Complete: ?1` + Content-Length disagree is
    rejected (-05: "If they do not match, the server MUST reject the request with a 400"; -09+
    Length: "their indicated lengths MUST match"), and leaves the upload as it was: a corrected
    retry completes it."""
    with server.client() as c:
        url = c.post("/files/", headers=draft(version, Upload_Complete="?0")).headers["Location"]
        bad = draft(
            version,
            Upload_Offset="0",
            Upload_Complete="?1",
            Upload_Length="100",
            Content_Type=PARTIAL,
        )
        assert c.patch(url, content=b"a" * 50, headers=bad).status_code == 400
        assert "Upload-Length" not in c.head(url, headers=draft(version)).headers
        r = append(c, url, 0, b"a" * 50, complete=True, version=version)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1"), r.text
        assert_object(c, url, b"a" * 50)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_refused_append_does_not_declare_its_upload_length(server, version: str) -> None:
    """An append that declares a deferred length and is refused (its content goes beyond that
    length) leaves the length deferred: the corrected retry is accepted, not refused as an
    "inconsistent length" against the length of a request the server turned down."""
    with server.client() as c:
        url = c.post("/files/", headers=draft(version, Upload_Complete="?0")).headers["Location"]
        bad = draft(
            version,
            Upload_Offset="0",
            Upload_Complete="?0",
            Upload_Length="10",
            Content_Type=PARTIAL,
        )
        assert c.patch(url, content=b"b" * 20, headers=bad).status_code == 400
        h = c.head(url, headers=draft(version))
        assert (h.headers["Upload-Offset"], h.headers.get("Upload-Length")) == ("0", None)
        good = {**bad, "Upload-Length": "20"}
        r = c.patch(url, content=b"b" * 20, headers=good)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1"), r.text
        assert_object(c, url, b"b" * 20)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_creation_whose_content_exceeds_its_length_creates_nothing(server, version: str) -> None:
    """A creation whose Content-Length is beyond its own Upload-Length (not completing) is a
    400 its headers already tell, as the same append is: it was found only once the upload
    existed, which stayed behind, open, its length counted against the bucket's quota, its
    Location on the 400 for a resume that could never be right. Refused first, as tus creation
    does, it leaves nothing."""
    key = f"too-long-{uuid.uuid4().hex}"
    with server.client() as c:
        headers = draft(version, Upload_Complete="?0", Upload_Length="10")
        headers["Upload-Metadata"] = tus_metadata({"key": key})
        r = c.post("/files/", content=b"z" * 20, headers=headers)
        assert r.status_code == 400, r.text
        assert "Location" not in r.headers
    eng = sa.create_engine(server.database_url)
    try:
        with eng.connect() as conn:
            made = conn.execute(sa.text("SELECT count(*) FROM uploads WHERE key = :k"), {"k": key})
            assert made.scalar_one() == 0
    finally:
        eng.dispose()
