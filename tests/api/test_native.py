"""The native chunk API over HTTP against a real server: sessions, /missing and chunk PUTs,
every refusal (its status and that the store is unchanged), expiry, idempotency, and Expect:
100-continue. Finalize is in test_native_finalize.py."""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers import KiB, random_bytes, sha256_hex
from tests.native import (
    SMALL_PARAMS,
    assert_refcounts_consistent,
    chunks_of,
    expire,
    finalize,
    finalized_session,
    open_session,
    pins_of,
    put,
    small_server,  # noqa: F401  (this module's `server` fixture)
    unchanged,
    upload_all,
    versions_of,
)

MAX = SMALL_PARAMS.max_size


# --- params and sessions ---------------------------------------------------------------------


def test_params_are_the_store_s_recorded_chunker(http) -> None:
    body = http.get("/v1/params").json()
    assert body["chunker"] == {
        "algorithm": "fastcdc2020",
        "hash": "sha256",
        "min_size": SMALL_PARAMS.min_size,
        "avg_size": SMALL_PARAMS.avg_size,
        "max_size": SMALL_PARAMS.max_size,
    }
    assert body["max_chunk_size"] == MAX and body["max_missing_batch"] == 10_000


def test_openapi_documents_every_native_route(http) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path, method in [
        ("/v1/params", "get"),
        ("/v1/uploads", "post"),
        ("/v1/uploads/{upload_id}", "get"),
        ("/v1/uploads/{upload_id}", "delete"),
        ("/v1/uploads/{upload_id}/missing", "post"),
        ("/v1/uploads/{upload_id}/chunks/{chunk_id}", "put"),
        ("/v1/uploads/{upload_id}/finalize", "post"),
    ]:
        assert paths[path][method]["summary"], (path, method)
    assert "application/octet-stream" in str(paths["/v1/uploads/{upload_id}/chunks/{chunk_id}"])


def test_create_and_status(http, probe) -> None:
    r = http.post(
        "/v1/uploads",
        json={"bucket": "media", "size": 123, "filename": "clip.mp4", "metadata": {"a": "b"}},
    )
    assert r.status_code == 201
    body = r.json()
    assert r.headers["location"] == f"/v1/uploads/{body['upload_id']}"
    assert (body["state"], body["bucket"], body["key"], body["size"]) == (
        "open",
        "media",
        "clip.mp4",
        123,
    )
    assert body["expires_at"] > time.time() and body["params"]["chunker"]["max_size"] == MAX
    assert probe.upload(body["upload_id"])["kind"] == "native"
    st = http.get(f"/v1/uploads/{body['upload_id']}").json()
    assert (st["state"], st["pinned_chunks"], st["version"]) == ("open", 0, None)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"size": -1}, 400),
        ({}, 400),
        ({"size": 1, "sha256": "abc"}, 400),
        ({"size": 1, "sha256": "A" * 64}, 400),
        ({"size": 1, "bucket": "Bad Bucket"}, 400),
        ({"size": 1, "key": "../etc"}, 400),
        ({"size": 1, "unknown": True}, 400),
        ({"size": 1, "filename": "a\x00b.txt"}, 400),  # PostgreSQL cannot store NUL
        ({"size": 1, "metadata": {"note": "a\x00"}}, 400),
        ({"size": 1, "metadata": {f"k{i}": "v" for i in range(65)}}, 400),
        ({"size": 1 << 50}, 413),
    ],
)
def test_create_refusals(http, probe, server, body, status) -> None:
    with unchanged(probe, server):
        r = http.post("/v1/uploads", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]


@pytest.mark.parametrize("uid", ["no-such-upload", "00000000-0000-4000-8000-000000000000"])
def test_unknown_session_is_404_everywhere(http, probe, server, uid) -> None:
    cid = sha256_hex(b"x")
    with unchanged(probe, server):
        assert http.get(f"/v1/uploads/{uid}").status_code == 404
        assert http.delete(f"/v1/uploads/{uid}").status_code == 404
        assert http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": [cid]}).status_code == 404
        assert put(http, uid, cid, b"x").status_code == 404
        assert finalize(http, uid, [(cid, b"x")], sha256_hex(b"x")).status_code == 404


