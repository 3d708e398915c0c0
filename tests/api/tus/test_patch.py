"""PATCH (core protocol): appending at the durable offset, and every way to get it wrong.

Every refused request is checked twice: its status, and that the store is exactly as before
(the upload's rows, parts and staged tail, HEAD's offset, and no new upload or object).
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest

from tests.helpers import (
    TUS,
    UNKNOWN_ID,
    KiB,
    MiB,
    patch_headers,
    random_bytes,
    sha256_hex,
    store_unchanged,
    tus_create,
    tus_offset,
    tus_patch,
)


def _started(http, data: bytes, sent: int) -> str:
    """An upload of len(data) bytes whose first `sent` bytes are in."""
    url = tus_create(http, len(data))
    if sent:
        assert tus_patch(http, url, 0, data[:sent]).status_code == 204
    return url


def _pieces(data: bytes, size: int = 64 * KiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_patches_append_and_complete_the_object(http) -> None:
    data = random_bytes(11 * MiB + 321, seed=21)  # several chunks, with staged tails between
    url = tus_create(http, len(data))
    cuts = [0, 1, 777_777, 5 * MiB + 3, 9 * MiB, len(data)]
    for lo, hi in itertools.pairwise(cuts):
        r = tus_patch(http, url, lo, data[lo:hi])
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Offset"] == str(hi)
        assert r.headers["Tus-Resumable"] == "1.0.0"
        assert r.content == b""
    got = http.get(url)
    assert got.status_code == 200
    assert sha256_hex(got.content) == sha256_hex(data)


def test_uploads_that_repeat_a_stored_file_keep_exact_digests(http) -> None:
    """The same file again, then an edited copy, each in several PATCHes: the whole-file
    SHA-256 follows the stored version's recorded states across requests where the chunks
    match (engine/prefix.py), and is the bytes' own digest all the same."""
    data = random_bytes(24 * MiB + 11, seed=23)
    edited = data[: 13 * MiB] + b"edited" + data[13 * MiB :]
    for body in (data, data, edited):
        url = tus_create(http, len(body))
        for lo, hi in itertools.pairwise([0, 7 * MiB + 1, 15 * MiB, len(body)]):
            assert tus_patch(http, url, lo, body[lo:hi]).status_code == 204
        got = http.get(url)
        assert got.status_code == 200
        assert sha256_hex(got.content) == sha256_hex(body)
        assert got.headers["X-Edgestore-Sha256"] == sha256_hex(body)


def test_a_streamed_chunked_patch_is_accepted(http) -> None:
    data = random_bytes(3 * MiB + 5, seed=22)
    url = tus_create(http, len(data))
    r = tus_patch(http, url, 0, _pieces(data))
    assert r.status_code == 204, r.text
    assert r.headers["Upload-Offset"] == str(len(data))
    assert http.get(url).content == data


def test_an_empty_patch_at_the_offset_changes_nothing(http, probe) -> None:
    data = random_bytes(1000, seed=23)
    url = _started(http, data, 400)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 400, b"")
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "400"


@pytest.mark.parametrize("wrong", [0, 399, 401, 1000, 5000])
def test_wrong_upload_offset_is_409(http, probe, wrong: int) -> None:
    data = random_bytes(1000, seed=24)
    url = _started(http, data, 400)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, wrong, data[wrong:][:100] or b"x")
    assert r.status_code == 409
    assert r.headers["Tus-Resumable"] == "1.0.0"
    # the right offset still works afterwards
    assert tus_patch(http, url, 400, data[400:]).status_code == 204
    assert http.get(url).content == data


@pytest.mark.parametrize(
    "content_type", [None, "application/octet-stream", "text/plain", "application/offset"]
)
def test_wrong_content_type_is_415_and_keeps_no_byte(http, probe, content_type) -> None:
    data = random_bytes(2000, seed=25)
    url = _started(http, data, 500)
    headers = patch_headers(500)
    headers.pop("Content-Type")
    if content_type is not None:
        headers["Content-Type"] = content_type
    with store_unchanged(http, probe, url):
        r = http.patch(url, content=data[500:], headers=headers)
    assert r.status_code == 415
    assert tus_offset(http, url) == 500


def test_content_type_parameters_are_tolerated(http) -> None:
    url = tus_create(http, 3)
    r = tus_patch(http, url, 0, b"abc", **{"Content-Type": "application/offset+octet-stream; x=1"})
    assert r.status_code == 204


