"""Graceful shutdown (SIGTERM) while PATCHes stream: each is finished or cut cleanly, what the
server acknowledged is kept, and the upload completes after the restart, at once (a clean
stop leaves no lease behind)."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest

from tests.helpers import (
    KiB,
    MiB,
    OffsetWatcher,
    StoreProbe,
    TricklingPatch,
    paced,
    patch_headers,
    random_bytes,
    sha256_hex,
    tus_create,
    tus_offset,
    tus_patch,
    upload_id_of,
)
from tests.native import SMALL_ENV, open_session, put

GRACEFUL = 20  # api/server.py GRACEFUL_SECONDS


def _stop(server) -> float:
    started = time.monotonic()
    server.stop(timeout=GRACEFUL + 15)
    return time.monotonic() - started


def _resume_and_check(server, url: str, data: bytes, acknowledged: int, sent: int) -> None:
    server.start()
    probe = StoreProbe(server.database_url)
    try:
        with server.client() as c:
            durable = tus_offset(c, url)
            assert acknowledged <= durable <= sent, (acknowledged, durable, sent)
            assert probe.assert_durable_prefix(upload_id_of(url), data) == durable
            r = tus_patch(c, url, durable, data[durable:])
            assert r.status_code == 204, r.text  # no lease left behind: no 423
            got = c.get(url)
            assert sha256_hex(got.content) == sha256_hex(data)
    finally:
        probe.close()


@pytest.mark.slow
def test_sigterm_during_a_streaming_patch(fresh_server) -> None:
    data = random_bytes(64 * MiB, seed=500)
    fresh_server.start()
    with fresh_server.client() as c:
        url = tus_create(c, len(data))
    progress = [0]
    outcome: list[object] = []

    def client() -> None:
        body = paced(data, 0, delay=0.008, progress=progress)
        with httpx.Client(timeout=60) as c:
            try:
                outcome.append(c.patch(url, content=body, headers=patch_headers(0)))
            except httpx.TransportError as exc:
                outcome.append(exc)

    with OffsetWatcher(url) as watcher:
        t = threading.Thread(target=client)
        t.start()
        time.sleep(1.5)
        took = _stop(fresh_server)
        t.join(30)
    assert not t.is_alive()
    assert took < GRACEFUL, f"shutdown took {took:.1f}s with a client sending at full speed"
    assert fresh_server.proc.returncode in (0, -15)  # uvicorn re-raises SIGTERM
    (result,) = outcome
    if isinstance(result, httpx.Response):
        # cut cleanly: tus clients retry 5xx, then resume from HEAD
        assert result.status_code == 503, result.text
    _resume_and_check(fresh_server, url, data, watcher.highest, progress[0])


def _expect_prompt(took: float, status: int | None) -> None:
    """Data safety is asserted before this: a SIGTERM also cuts a slow or silent client at
    once (503 or a closed connection), instead of holding shutdown for its grace period."""
    assert took < 5, f"shutdown took {took:.1f}s"
    assert status in (None, 503), status


@pytest.mark.slow
def test_sigterm_with_a_slow_client(fresh_server) -> None:
    """A slow but live client (80 KiB/s): what was acknowledged is kept, the upload
    completes after the restart; (bug) the PATCH should be cut within seconds with a 503."""
    data = random_bytes(8 * MiB, seed=501)
    fresh_server.start()
    with fresh_server.client() as c:
        url = tus_create(c, len(data))
    writer = TricklingPatch(
        fresh_server.url, url, 0, data, first=3 * MiB, step=16 * KiB, interval=0.2
    ).start()
    status = None
    try:
        with OffsetWatcher(url) as watcher:
            time.sleep(1.5)
            took = _stop(fresh_server)
        assert took < GRACEFUL + 5
        assert fresh_server.proc.returncode in (0, -15)  # uvicorn re-raises SIGTERM
        try:
            status, _ = writer.response(timeout=5)
        except (OSError, ConnectionError):
            pass  # cut: also clean
        sent = writer.sent
    finally:
        writer.close()
    _resume_and_check(fresh_server, url, data, watcher.highest, sent)
    _expect_prompt(took, status)


@pytest.mark.slow
def test_sigterm_with_a_silent_client(fresh_server) -> None:
    """A client gone quiet mid-PATCH: the bytes acknowledged before are kept and the upload
    completes after the restart; (bug) the shutdown waits the whole graceful period."""
    data = random_bytes(6 * MiB, seed=502)
    fresh_server.start()
    with fresh_server.client() as c:
        url = tus_create(c, len(data))
    writer = TricklingPatch(fresh_server.url, url, 0, data, first=2 * MiB + 5).start()
    status = None
    try:
        time.sleep(1.2)
        writer.silence()
        time.sleep(0.5)
        sent = writer.sent
        with fresh_server.client() as c:
            acknowledged = tus_offset(c, url)
        took = _stop(fresh_server)
        assert took < GRACEFUL + 5
        assert fresh_server.proc.returncode in (0, -15)  # uvicorn re-raises SIGTERM
        try:
            status, _ = writer.response(timeout=5)
        except (OSError, ConnectionError):
            pass
    finally:
        writer.close()
    _resume_and_check(fresh_server, url, data, acknowledged, sent)
    _expect_prompt(took, status)


def test_sigterm_when_idle_is_quick_and_clean(fresh_server) -> None:
    fresh_server.start()
    with fresh_server.client() as c:
        url = tus_create(c, 10)
        assert tus_patch(c, url, 0, b"01234").status_code == 204
    assert _stop(fresh_server) < 5
    assert fresh_server.proc.returncode in (0, -15)  # uvicorn re-raises SIGTERM
    fresh_server.start()
    with fresh_server.client() as c:
        assert tus_offset(c, url) == 5
        assert tus_patch(c, url, 5, b"56789").status_code == 204
        assert c.get(url).content == b"0123456789"


def test_sigterm_with_a_silent_native_chunk_body(fresh_server) -> None:
    """A native chunk PUT whose client went quiet mid-body: its read was not told of the
    shutdown, so the server waited the whole graceful period and then answered uvicorn's
    plain-text 500. It must be cut at once with a 503 the client retries (nothing of the
    chunk was stored; the session takes it again after the restart)."""
    fresh_server.env_extra.update(SMALL_ENV)
    fresh_server.start()
    body = random_bytes(200 * KiB, seed=503)
    cid = sha256_hex(body)
    with fresh_server.client() as c:
        uid = open_session(c, len(body))
    head = (
        f"PUT /v1/uploads/{uid}/chunks/{cid} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", fresh_server.port), timeout=30) as s:
        s.sendall(head.encode() + body[: 100 * KiB])
        time.sleep(0.5)
        took = _stop(fresh_server)
        answer = s.recv(4096)
    assert took < 5, f"shutdown waited {took:.1f}s on a silent chunk body"
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b'"error":"storage_unavailable"' in answer and b"shutting down" in answer
    fresh_server.start()
    with fresh_server.client() as c:
        assert put(c, uid, cid, body).status_code == 201


def _stalled_download(server, data: bytes) -> socket.socket:
    """A GET of an object whose client stops reading after the head: it holds the drain."""
    with server.client() as c:
        url = tus_create(c, len(data))
        assert tus_patch(c, url, 0, data).status_code == 204
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    s.connect(("127.0.0.1", server.port))
    s.sendall(f"GET {httpx.URL(url).raw_path.decode()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert s.recv(64 * KiB).startswith(b"HTTP/1.1 200")
    return s


def test_sigterm_stops_the_upkeep_at_once_not_after_the_drain(fresh_server) -> None:
    """The upkeep was told to stop only once the drain was over: while a slow download held
    the shutdown (up to its 20 s), upkeep rounds went on starting (a scrub pass a second
    here), and the round under way then had its own 10 s on top. It must stop at the signal."""
    fresh_server.env_extra["EDGESTORE_MAINTENANCE_INTERVAL_SECONDS"] = "1"
    fresh_server.start()
    with _stalled_download(fresh_server, random_bytes(32 * MiB, seed=504)):
        deadline = time.monotonic() + 10
        while fresh_server.log().count("scrub: pass") < 2:  # the upkeep is running
            assert time.monotonic() < deadline
            time.sleep(0.1)
        fresh_server.proc.send_signal(signal.SIGTERM)
        time.sleep(3.5)  # the download holds the drain; 3 upkeep intervals pass
        assert fresh_server.proc.poll() is None
        after = fresh_server.log().split("Shutting down", 1)[1]
    # closed: the drain ends, the server exits
    assert fresh_server.proc.wait(GRACEFUL) in (0, -15)
    assert after.count("scrub: pass") <= 1, after  # at most the round under way at the signal


def test_a_second_sigint_quits_at_once_a_second_sigterm_does_not(fresh_server) -> None:
    """docs/operations.md: a second SIGTERM changes nothing (the drain goes on); a second
    Ctrl-C (SIGINT) quits at once, as safe as kill -9."""
    fresh_server.start()
    with _stalled_download(fresh_server, random_bytes(32 * MiB, seed=505)):
        fresh_server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        fresh_server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert fresh_server.proc.poll() is None  # still draining the download
        started = time.monotonic()
        fresh_server.proc.send_signal(signal.SIGINT)
        fresh_server.proc.wait(GRACEFUL)
        assert time.monotonic() - started < 3