def test_a_tus_upload_is_not_a_native_session(http, probe, server) -> None:
    stored = random_bytes(20 * KiB, seed=30)
    cid = sha256_hex(stored)
    assert put(http, open_session(http, len(stored)), cid, stored).status_code == 201
    r = http.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
    uid = r.headers["location"].rsplit("/", 1)[-1]
    with unchanged(probe, server):
        assert http.get(f"/v1/uploads/{uid}").status_code == 404
        assert put(http, uid, sha256_hex(b"hello"), b"hello").status_code == 404
        assert put(http, uid, cid, stored).status_code == 404
        # /missing must not pin chunks to a tus upload: nothing would ever release them
        assert http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": [cid]}).status_code == 404
        assert finalize(http, uid, [(cid, stored)], cid).status_code == 404
    assert pins_of(probe, uid) == set()


def test_expired_session_is_410_everywhere(http, probe, server) -> None:
    data = random_bytes(100 * KiB, seed=1)
    chunks = chunks_of(data)
    uid = open_session(http, len(data))
    upload_all(http, uid, chunks[:1])
    expire(probe, uid)
    cid, c = chunks[-1]
    with unchanged(probe, server):
        assert http.get(f"/v1/uploads/{uid}").status_code == 410
        assert http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": [cid]}).status_code == 410
        assert put(http, uid, cid, c).status_code == 410
        assert finalize(http, uid, chunks, sha256_hex(data)).status_code == 410
    assert versions_of(probe, uid) == 0


def test_abort_releases_pins(http, probe) -> None:
    data = random_bytes(300 * KiB, seed=2)
    chunks = chunks_of(data)
    uid = open_session(http, len(data))
    upload_all(http, uid, chunks)
    assert pins_of(probe, uid) == {cid for cid, _ in chunks}
    assert http.delete(f"/v1/uploads/{uid}").status_code == 204
    assert pins_of(probe, uid) == set()
    assert_refcounts_consistent(probe)
    assert http.get(f"/v1/uploads/{uid}").status_code == 410


# --- which chunks are missing ----------------------------------------------------------------


def test_missing_lists_absent_ids_and_pins_the_rest(http, probe) -> None:
    data = random_bytes(400 * KiB, seed=3)
    chunks = chunks_of(data)
    assert len(chunks) >= 3
    first = open_session(http, len(data))
    upload_all(http, first, chunks[:2])
    uid = open_session(http, len(data))
    ids = [cid for cid, _ in chunks]
    r = http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": [*ids, ids[0]]})
    assert r.status_code == 200
    assert r.json() == {"missing": ids[2:], "pinned": 2}
    assert pins_of(probe, uid) == set(ids[:2])
    again = http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": ids}).json()
    assert again["missing"] == ids[2:]  # idempotent: pinned once
    assert_refcounts_consistent(probe)
    st = http.get(f"/v1/uploads/{uid}").json()
    assert (st["pinned_chunks"], st["pinned_bytes"]) == (2, sum(len(c) for _, c in chunks[:2]))


def test_missing_takes_thousands_of_ids(http) -> None:
    uid = open_session(http, 1)
    ids = [sha256_hex(str(i).encode()) for i in range(10_000)]
    r = http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": ids})
    assert r.status_code == 200 and r.json()["missing"] == ids


@pytest.mark.parametrize(
    "chunk_ids",
    [
        ["nothex"],
        ["A" * 64],
        [sha256_hex(b"x")[:63]],
        [sha256_hex(str(i).encode()) for i in range(10_001)],
    ],
)
def test_missing_refusals(http, probe, server, chunk_ids) -> None:
    uid = open_session(http, 1)
    with unchanged(probe, server):
        r = http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": chunk_ids})
    assert r.status_code == 400


# --- chunks ------------------------------------------------------------------------------------