@pytest.mark.parametrize("offset", [None, "", "-1", "abc", "1.5", "+0", "0x10", "1 2", "9" * 20])
def test_missing_or_malformed_upload_offset_is_400(http, probe, offset) -> None:
    url = tus_create(http, 10)
    headers = patch_headers(0)
    if offset is None:
        headers.pop("Upload-Offset")
    else:
        headers["Upload-Offset"] = offset
    with store_unchanged(http, probe, url):
        r = http.patch(url, content=b"0123456789", headers=headers)
    assert r.status_code == 400
    assert tus_offset(http, url) == 0


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0", "1.0.0, 0.2.2"])
def test_missing_or_unsupported_tus_resumable_is_412_and_keeps_no_byte(
    http, probe, version
) -> None:
    data = random_bytes(2 * MiB, seed=26)
    url = _started(http, data, 1000)
    headers = patch_headers(1000)
    headers.pop("Tus-Resumable")
    if version is not None:
        headers["Tus-Resumable"] = version
    with store_unchanged(http, probe, url):
        r = http.patch(url, content=data[1000:], headers=headers)
    assert r.status_code == 412
    assert "1.0.0" in r.headers["Tus-Version"]
    assert tus_offset(http, url) == 1000


def test_body_beyond_upload_length_with_content_length_is_413(http, probe) -> None:
    data = random_bytes(3 * MiB, seed=27)
    url = _started(http, data, 100)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 100, data[100:] + b"one byte too many")
    assert r.status_code == 413
    assert tus_offset(http, url) == 100
    assert tus_patch(http, url, 100, data[100:]).status_code == 204
    assert http.get(url).content == data


def test_small_chunked_body_beyond_upload_length_is_413(http, probe) -> None:
    data = random_bytes(100_000, seed=28)
    url = _started(http, data, 100)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 100, _pieces(data[100:] + b"extra", 8 * KiB))
    assert r.status_code == 413
    assert tus_offset(http, url) == 100


def test_large_chunked_body_beyond_upload_length_is_413_and_keeps_no_byte(http, probe) -> None:
    data = random_bytes(3 * MiB, seed=29)
    url = _started(http, data, 100)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 100, _pieces(data[100:] + random_bytes(MiB, seed=30)))
    assert r.status_code == 413
    assert tus_offset(http, url) == 100


def test_patch_beyond_a_finished_upload_is_413_and_the_object_is_unchanged(http, probe) -> None:
    data = random_bytes(5000, seed=31)
    url = _started(http, data, 5000)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 5000, b"more")
    assert r.status_code == 413
    assert http.get(url).content == data


def test_empty_patch_on_a_finished_upload_is_204(http) -> None:
    data = random_bytes(5000, seed=32)
    url = _started(http, data, 5000)
    r = tus_patch(http, url, 5000, b"")
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "5000"


@pytest.mark.parametrize("upload_id", [UNKNOWN_ID, "nope"])
def test_patch_to_an_unknown_upload_is_404(http, probe, upload_id: str) -> None:
    with store_unchanged(http, probe):
        r = tus_patch(http, f"/files/{upload_id}", 0, b"abc")
    assert r.status_code == 404
    assert r.headers["Tus-Resumable"] == "1.0.0"


def test_x_http_method_override_patch(http) -> None:
    data = b"0123456789"
    url = tus_create(http, len(data))
    r = http.post(
        url, content=data, headers={**patch_headers(0), "X-HTTP-Method-Override": "PATCH"}
    )
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "10"


def test_response_to_patch_carries_tus_resumable_and_offset_only_durable(http) -> None:
    data = random_bytes(9 * MiB + 1, seed=33)
    url = tus_create(http, len(data))
    r = tus_patch(http, url, 0, data[: 6 * MiB + 7])
    assert r.status_code == 204
    # the acknowledged offset is exactly what was sent, tail included (staged durably)
    assert r.headers["Upload-Offset"] == str(6 * MiB + 7)
    assert http.head(url, headers=TUS).headers["Upload-Offset"] == str(6 * MiB + 7)


@pytest.mark.parametrize("piece", [256 * KiB, 48 * KiB], ids=["batches", "smaller-pieces"])
def test_a_chunked_patch_cut_after_its_last_byte_leaves_a_complete_upload(
    server, piece: int
) -> None:
    """The client sends every byte of the upload in a chunked PATCH and the link drops before
    the terminating chunk. HEAD then answers Upload-Offset == Upload-Length, which tus clients
    take as done (they send nothing more): the object must exist. With pieces smaller than
    the server's batches (bodies.BLOCK), the last ones arrived but were not yet handed to the
    engine when the link dropped: they were lost, and the upload stayed incomplete."""
    data = random_bytes(3 * 256 * KiB, seed=41)
    with server.client() as c:
        url = tus_create(c, len(data))
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    port = int(server.url.rsplit(":", 1)[1])
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: edgestore\r\nTus-Resumable: 1.0.0\r\n"
        "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for i in range(0, len(data), piece):
            sent = data[i : i + piece]
            sock.sendall(f"{len(sent):x}\r\n".encode() + sent + b"\r\n")
            time.sleep(0.3 * piece / (256 * KiB))
        sock.shutdown(socket.SHUT_RDWR)  # no terminating 0-chunk
    with server.client() as c:
        for _ in range(100):  # the server may still be committing what arrived
            h = c.head(url, headers=TUS)
            if int(h.headers["Upload-Offset"]) == len(data):
                break
            time.sleep(0.05)
        assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(data))
        got = c.get(url)
        assert got.status_code == 200, got.text
        assert sha256_hex(got.content) == sha256_hex(data)
