"""The server's HTTP protocol: large reads from one shared buffer, split among uploads."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgestore.api import protocol
from edgestore.api.protocol import (
    FEW_RECEIVING,
    MIN_READ,
    READ_BUFFER,
    BoundedHttpToolsProtocol,
    _LoopReads,
)
from tests.helpers import TricklingPatch, patch_headers, tus_create
from tests.server import ServerProcess


def test_is_a_buffered_protocol():
    """asyncio's loop then reads into our buffer instead of its own 256 KiB one."""
    assert issubclass(BoundedHttpToolsProtocol, asyncio.BufferedProtocol)


def test_read_size_is_shared_among_requests_receiving():
    reads = _LoopReads()
    assert reads.size() == READ_BUFFER  # nobody receiving yet: a new upload reads it all
    reads.receiving = 1
    assert reads.size() == READ_BUFFER
    reads.receiving = FEW_RECEIVING  # a few share the whole buffer
    assert reads.size() == max(MIN_READ, READ_BUFFER // FEW_RECEIVING)
    reads.receiving = 8  # more share half of it: memory stays bounded
    assert reads.size() == max(MIN_READ, READ_BUFFER // 2 // 8)
    assert reads.size() * 8 <= READ_BUFFER // 2 or reads.size() == MIN_READ
    reads.receiving = 1000
    assert reads.size() == MIN_READ


def test_each_loop_thread_has_its_own_buffer():
    """Servers on two threads (two event loops) never read into the same bytes."""
    views: list[memoryview] = []
    t = threading.Thread(target=lambda: views.append(protocol._reads.view))
    t.start()
    t.join()
    assert views[0] is not protocol._reads.view
    assert len(views[0]) == READ_BUFFER


def _run_with_protocol(check) -> None:
    """Run check(protocol, received) against a protocol on a real socket pair, with an ASGI
    app that records what each receive() returns."""
    import socket

    import uvicorn
    from uvicorn.server import ServerState

    received: list[dict] = []

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            received.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        config = uvicorn.Config(app, http=BoundedHttpToolsProtocol, log_level="warning")
        config.load()
        proto = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
        ours, theirs = socket.socketpair()
        try:
            loop = asyncio.get_running_loop()
            await loop.connect_accepted_socket(lambda: proto, ours)
            await check(proto, received)
        finally:
            theirs.close()

    asyncio.run(main())


def test_a_body_piece_reaches_the_app_without_a_copy():
    """The parser's piece is handed on as the same object: no bytearray append, no bytes()."""

    async def check(proto, received):
        proto.data_received(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 600000\r\n\r\n")
        piece = bytes(range(256)) * 1000  # 256,000 bytes: what httptools would hand on
        proto.on_body(piece)
        assert proto.cycle.body is piece
        while not received:
            await asyncio.sleep(0.001)
        assert received[0]["body"] is piece and received[0]["more_body"]

        # Two pieces before the app asks: uvicorn's own path joins them, in order.
        second, third = b"b" * 100_000, b"c" * 244_000
        proto.on_body(second)
        proto.on_body(third)
        proto.on_message_complete()
        while len(received) < 2:
            await asyncio.sleep(0.001)
        assert received[1]["body"] == second + third and not received[1]["more_body"]

    _run_with_protocol(check)


def test_bodies_arrive_whole_through_the_parser():
    """A body sent in reads of odd sizes reaches the app byte for byte."""
    import random

    body = random.Random(7).randbytes(3 * 1024 * 1024 + 17)

    async def check(proto, received):
        head = f"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        data = head + body
        pos, rng = 0, random.Random(1)
        while pos < len(data):
            step = rng.choice([1, 100, 65_536, 300_000, 1_500_000])
            proto.data_received(data[pos : pos + step])
            pos += step
            if rng.random() < 0.5:
                await asyncio.sleep(0)  # sometimes the app takes a piece before the next
        while not received or received[-1].get("more_body"):
            await asyncio.sleep(0.001)
        assert b"".join(m["body"] for m in received) == body

    _run_with_protocol(check)


# --- slow clients (slowloris) against a real server ---------------------------------------------

HEAD_TIMEOUT = 2.0
SEND_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def slow_head_server(tmp_path_factory: pytest.TempPathFactory):
    """A real server whose request heads must arrive within HEAD_TIMEOUT seconds, and whose
    clients must take response bytes within SEND_TIMEOUT seconds."""
    base = tmp_path_factory.mktemp("head-timeout")
    proc = ServerProcess(
        home=base / "home",
        database_url=f"sqlite:///{base / 'meta.db'}",
        env_extra={
            "EDGESTORE_REQUEST_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
            "EDGESTORE_SEND_TIMEOUT": str(SEND_TIMEOUT),
            "EDGESTORE_MAX_CONNECTIONS_PER_CLIENT": "0",  # one address opens hundreds here
        },
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def _trickle(sock: socket.socket, data: bytes, interval: float, budget: float) -> float:
    """Send `data` a byte every `interval` seconds until refused or `budget` seconds pass;
    how long the server let it go on."""
    began = time.monotonic()
    try:
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
            time.sleep(interval)
            if time.monotonic() - began > budget:
                break
    except OSError:
        pass  # closed by the server: what we want
    return time.monotonic() - began


def _response(sock: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except OSError:
        pass
    return got


def test_a_head_that_trickles_in_is_cut_off_with_408(slow_head_server: ServerProcess) -> None:
    """Slowloris: a head sent a byte at a time never ended, and held its connection (and a
    file descriptor) for as long as the client liked. The whole head now has a deadline."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", slow_head_server.port), timeout=15) as sock:
        lasted = _trickle(sock, head, 0.2, budget=3 * HEAD_TIMEOUT)
        got = _response(sock)
    assert got.startswith(b"HTTP/1.1 408"), got[:100]
    assert b"connection: close" in got.lower()
    assert lasted < 2 * HEAD_TIMEOUT


def test_a_connection_that_sends_nothing_is_closed(slow_head_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", slow_head_server.port), timeout=15) as sock:
        began = time.monotonic()
        assert _response(sock) == b""  # closed without a word: there was no request
        assert time.monotonic() - began < 2 * HEAD_TIMEOUT


def test_the_next_head_on_a_kept_alive_connection_has_a_deadline(
    slow_head_server: ServerProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", slow_head_server.port), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"ok"}' not in first:  # the whole response, head and body
            first += sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(HEAD_TIMEOUT * 1.2)  # idle between requests: the keep-alive timeout's job
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
        lasted = _trickle(sock, head, 0.2, budget=3 * HEAD_TIMEOUT)
        got = _response(sock)
    assert got.startswith(b"HTTP/1.1 408"), got[:100]
    assert lasted < 2 * HEAD_TIMEOUT


def test_a_body_slower_than_the_head_deadline_is_not_cut(slow_head_server: ServerProcess) -> None:
    """The deadline is the head's: a body may take as long as it keeps coming."""
    data = b"b" * 64 * 1024
    with slow_head_server.client() as c:
        url = tus_create(c, len(data))
    patch = TricklingPatch(
        slow_head_server.url, url, 0, data, first=1024, step=1024, interval=0.05
    ).start()
    try:
        time.sleep(HEAD_TIMEOUT * 1.5)
        status, _ = patch.finish()
    finally:
        patch.close()
    assert status == 204


def _downloads_active(c: httpx.Client) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("edgestore_downloads_active "):
            return float(line.split()[1])
    raise AssertionError("no edgestore_downloads_active in /metrics")


def _stalled_download(server: ServerProcess, size: int) -> socket.socket:
    """A GET of a `size`-byte object by a client that reads its first bytes, then stops
    reading (its receive window fills up) but keeps the connection open."""
    data = b"d" * size
    with server.client() as c:
        url = tus_create(c, len(data))
        r = c.patch(url, content=data, headers=patch_headers(0))
        assert r.status_code == 204, r.text
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(15)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {httpx.URL(url).raw_path.decode()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    return sock


def test_a_client_that_stops_reading_a_download_is_cut_off(
    slow_head_server: ServerProcess,
) -> None:
    """A client that stopped reading mid-download (its window full, the connection open)
    held its download slot, the chunks read ahead for it and its socket forever: TCP never
    gives up on a peer that acknowledges a zero window. Past SEND_TIMEOUT without taking a
    byte, the connection is now closed and all of it given back."""
    with slow_head_server.client() as c, _stalled_download(slow_head_server, 24 << 20) as sock:
        assert _downloads_active(c) == 1
        deadline = time.monotonic() + 3 * SEND_TIMEOUT + 2
        while _downloads_active(c) != 0:
            assert time.monotonic() < deadline, "the stalled download still holds its slot"
            time.sleep(0.1)
        # The connection is gone too: what the socket holds, then its end (or a reset).
        received = 0
        with pytest.raises((ConnectionResetError, EOFError)):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
            raise EOFError
        assert received < 24 << 20
    assert "took no response bytes" in slow_head_server.log()


def test_a_download_read_slowly_is_not_cut_off(slow_head_server: ServerProcess) -> None:
    """The deadline is for a client that takes nothing: one reading slowly goes on."""
    logged = len(slow_head_server.log())
    with slow_head_server.client() as c, _stalled_download(slow_head_server, 24 << 20) as sock:
        began = time.monotonic()
        while time.monotonic() - began < 2.5 * SEND_TIMEOUT:
            assert sock.recv(16 * 1024)  # 16 KiB every 0.4 s: 40 KB/s
            time.sleep(0.4)
        assert _downloads_active(c) == 1  # still being sent
    assert "took no response bytes" not in slow_head_server.log()[logged:]


def test_clients_are_served_while_hundreds_of_slow_heads_are_open(
    slow_head_server: ServerProcess,
) -> None:
    """500 connections trickling heads cost the server nothing but their sockets, and go
    away at the deadline."""
    socks = []
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", slow_head_server.port), timeout=15)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        with slow_head_server.client() as c:
            assert c.get("/healthz").status_code == 200
        time.sleep(HEAD_TIMEOUT + 1.5)
        for sock in socks:
            assert _response(sock).startswith(b"HTTP/1.1 408")
    finally:
        for sock in socks:
            sock.close()


def test_running_out_of_file_descriptors_neither_spins_nor_breaks_uploads(
    tmp_path: Path,
) -> None:
    """More connections than the process may open files (`ulimit -n`): asyncio's accept loop
    logged a traceback for every attempt, tens of thousands a second (46 MB of log in 10 s,
    one core busy), and the uploads in progress could no longer open their files. Connections
    past what the node can hold are now closed as they come, and an upload already running
    finishes."""
    server = ServerProcess(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        env_extra={"EDGESTORE_REQUEST_HEAD_TIMEOUT": "60"},
        open_files=256,
    ).start()
    socks: list[socket.socket] = []
    try:
        data = b"u" * 256 * 1024
        with server.client() as c:
            url = tus_create(c, len(data))
        patch = TricklingPatch(server.url, url, 0, data, first=1024, step=1024).start()
        try:
            for _ in range(400):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                socks.append(sock)
            time.sleep(3)
            status, _ = patch.finish()
        finally:
            patch.close()
        assert status == 204
        assert server.log().count("out of system resource") < 10
    finally:
        for sock in socks:
            sock.close()
        server.stop()
    with server.start().client() as c:  # what it stored is whole
        assert c.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["upload-offset"] == str(
            len(data)
        )
    server.stop()


def _open_slow_heads(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            pass  # already closed by the server
        socks.append(sock)
    return socks


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(64) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset


def test_one_address_cannot_take_all_connections(tmp_path: Path) -> None:
    """Slowloris from one address: its connections past max_connections_per_client are
    closed on arrival, and another address is served meanwhile."""
    server = ServerProcess(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        env_extra={"EDGESTORE_MAX_CONNECTIONS_PER_CLIENT": "20"},
    ).start()
    socks: list[socket.socket] = []
    try:
        socks = _open_slow_heads(server.port, 30)
        time.sleep(0.5)
        closed = [_closed_by_server(sock) for sock in socks]
        assert closed.count(True) == 10, closed
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(base_url=server.url, transport=other, timeout=10) as c:
            assert c.get("/healthz").status_code == 200
        for sock in socks:
            sock.close()
        time.sleep(0.5)  # its connections gone, the address is served again
        with server.client() as c:
            assert c.get("/healthz").status_code == 200
    finally:
        for sock in socks:
            sock.close()
        server.stop()


def test_trusted_proxies_are_not_held_to_the_per_client_cap(tmp_path: Path) -> None:
    """Behind a proxy every connection comes from it: the proxy limits its clients."""
    server = ServerProcess(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        env_extra={
            "EDGESTORE_MAX_CONNECTIONS_PER_CLIENT": "5",
            "EDGESTORE_TRUSTED_PROXIES": "127.0.0.1",
        },
    ).start()
    socks: list[socket.socket] = []
    try:
        socks = _open_slow_heads(server.port, 10)
        time.sleep(0.5)
        assert not any(_closed_by_server(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
        server.stop()
