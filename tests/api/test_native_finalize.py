"""Native finalize over HTTP against a real server: the version and its pins, the whole-file
SHA-256 (read back, known manifest, or hashed as chunks arrive), idempotency, and refusals
(each status with the store unchanged)."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.helpers import KiB, random_bytes, sha256_hex
from tests.native import (
    SMALL_PARAMS,
    assert_refcounts_consistent,
    chunks_of,
    finalize,
    finalized_session,
    manifest,
    open_session,
    pins_of,
    small_server,  # noqa: F401  (this module's `server` fixture)
    snapshot,
    unchanged,
    upload_all,
    versions_of,
)

MAX = SMALL_PARAMS.max_size


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
    uid, _ = finalized_session(http, random_bytes(100 * KiB, seed=17))
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


def test_a_manifest_body_beyond_what_the_session_can_need_is_413(http, probe, server) -> None:
    """FastAPI reads a JSON body whole before validating it: a finalize body is capped by
    what the session's manifest can hold (its size over the chunker's minimum), and /missing
    and session creation by their own bounds, so a request cannot make the server buffer
    gigabytes."""
    uid = open_session(http, 100 * KiB)
    entry = {"id": sha256_hex(b"x"), "size": 1}
    huge = {"chunks": [entry] * 200_000, "sha256": sha256_hex(b"x")}  # ~16 MB of JSON
    with unchanged(probe, server):
        r = http.post(f"/v1/uploads/{uid}/finalize", json=huge)
        assert r.status_code == 413, r.text
        padding = {"chunk_ids": [], "pad": " " * (8 << 20)}
        assert http.post(f"/v1/uploads/{uid}/missing", json=padding).status_code == 413
        assert http.post("/v1/uploads", json={"size": 1, "pad": " " * (8 << 20)}).status_code == 413


def test_a_wrong_sha256_refusal_does_not_reveal_the_right_one(http) -> None:
    """Chunk ids alone (which /missing confirms for any stored chunk) are no proof of holding
    the bytes: the whole-file SHA-256 is the rest of it. A 422 that named the real digest
    would let a caller with ids alone finalize again with it, and read the object."""
    data = random_bytes(200 * KiB, seed=21)
    chunks = chunks_of(data)
    owner = open_session(http, len(data), key="secret/a")
    upload_all(http, owner, chunks)
    assert finalize(http, owner, chunks, sha256_hex(data)).status_code == 200
    uid = open_session(http, len(data), key="thief/a")
    r = finalize(http, uid, chunks, sha256_hex(b"a guess"))
    assert r.status_code == 422
    assert sha256_hex(data) not in r.text
