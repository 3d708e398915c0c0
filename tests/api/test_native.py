"""The native chunk API over HTTP against a real server: every endpoint, every refusal (its
status and that the store is unchanged), expiry, idempotency, and Expect: 100-continue."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.helpers import KiB, random_bytes, sha256_hex
from tests.native import (
    DB_PARAMS,
    SMALL_PARAMS,
    assert_refcounts_consistent,
    chunks_of,
    manifest,
    pins_of,
    small_chunk_server,
    snapshot,
    unchanged,
    versions_of,
)

MAX = SMALL_PARAMS.max_size


@pytest.fixture(scope="module", params=DB_PARAMS)
def server(request, tmp_path_factory):
    with small_chunk_server(request, tmp_path_factory) as proc:
        yield proc


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
    r = http.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
    uid = r.headers["location"].rsplit("/", 1)[-1]
    with unchanged(probe, server):
        assert http.get(f"/v1/uploads/{uid}").status_code == 404
        assert put(http, uid, sha256_hex(b"hello"), b"hello").status_code == 404


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
    uid = open_session(http, 10)
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
    data = random_bytes(30 * KiB, seed=7)
    chunks = chunks_of(data)
    uid = open_session(http, len(data))
    upload_all(http, uid, chunks)
    assert finalize(http, uid, chunks, sha256_hex(data)).status_code == 200
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


# --- finalize ----------------------------------------------------------------------------------


def test_finalize_creates_the_version_and_releases_pins(http, probe) -> None:
    data = random_bytes(700 * KiB, seed=11)
    chunks = chunks_of(data)
    uid = open_session(http, len(data), key="fin/a.bin", content_type="application/x-test")
    upload_all(http, uid, chunks)
    r = finalize(http, uid, chunks, sha256_hex(data))
    assert r.status_code == 200, r.text
    v = r.json()
    assert (v["key"], v["size"], v["sha256"], v["version"]) == (
        "fin/a.bin",
        len(data),
        sha256_hex(data),
        1,
    )
    assert v["upload_id"] == uid and v["verified_by"] == "read-back"
    assert pins_of(probe, uid) == set()
    assert_refcounts_consistent(probe)
    got = http.get(f"/ids/{v['object_id']}")
    assert got.content == data and got.headers["content-type"] == "application/x-test"
    st = http.get(f"/v1/uploads/{uid}").json()
    assert st["state"] == "complete" and st["version"]["version_id"] == v["version_id"]

    again = finalize(http, uid, chunks, sha256_hex(data))  # a retry: same version, nothing new
    assert again.status_code == 200
    assert (
        again.json()["version_id"] == v["version_id"] and again.json()["verified_by"] == "already"
    )
    assert versions_of(probe, "fin/a.bin") == 1


def test_finalize_of_a_known_manifest_reads_nothing(http) -> None:
    data = random_bytes(300 * KiB, seed=12)
    chunks = chunks_of(data)
    uid = open_session(http, len(data), key="known/1")
    upload_all(http, uid, chunks)
    assert finalize(http, uid, chunks, sha256_hex(data)).json()["verified_by"] == "read-back"
    uid = open_session(http, len(data), key="known/2")
    assert (
        http.post(f"/v1/uploads/{uid}/missing", json={"chunk_ids": [c for c, _ in chunks]}).json()[
            "missing"
        ]
        == []
    )
    r = finalize(http, uid, chunks, sha256_hex(data))
    assert r.status_code == 200 and r.json()["verified_by"] == "known-manifest"
    wrong = open_session(http, len(data), key="known/3")
    assert finalize(http, wrong, chunks, sha256_hex(b"other")).status_code == 422


def test_finalize_with_missing_chunks_is_409_listing_them(http, probe, server) -> None:
    data = random_bytes(500 * KiB, seed=13)
    chunks = chunks_of(data)
    uid = open_session(http, len(data), key="miss/a")
    upload_all(http, uid, chunks[1:-1])
    before = snapshot(probe, server)
    r = finalize(http, uid, chunks, sha256_hex(data))
    assert r.status_code == 409
    assert r.json()["error"] == "missing_chunks"
    assert r.json()["missing"] == [chunks[0][0], chunks[-1][0]]
    assert snapshot(probe, server) == before and versions_of(probe, "miss/a") == 0
    upload_all(http, uid, [chunks[0], chunks[-1]])
    assert finalize(http, uid, chunks, sha256_hex(data)).status_code == 200


def test_finalize_with_wrong_sha256_is_422_and_creates_nothing(http, probe, server) -> None:
    data = random_bytes(400 * KiB, seed=14)
    chunks = chunks_of(data)
    uid = open_session(http, len(data), key="bad/sha")
    upload_all(http, uid, chunks)
    with unchanged(probe, server):
        r = finalize(http, uid, chunks, sha256_hex(data + b"x"))
        assert r.status_code == 422 and r.json()["error"] == "sha256_mismatch"
        swapped = [chunks[1], chunks[0], *chunks[2:]]  # the same chunks in another order
        assert finalize(http, uid, swapped, sha256_hex(data)).status_code == 422
    assert versions_of(probe, "bad/sha") == 0
    assert finalize(http, uid, chunks, sha256_hex(data)).status_code == 200  # still open: fixable


@pytest.mark.parametrize("fault", ["size_of_one", "total", "no_sha", "other_sha", "bad_id"])
def test_finalize_refusals(http, probe, server, fault) -> None:
    data = random_bytes(200 * KiB, seed=15)
    chunks = chunks_of(data)
    uid = open_session(http, len(data), sha256=sha256_hex(data))
    upload_all(http, uid, chunks)
    body = {"chunks": manifest(chunks), "sha256": sha256_hex(data)}
    status = 400
    if fault == "size_of_one":
        body["chunks"][0]["size"] += 1
        body["chunks"][1]["size"] -= 1
    elif fault == "total":
        body["chunks"] = body["chunks"][:-1]
    elif fault == "no_sha":
        uid = open_session(http, len(data))
        upload_all(http, uid, chunks)
        del body["sha256"]
    elif fault == "other_sha":
        body["sha256"] = sha256_hex(b"different")
        status = 422
    else:
        body["chunks"][0]["id"] = "xyz"
    with unchanged(probe, server):
        r = http.post(f"/v1/uploads/{uid}/finalize", json=body)
    assert r.status_code == status, r.text


def test_sha256_given_at_creation_is_enough(http) -> None:
    data = random_bytes(100 * KiB, seed=16)
    chunks = chunks_of(data)
    uid = open_session(http, len(data), sha256=sha256_hex(data))
    upload_all(http, uid, chunks)
    r = finalize(http, uid, chunks, None)
    assert r.status_code == 200 and r.json()["sha256"] == sha256_hex(data)


def test_finalize_another_manifest_after_completion_is_refused(http, probe, server) -> None:
    data = random_bytes(100 * KiB, seed=17)
    chunks = chunks_of(data)
    uid = open_session(http, len(data))
    upload_all(http, uid, chunks)
    assert finalize(http, uid, chunks, sha256_hex(data)).status_code == 200
    other = random_bytes(100 * KiB, seed=18)
    other_chunks = chunks_of(other)
    upload_all(http, open_session(http, len(other)), other_chunks)
    with unchanged(probe, server):
        assert finalize(http, uid, other_chunks, sha256_hex(other)).status_code == 403


def test_empty_object(http) -> None:
    uid = open_session(http, 0, key="empty")
    r = finalize(http, uid, [], sha256_hex(b""))
    assert r.status_code == 200 and r.json()["size"] == 0
    assert http.get(f"/ids/{r.json()['object_id']}").content == b""


def test_concurrent_finalizes_create_one_version(http, probe, server) -> None:
    data = random_bytes(600 * KiB, seed=19)
    chunks = chunks_of(data)
    uid = open_session(http, len(data), key="race/one")
    upload_all(http, uid, chunks)
    results: list[httpx.Response] = []

    def go() -> None:
        with server.client() as c:
            results.append(finalize(c, uid, chunks, sha256_hex(data)))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 4
    assert len({r.json()["version_id"] for r in results}) == 1
    assert versions_of(probe, "race/one") == 1
    assert_refcounts_consistent(probe)


def test_chunk_repeated_inside_a_file(http) -> None:
    block = random_bytes(MAX, seed=20)  # max-size cuts repeat exactly
    data = block * 3 + b"tail"
    chunks = chunks_of(data)
    assert len({cid for cid, _ in chunks}) < len(chunks)
    uid = open_session(http, len(data))
    missing = http.post(
        f"/v1/uploads/{uid}/missing", json={"chunk_ids": [c for c, _ in chunks]}
    ).json()["missing"]
    upload_all(http, uid, [(c, b) for c, b in dict(chunks).items() if c in missing])
    r = finalize(http, uid, chunks, sha256_hex(data))
    assert r.status_code == 200
    assert http.get(f"/ids/{r.json()['object_id']}").content == data


def test_chunks_announced_in_order_are_hashed_as_they_arrive(http) -> None:
    """/missing with offset and sizes lets the server hash the whole file during the upload:
    finalize then reads nothing back."""
    data = random_bytes(700 * KiB, seed=97)
    chunks = chunks_of(data)
    uid = open_session(http, len(data), key="streamed/1")
    ids = [c for c, _ in chunks]
    sizes = [len(c) for _, c in chunks]
    r = http.post(
        f"/v1/uploads/{uid}/missing", json={"chunk_ids": ids, "offset": 0, "sizes": sizes}
    )
    assert r.status_code == 200 and r.json()["missing"] == list(dict.fromkeys(ids))
    upload_all(http, uid, chunks)
    r = finalize(http, uid, chunks, sha256_hex(data))
    assert r.status_code == 200 and r.json()["verified_by"] == "streamed"
    assert http.get(f"/ids/{r.json()['object_id']}").content == data


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"offset": 0}, "offset and sizes come together"),
        ({"sizes": [1]}, "offset and sizes come together"),
        ({"offset": 0, "sizes": [1, 2]}, "2 sizes for 1 chunk ids"),
        ({"offset": 0, "sizes": [0]}, "chunk sizes run from 1 to"),
        ({"offset": -1, "sizes": [1]}, "offset"),
    ],
)
def test_a_malformed_announcement_is_refused(http, probe, server, extra, message) -> None:
    uid = open_session(http, 10)
    body = {"chunk_ids": [sha256_hex(b"x")], **extra}
    with unchanged(probe, server):
        r = http.post(f"/v1/uploads/{uid}/missing", json=body)
    assert r.status_code in (400, 422) and message in r.text, r.text
