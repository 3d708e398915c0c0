"""checksum-trailer: Upload-Checksum sent after a chunked body (`Trailer: Upload-Checksum`),
checked once the body has ended; 460 on a mismatch and 400 when it never comes, keeping
nothing of that request either way. httpx cannot send trailers, so these speak HTTP/1.1 over
a raw socket."""

from __future__ import annotations

import base64
import hashlib
import socket
from urllib.parse import urlsplit

import pytest

from tests.helpers import (
    MiB,
    random_bytes,
    sha256_hex,
    store_unchanged,
    tus_create,
    tus_metadata,
    tus_offset,
)


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def _chunked(data: bytes, piece: int = 300_000) -> bytes:
    out = bytearray()
    for i in range(0, len(data), piece):
        part = data[i : i + piece]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return bytes(out)


def _send(server, method: str, path: str, headers: dict[str, str], raw_body: bytes) -> bytes:
    """One request on a new connection; the raw response, or b"" if the server closed it."""
    port = urlsplit(server.url).port
    head = f"{method} {path} HTTP/1.1\r\nHost: edgestore\r\nConnection: close\r\n"
    for name, value in {**server.auth_headers, **headers}.items():
        head += f"{name}: {value}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(head.encode() + b"\r\n" + raw_body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us: what it answered (if anything) is still read below
        response = b""
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except ConnectionResetError:
            pass
    return response


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _trailer_patch(
    server, url: str, offset: int, data: bytes, trailer: bytes | None, **extra: str
) -> bytes:
    body = _chunked(data) + b"0\r\n" + (trailer or b"") + b"\r\n"
    headers = {
        "Tus-Resumable": "1.0.0",
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": str(offset),
        "Transfer-Encoding": "chunked",
        "Trailer": "Upload-Checksum",
        **extra,
    }
    return _send(server, "PATCH", urlsplit(url).path, headers, body)


def _field(algorithm: str, data: bytes) -> bytes:
    return f"Upload-Checksum: {checksum(algorithm, data)}\r\n".encode()


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512"])
def test_a_matching_trailer_is_accepted(server, http, algorithm: str) -> None:
    data = random_bytes(3 * MiB + 17, seed=81)
    url = tus_create(http, len(data))
    first, rest = data[: MiB + 5], data[MiB + 5 :]
    for offset, part in ((0, first), (len(first), rest)):
        response = _trailer_patch(server, url, offset, part, _field(algorithm, part))
        assert _status(response) == 204, response[:300]
        assert f"upload-offset: {offset + len(part)}".encode() in response.lower()
    assert sha256_hex(http.get(url).content) == sha256_hex(data)


def test_a_mismatching_trailer_is_460_and_keeps_nothing(server, http, probe) -> None:
    data = random_bytes(9 * MiB + 3, seed=82)  # several chunks: none may be committed
    url = tus_create(http, len(data))
    with store_unchanged(http, probe, url):
        response = _trailer_patch(server, url, 0, data, _field("sha1", data[:-1]))
    assert _status(response) == 460, response[:300]
    assert tus_offset(http, url) == 0
    response = _trailer_patch(server, url, 0, data, _field("sha1", data))
    assert _status(response) == 204
    assert sha256_hex(http.get(url).content) == sha256_hex(data)


@pytest.mark.parametrize(
    "trailer",
    [
        None,
        b"X-Other: 1\r\n",
        b"Upload-Checksum: crc32 AAAAAA==\r\n",
        b"Upload-Checksum: sha1 !!!\r\n",
        b"Upload-Checksum: sha1 AAAA\r\nUpload-Checksum: sha1 AAAA\r\n",
    ],
    ids=["missing", "another-field", "unsupported", "not-base64", "twice"],
)
def test_a_trailer_that_is_missing_or_malformed_is_400(server, http, probe, trailer) -> None:
    data = random_bytes(MiB, seed=83)
    url = tus_create(http, len(data))
    with store_unchanged(http, probe, url):
        response = _trailer_patch(server, url, 0, data, trailer)
    assert _status(response) == 400, response[:300]
    assert (
        b"none of its bytes were kept" in response
        or b"not supported" in response
        or (b"base64" in response)
    )


def test_a_checksum_as_header_and_trailer_at_once_is_400(server, http, probe) -> None:
    url = tus_create(http, 3)
    with store_unchanged(http, probe, url):
        response = _trailer_patch(
            server, url, 0, b"abc", _field("sha1", b"abc"), **{"Upload-Checksum": "sha1 AAAA"}
        )
    assert _status(response) == 400 and b"send one" in response


def test_a_trailer_needs_a_chunked_body(server, http, probe) -> None:
    url = tus_create(http, 3)
    headers = {
        "Tus-Resumable": "1.0.0",
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0",
        "Content-Length": "3",
        "Trailer": "Upload-Checksum",
    }
    with store_unchanged(http, probe, url):
        response = _send(server, "PATCH", urlsplit(url).path, headers, b"abc")
    assert _status(response) == 400 and b"chunked" in response


def test_creation_with_upload_takes_a_trailer(server, http) -> None:
    data = random_bytes(2 * MiB, seed=84)
    headers = {
        "Tus-Resumable": "1.0.0",
        "Content-Type": "application/offset+octet-stream",
        "Upload-Length": str(len(data)),
        "Upload-Metadata": tus_metadata({"filename": "trailer.bin"}),
        "Transfer-Encoding": "chunked",
        "Trailer": "Upload-Checksum",
    }
    body = _chunked(data) + b"0\r\n" + _field("sha256", data) + b"\r\n"
    response = _send(server, "POST", "/files/", headers, body)
    assert _status(response) == 201, response[:300]
    location = next(
        line.split(b":", 1)[1].strip().decode()
        for line in response.split(b"\r\n")
        if line.lower().startswith(b"location:")
    )
    assert sha256_hex(http.get(urlsplit(location).path).content) == sha256_hex(data)


def test_an_endless_trailer_closes_the_connection(server, http, probe) -> None:
    """Trailer fields are buffered until they end, like a head: past 64 KiB of them the
    connection is closed rather than the server holding whatever the client sends."""
    url = tus_create(http, 3)
    with store_unchanged(http, probe, url):
        endless = b"X-Pad: " + b"a" * (1 * MiB)
        response = _trailer_patch(server, url, 0, b"abc", endless)
    assert response == b"" or _status(response) >= 400
    assert tus_offset(http, url) == 0
    assert http.get("/healthz").status_code == 200


def test_the_framing_cap_spares_small_chunks_and_pipelined_requests(server, http) -> None:
    """Reads that are mostly chunk framing (a client writing 100-byte chunks) and a read
    holding many pipelined requests are not an endless trailer."""
    data = random_bytes(2 * MiB, seed=85)
    url = tus_create(http, len(data))
    body = _chunked(data, piece=100) + b"0\r\n" + _field("sha1", data) + b"\r\n"
    headers = {
        "Tus-Resumable": "1.0.0",
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0",
        "Transfer-Encoding": "chunked",
        "Trailer": "Upload-Checksum",
    }
    response = _send(server, "PATCH", urlsplit(url).path, headers, body)
    assert _status(response) == 204, response[:300]
    assert sha256_hex(http.get(url).content) == sha256_hex(data)

    port = urlsplit(server.url).port
    n = 3000  # ~110 KiB of requests in one write
    one = b"GET /healthz HTTP/1.1\r\nHost: edgestore\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: edgestore\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(one * n + last)
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
    assert answers.count(b"HTTP/1.1 200") == n + 1
