"""Prometheus counters and request ids, against a real server of this module's own (so no
other test's traffic moves its counters)."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from edgestore.api.metrics import Metrics
from edgestore.engine.dedup import StoredChunk
from edgestore.types import ChunkId
from tests.helpers import (
    TUS,
    KiB,
    MiB,
    TricklingPatch,
    patch_headers,
    random_bytes,
    tus_create,
    tus_offset,
    tus_patch,
)
from tests.native import SMALL_ENV, chunks_of, finalize, manifest, open_session, upload_all
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base: Path = tmp_path_factory.mktemp("metrics")
    proc = ServerProcess(
        home=base / "home",
        database_url=f"sqlite:///{base / 'meta.db'}",
        env_extra={**SMALL_ENV, "EDGESTORE_LOG_FORMAT": "json"},
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def _metric(c, name: str, labels: str = "") -> float:
    want = f"{name}{{{labels}}}" if labels else name
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_bytes_an_interrupted_patch_kept_are_counted_in(server: ServerProcess) -> None:
    """A PATCH cut by its client keeps the bytes that arrived (the client resumes after
    them): those bytes were received, and bytes_in must count them. It counted only bytes
    of requests that succeeded, so an upload resumed once showed fewer bytes in than the
    file it stored."""
    data = random_bytes(2 * MiB, seed=1)
    with server.client() as c:
        before = _metric(c, "edgestore_bytes_in_total")
        url = tus_create(c, len(data))
        cut = TricklingPatch(server.url, url, 0, data, first=MiB).start()
        time.sleep(0.5)
        cut.drop()
        # Until the cut PATCH has kept what arrived, a HEAD may report an offset it is still
        # moving past (a client resuming there gets 409 and asks again): wait for it to end.
        deadline = time.monotonic() + 10
        while _metric(c, "edgestore_uploads_active") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        kept = tus_offset(c, url)
        assert 0 < kept <= cut.sent
        assert tus_patch(c, url, kept, data[kept:]).status_code == 204
        assert c.get(url).content == data
        counted = _metric(c, "edgestore_bytes_in_total") - before
    assert len(data) <= counted <= cut.sent + len(data) - kept


def test_native_chunks_the_store_already_holds_are_dedup_hits(server: ServerProcess) -> None:
    """A native client sends only the chunks /missing names; the others (and a PUT of a chunk
    the store holds, answered unread) are stored once for both uploads: dedup hits, their
    bytes saved. They were not counted at all, so a second upload of the same file through
    the native API showed no dedup."""
    data = random_bytes(1 * MiB, seed=2)
    chunks = chunks_of(data)
    digest = hashlib.sha256(data).hexdigest()
    with server.client() as c:
        first = open_session(c, len(data))
        upload_all(c, first, chunks)
        assert finalize(c, first, chunks, digest).status_code == 200
        hits = _metric(c, "edgestore_chunks_total", 'result="dedup"')
        saved = _metric(c, "edgestore_dedup_saved_bytes_total")
        # The same file again: /missing pins all but the last chunk, which is PUT (unread).
        second = open_session(c, len(data))
        ids = [cid for cid, _ in chunks]
        r = c.post(f"/v1/uploads/{second}/missing", json={"chunk_ids": ids[:-1]})
        assert r.status_code == 200 and r.json()["missing"] == []
        last_id, last = chunks[-1]
        put = c.put(f"/v1/uploads/{second}/chunks/{last_id}", content=last)
        assert put.status_code == 200 and put.json()["new"] is False
        done = c.post(
            f"/v1/uploads/{second}/finalize", json={"chunks": manifest(chunks), "sha256": digest}
        )
        assert done.status_code == 200, done.text
        assert _metric(c, "edgestore_chunks_total", 'result="dedup"') - hits == len(chunks)
        assert _metric(c, "edgestore_dedup_saved_bytes_total") - saved == len(data)


def test_worker_thread_logs_carry_the_request_id(server: ServerProcess) -> None:
    """Every log record of a request carries its id, including those its engine work logs on
    a worker thread (here: native finalize's line about its whole-file SHA-256)."""
    data = random_bytes(300 * KiB, seed=3)
    chunks = chunks_of(data)
    with server.client() as c:
        uid = open_session(c, len(data))
        upload_all(c, uid, chunks)
        r = c.post(
            f"/v1/uploads/{uid}/finalize",
            json={"chunks": manifest(chunks), "sha256": hashlib.sha256(data).hexdigest()},
            headers={**TUS, "X-Request-Id": "finalize-rid-1"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "finalize-rid-1"
    deadline = time.monotonic() + 5
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in server.log().splitlines() if x.startswith("{")]
        lines = [d for d in lines if uid in d["message"] and "whole-file" in d["message"]]
        if lines:
            break
        time.sleep(0.05)
    assert lines, "no whole-file log line for the upload"
    assert [d["request_id"] for d in lines] == ["finalize-rid-1"]


def test_native_chunk_bodies_are_counted_as_uploads(server: ServerProcess) -> None:
    """A native chunk PUT streams an upload body like a tus PATCH: it showed in neither
    uploads_active while its body arrived nor bytes_in once it was refused (a body that did
    not hash to its chunk id, one cut off by its client), which tus bodies always count."""
    body = random_bytes(200 * KiB, seed=4)
    wrong_id = hashlib.sha256(b"something else").hexdigest()
    with server.client() as c:
        uid = open_session(c, len(body))
        before = _metric(c, "edgestore_bytes_in_total")
        r = c.put(f"/v1/uploads/{uid}/chunks/{wrong_id}", content=body)
        assert r.status_code == 422, r.text
        assert _metric(c, "edgestore_bytes_in_total") - before == len(body)
        cid = hashlib.sha256(body).hexdigest()
        head = (
            f"PUT /v1/uploads/{uid}/chunks/{cid} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(head.encode() + body[: 100 * KiB])
            deadline = time.monotonic() + 5
            while _metric(c, "edgestore_uploads_active") != 1:
                assert time.monotonic() < deadline, "a streaming chunk body is not counted"
                time.sleep(0.05)
        deadline = time.monotonic() + 5
        while _metric(c, "edgestore_uploads_active") != 0:
            assert time.monotonic() < deadline, "the cut-off chunk body is still counted"
            time.sleep(0.05)
        assert _metric(c, "edgestore_bytes_in_total") - before == len(body) + 100 * KiB


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory):
    """A server logging in the default (text) format."""
    base: Path = tmp_path_factory.mktemp("text-logs")
    proc = ServerProcess(home=base / "home", database_url=f"sqlite:///{base / 'meta.db'}")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_a_client_cannot_forge_text_log_lines(text_server: ServerProcess) -> None:
    """The path is logged percent-decoded, so %0A in it started a line of the client's
    choosing in the text log (the default format); a client-supplied X-Request-Id went into
    each line's [request id] field and was echoed as sent, whatever it held."""
    forged = "2099-01-01 00:00:00,000 INFO [-] edgestore.http: DELETE /objects/b/k 204 0.001s"
    with text_server.client() as c:
        assert c.get("/no-such%0A" + forged.replace(" ", "%20")).status_code == 404
        spoof = "x] edgestore.http: GET /objects/b/k 200 0.001s ["
        r = c.get("/healthz", headers={"X-Request-Id": spoof})
        assert r.status_code == 200
        assert r.headers["x-request-id"] != spoof
        ok = c.get("/healthz", headers={"X-Request-Id": "req-42.a_b:c"})
        assert ok.headers["x-request-id"] == "req-42.a_b:c"
    time.sleep(0.3)
    log = text_server.log()
    assert "/no-such" in log
    assert not any(line.startswith("2099-01-01") for line in log.splitlines())
    assert spoof not in log


def test_a_small_body_that_came_with_its_head_counts_as_queued(server: ServerProcess) -> None:
    """docs/operations.md: `queued` is chunked bodies and small ones that arrived whole with
    the request head (nothing left to read straight into the engine); the metric's help and
    the docs said only chunked ones (or a bandwidth limit) went that way."""
    with server.client() as c:
        before = _metric(c, "edgestore_upload_bodies_total", 'path="queued"')
        path = httpx.URL(tus_create(c, 10)).path
        # Head and body in one write, so they arrive in one read: httpx writes them apart,
        # and on a busy machine the body then came in a read of its own (the direct path).
        request = (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            "Content-Length: 10\r\nConnection: close\r\n\r\n0123456789"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 204")
        assert _metric(c, "edgestore_upload_bodies_total", 'path="queued"') == before + 1
        help_line = next(
            line
            for line in c.get("/metrics").text.splitlines()
            if "HELP edgestore_upload_bodies" in line
        )
    assert "bandwidth" not in help_line  # a metered body with a length still goes direct


def test_labelled_counters_show_every_documented_label_from_the_start(
    text_server: ServerProcess,
) -> None:
    """docs/operations.md lists edgestore_chunks_total{result="new"|"dedup"|"healed"} and
    edgestore_upload_bodies_total{path="direct"|"queued"}: a label value had no series until
    its first increment, so a fresh node's dashboards said "no data" and Prometheus's
    increase() missed that first increment (a series appearing at 1 has not increased)."""
    with text_server.client() as c:
        lines = c.get("/metrics").text.splitlines()
    for name, label in (
        ("edgestore_chunks_total", 'result="new"'),
        ("edgestore_chunks_total", 'result="dedup"'),
        ("edgestore_chunks_total", 'result="healed"'),
        ("edgestore_upload_bodies_total", 'path="direct"'),
        ("edgestore_upload_bodies_total", 'path="queued"'),
    ):
        assert any(line.startswith(f"{name}{{{label}}} ") for line in lines), (name, label)


def test_an_aborted_download_counts_about_what_was_sent(text_server: ServerProcess) -> None:
    """bytes_out counted each chunk-sized piece (MiBs) as it was read from the store, before
    it was sent: a download its client stopped reading after the head counted the piece
    read ahead and the one waiting to be sent (10 MB here, of which the client got none and
    the kernel held at most its buffers). Now bytes are counted as the connection takes them,
    in slices of download.SEND_SLICE."""
    from edgestore.api.download import SEND_SLICE

    data = random_bytes(48 * MiB, seed=6)
    with text_server.client() as c:
        url = tus_create(c, len(data))
        assert tus_patch(c, url, 0, data).status_code == 204
        before = _metric(c, "edgestore_bytes_out_total")
        rcvbuf = 64 * KiB
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.connect(("127.0.0.1", text_server.port))
            path = httpx.URL(url).raw_path.decode()
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)  # the server writes what the socket takes, then waits
            counted = _metric(c, "edgestore_bytes_out_total") - before
        # What the connection can hold: the kernel's send buffer (its ceiling), the client's
        # receive buffer (doubled by the kernel), the transport's own and one slice.
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        assert 0 < counted <= wmem_max + 2 * rcvbuf + 64 * KiB + SEND_SLICE, counted
        deadline = time.monotonic() + 5
        while _metric(c, "edgestore_downloads_active") != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _metric(c, "edgestore_bytes_out_total") - before == counted  # none after the end
        # A whole download and a range count exactly their bytes.
        before = _metric(c, "edgestore_bytes_out_total")
        assert c.get(url).content == data
        assert c.get(url, headers={"Range": "bytes=5-1000004"}).content == data[5:1000005]
        assert _metric(c, "edgestore_bytes_out_total") - before == len(data) + 1000000


def test_every_line_of_a_json_log_is_a_json_object(server: ServerProcess) -> None:
    """EDGESTORE_LOG_FORMAT=json promises one JSON object per line, but `serve` printed its
    banner (where it listens, the data dirs) as five plain text lines into the same stream:
    a log shipper parsing JSON choked on each start."""
    with server.client() as c:
        assert c.get("/healthz").status_code == 200
    time.sleep(0.2)
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert lines
    bad = []
    for line in lines:
        try:
            assert isinstance(json.loads(line), dict)
        except (ValueError, AssertionError):
            bad.append(line)
    assert not bad, bad[:5]
    banner = [json.loads(x)["message"] for x in lines if "edgestore serving" in x]
    assert len(banner) == 1 and "/files/" in banner[0]


def _access_line(server: ServerProcess, rid: str) -> dict:
    deadline = time.monotonic() + 5
    while True:
        for line in server.log().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if doc["request_id"] == rid and doc["logger"] == "edgestore.http":
                    return doc
        assert time.monotonic() < deadline, f"no access line for {rid}"
        time.sleep(0.05)


def test_access_lines_carry_the_body_bytes_in_and_out(server: ServerProcess) -> None:
    """An access line said method, path, status and duration but not how many body bytes
    went in or out (the JSON format even had a bytes_in field nothing filled): a cut upload
    or a download broken off could not be told from a whole one."""
    data = random_bytes(300 * KiB, seed=7)
    with server.client() as c:
        url = tus_create(c, 2 * len(data))
        r = c.patch(url, content=data, headers={**patch_headers(0), "X-Request-Id": "bytes-direct"})
        assert r.status_code == 204
        r = c.patch(
            url,
            content=iter([data[:KiB], data[KiB:]]),  # chunked: the queued way
            headers={**patch_headers(len(data)), "X-Request-Id": "bytes-queued"},
        )
        assert r.status_code == 204, r.text
        assert len(c.get(url, headers={"X-Request-Id": "bytes-get"}).content) == 2 * len(data)
        r = c.get(url, headers={"Range": "bytes=10-109", "X-Request-Id": "bytes-range"})
        assert r.status_code == 206
    for rid, bytes_in, bytes_out in (
        ("bytes-direct", len(data), 0),
        ("bytes-queued", len(data), 0),
        ("bytes-get", 0, 2 * len(data)),
        ("bytes-range", 0, 100),
    ):
        doc = _access_line(server, rid)
        assert (doc["bytes_in"], doc["bytes_out"]) == (bytes_in, bytes_out), (rid, doc)


def test_a_chunk_stored_again_to_heal_it_is_not_a_dedup_hit() -> None:
    """An upload bringing a damaged chunk's bytes stores it again (engine/dedup.py): shards
    were written, so counting it as a dedup hit (and its bytes as saved) was wrong."""
    metrics = Metrics()
    metrics.observe_chunk(StoredChunk(ChunkId("ab" * 32), 4 * MiB, 6 * MiB, False, healed=True))
    metrics.observe_chunk(StoredChunk(ChunkId("cd" * 32), 4 * MiB, 0, False))
    values = dict(line.rsplit(" ", 1) for line in metrics.render().decode().splitlines())
    assert float(values['edgestore_chunks_total{result="healed"}']) == 1
    assert float(values['edgestore_chunks_total{result="dedup"}']) == 1
    assert float(values["edgestore_dedup_saved_bytes_total"]) == 4 * MiB