def test_put_verifies_stores_pins_and_is_idempotent(http, probe) -> None:
    data = random_bytes(50 * KiB, seed=4)
    cid = sha256_hex(data)
    uid = open_session(http, len(data))
    r = put(http, uid, cid, data)
    assert r.status_code == 201 and r.json() == {"chunk_id": cid, "size": len(data), "new": True}
    assert pins_of(probe, uid) == {cid}
    r = put(http, uid, cid, data)
    assert r.status_code == 200 and r.json()["new"] is False
    assert pins_of(probe, uid) == {cid}
    assert_refcounts_consistent(probe)


def test_put_with_wrong_bytes_is_422_and_keeps_nothing(http, probe, server) -> None:
    uid = open_session(http, 40 * KiB)
    data = random_bytes(40 * KiB, seed=5)
    claimed = sha256_hex(data + b"!")
    with unchanged(probe, server):
        r = put(http, uid, claimed, data)
    assert r.status_code == 422
    assert r.json()["error"] == "chunk_hash_mismatch"
    assert claimed in r.json()["message"]


def test_put_oversized_chunk_is_413_before_reading(http, probe, server) -> None:
    uid = open_session(http, MAX + 1)
    big = random_bytes(MAX + 1, seed=6)
    with unchanged(probe, server):
        assert put(http, uid, sha256_hex(big), big).status_code == 413  # by Content-Length
        chunked = http.put(f"/v1/uploads/{uid}/chunks/{sha256_hex(big)}", content=iter([big]))
        assert chunked.status_code == 413  # no Content-Length: counted while reading
    assert "transfer-encoding" not in put(http, uid, sha256_hex(b"ok"), b"ok").request.headers


@pytest.mark.parametrize(
    ("cid", "body", "status"),
    [("nothex", b"x", 400), ("A" * 64, b"x", 400), (sha256_hex(b""), b"", 400)],
)
def test_put_refusals(http, probe, server, cid, body, status) -> None:
    uid = open_session(http, 10)
    with unchanged(probe, server):
        assert put(http, uid, cid, body).status_code == status


def test_put_after_finalize_is_refused(http, probe, server) -> None:
    uid, chunks = finalized_session(http, random_bytes(30 * KiB, seed=7))
    other = random_bytes(20 * KiB, seed=8)
    with unchanged(probe, server):
        assert put(http, uid, sha256_hex(other), other).status_code == 403
        assert put(http, uid, chunks[0][0], chunks[0][1]).status_code == 403
        r = http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": [sha256_hex(other)]})
        assert r.status_code == 403


def _raw_put(server, path: str, length: int, extra: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n"
    sock.sendall(head.encode())
    return sock


def _read_head(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(65536)
        if not piece:
            break
        buf += piece
    return buf


def test_expect_continue_known_chunk_answered_without_the_body(http, probe, server) -> None:
    data = random_bytes(200 * KiB, seed=9)
    cid = sha256_hex(data)
    first = open_session(http, len(data))
    assert put(http, first, cid, data).status_code == 201
    uid = open_session(http, len(data))
    sock = _raw_put(
        server, f"/v1/uploads/{uid}/chunks/{cid}", len(data), "Expect: 100-continue\r\n"
    )
    try:
        started = time.monotonic()
        head = _read_head(sock)
        assert time.monotonic() - started < 1.0
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"100 Continue" not in head and b"connection: close" in head.lower()
    finally:
        sock.close()
    assert pins_of(probe, uid) == {cid}


def test_expect_continue_unknown_chunk_gets_100_then_stores(http, probe, server) -> None:
    data = random_bytes(100 * KiB, seed=10)
    cid = sha256_hex(data)
    uid = open_session(http, len(data))
    path = f"/v1/uploads/{uid}/chunks/{cid}"
    sock = _raw_put(server, path, len(data), "Expect: 100-continue\r\n")
    try:
        assert _read_head(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(data)
        assert _read_head(sock).startswith(b"HTTP/1.1 201 ")
    finally:
        sock.close()
    assert pins_of(probe, uid) == {cid}
