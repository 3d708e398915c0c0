"""The IETF draft's 104 (Upload Resumption Supported) interim response: sent before the final
response of a creation with content, so that a client whose request is cut resumes at its
Location. Raw sockets against a real server."""

from __future__ import annotations

import socket
import time

import pytest

from tests.api.tus.ietf_requests import VERSIONS, append, assert_object, draft
from tests.api.tus.withheld import answer_to_head
from tests.helpers import KiB, MiB, StoreProbe, random_bytes


def _raw(server, request: bytes) -> bytes:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def _creation(version: str, body: bytes, *, http: str = "1.1", extra: str = "") -> bytes:
    head = (
        f"POST /files/ HTTP/{http}\r\nHost: edgestore\r\nConnection: close\r\n"
        f"Upload-Draft-Interop-Version: {version}\r\nUpload-Complete: ?1\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def _responses(raw: bytes) -> list[tuple[int, dict[str, str]]]:
    """Status and fields of each response head in `raw` (interim ones first)."""
    found = []
    for block in raw.split(b"\r\n\r\n"):
        lines = block.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1."):
            continue
        fields = dict(line.decode().split(": ", 1) for line in lines[1:] if b": " in line)
        found.append((int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}))
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_a_creation_with_content_is_announced_by_104(server, version: str) -> None:
    """The interim response comes before the final one and says where the upload is."""
    data = random_bytes(300 * KiB, seed=68)
    heads = _responses(_raw(server, _creation(version, data)))
    assert [status for status, _ in heads] == [104, 201], heads
    interim, final = heads[0][1], heads[1][1]
    assert interim["location"] == final["location"]
    assert interim["upload-draft-interop-version"] == version
    assert interim["upload-limit"].startswith("max-size=")
    with server.client() as c:
        assert_object(c, final["location"].split("edgestore", 1)[1], data)


def test_104_follows_a_100_continue_and_skips_http_10_and_empty_creations(server) -> None:
    data = random_bytes(KiB, seed=69)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = _creation("6", b"", extra="Expect: 100-continue\r\n").replace(
            b"Content-Length: 0", f"Content-Length: {len(data)}".encode()
        )
        sock.sendall(head)
        got = b""
        while b"104 Upload Resumption Supported" not in got:
            got += sock.recv(65536)  # the client waits, as curl does, before its content
        sock.sendall(data)
        while chunk := sock.recv(65536):
            got += chunk
    assert [s for s, _ in _responses(got)] == [100, 104, 201]
    assert [s for s, _ in _responses(_raw(server, _creation("6", data, http="1.0")))] == [201]
    empty = "POST /files/ HTTP/1.1\r\nHost: e\r\nConnection: close\r\n"
    empty += "Upload-Draft-Interop-Version: 6\r\nUpload-Complete: ?0\r\nContent-Length: 0\r\n\r\n"
    assert [s for s, _ in _responses(_raw(server, empty.encode()))] == [201]


def test_a_creation_cut_short_resumes_at_the_location_of_its_104(server) -> None:
    """The point of 104: the client drops mid-creation, knowing only the interim response,
    and completes the upload from there (no second upload, no byte lost)."""
    data = random_bytes(6 * MiB + 5, seed=70)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = _creation("8", b"").replace(
            b"Content-Length: 0", f"Content-Length: {len(data)}".encode()
        )
        sock.sendall(head + data[: 4 * MiB])
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        heads = _responses(got)
        assert heads[0][0] == 104
        location = heads[0][1]["location"].split("edgestore", 1)[1]
        sock.shutdown(socket.SHUT_RDWR)  # the link drops, 2 MiB short
    with server.client() as c:
        for _ in range(100):
            h = c.head(location, headers=draft("8"))
            assert h.status_code == 204 and h.headers["Upload-Complete"] == "?0"
            offset = int(h.headers["Upload-Offset"])
            r = append(c, location, offset, data[offset:], complete=True, version="8")
            if r.status_code not in (409, 423):
                break
            time.sleep(0.05)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1"), r.text
        assert_object(c, location, data)


def test_a_presigned_creation_resumes_at_the_location_of_its_104(auth_server) -> None:
    """With a pre-signed URL, the upload's Location carries its upload token (the client has
    no other credential): the 104's Location too, or the client that dropped mid-creation,
    knowing only the interim response, is refused (401) where it resumes."""
    from urllib.parse import urlsplit

    from tests.api.access import client_with, grant_url

    data = random_bytes(300 * KiB, seed=71)
    url = urlsplit(grant_url(auth_server, "upload", "default", "interim-k", max_size=MiB))
    request = _creation("8", data, extra=f"Upload-Length: {len(data)}\r\n")
    request = request.replace(b"POST /files/ ", f"POST {url.path}?{url.query} ".encode(), 1)
    heads = _responses(_raw(auth_server, request))
    assert [status for status, _ in heads] == [104, 201], heads
    assert "es_upload_token=" in heads[1][1]["location"]
    interim = heads[0][1]["location"].split("edgestore", 1)[1]
    with client_with(auth_server) as c:
        h = c.head(interim, headers=draft("8"))
        assert (h.status_code, h.headers.get("Upload-Complete")) == (204, "?1"), h.text


@pytest.mark.parametrize("complete", ["?0", "?1"])
def test_a_creation_with_content_beyond_the_maximum_is_413_and_creates_nothing(
    fresh_server, complete: str
) -> None:
    """Content-Length beyond max_upload_size: refused from the headers, with no 104. With
    `Upload-Complete: ?1` it is the upload's length and was; with ?0 (length unknown) the
    upload was created, announced by a 104, and stayed behind the 413, open, holding quota.
    Content beyond the bucket's room (a quota) is a 507 from the headers just the same."""
    fresh_server.env_extra["EDGESTORE_MAX_UPLOAD_SIZE"] = "100000"
    fresh_server.env_extra["EDGESTORE_BUCKET_QUOTAS"] = '{"default": 50000}'
    fresh_server.start()
    probe = StoreProbe(fresh_server.database_url)
    try:
        # Beyond the maximum (413), then within it but beyond the bucket's room (507).
        for content, status in ((100_001, 413), (50_001, 507)):
            head = _creation("8", b"").replace(
                b"Content-Length: 0", b"Content-Length: %d" % content
            )
            head = head.replace(b"Upload-Complete: ?1", f"Upload-Complete: {complete}".encode())
            got = answer_to_head(fresh_server.url, head.decode())
            assert [status for status, _ in _responses(got)] == [status], got
            assert "location" not in _responses(got)[0][1]
            assert probe.counts()["uploads"] == 0
    finally:
        probe.close()
