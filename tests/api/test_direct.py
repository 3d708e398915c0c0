"""Bodies read straight into the engine's buffer (api/direct.py), on a real socket and a real
uvicorn protocol: every byte arrives once and in order, the connection's next request is
parsed as usual, and a client that leaves or stalls interrupts the reader."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvicorn
from uvicorn.server import ServerState

from edgestore.api import direct
from edgestore.api.protocol import BoundedHttpToolsProtocol
from edgestore.errors import TransferInterrupted
from tests.helpers import random_bytes, tus_create, tus_patch

KiB = 1024
MiB = 1024 * KiB


class Reads:
    """The engine's side: readinto with buffers of varying sizes, as StreamChunker.fill."""

    def __init__(self, sizes: list[int], stop_after: int | None = None) -> None:
        self.sizes = sizes
        self.stop_after = stop_after

    def __call__(self, src: direct.DirectBody | None, interrupt: Callable[[str], None]) -> bytes:
        assert src is not None
        out = bytearray()
        i = 0
        while self.stop_after is None or len(out) < self.stop_after:
            buf = memoryview(bytearray(self.sizes[i % len(self.sizes)]))
            i += 1
            n = src.readinto(buf)
            if not n:
                break
            out += buf[:n]
        return bytes(out)


class Meter:
    """A bandwidth meter's `spend`: records each charge and how many body bytes had landed
    when it began and when it returned (none may land while it waits)."""

    def __init__(self, step: int, wait: Callable[[int], float]) -> None:
        self.step = step
        self.wait = wait
        self.body: direct.DirectBody | None = None
        self.charges: list[tuple[int, int, int]] = []

    async def spend(self, nbytes: int) -> None:
        assert self.body is not None
        before = self.body.received
        await asyncio.sleep(self.wait(len(self.charges)))
        self.charges.append((nbytes, before, self.body.received))


def _serve(
    work: Reads,
    client: Callable[[socket.socket], None],
    meter: Meter | None = None,
    keep_alive: float = 5,
) -> list[dict]:
    """Serve one connection with an app that reads its body the direct way when it can;
    `client` talks to it over a real socket pair. Returns what each request saw."""
    seen: list[dict] = []
    pool = ThreadPoolExecutor(2)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if meter is not None:
            scope = direct.metered(scope, meter.spend, meter.step)
        body = direct.claim(scope)
        if meter is not None:
            meter.body = body
        record: dict = {"path": scope["path"], "direct": body is not None}
        seen.append(record)
        try:
            if body is not None:
                data = await direct.run_with_direct_body(
                    pool,
                    body,
                    work,
                    idle_timeout=1.0,
                    on_received=lambda n: record.__setitem__("received", n),
                )
            else:
                data = b""
                while True:
                    message = await receive()
                    data += message.get("body", b"")
                    if not message.get("more_body"):
                        break
        except TransferInterrupted as exc:
            record["interrupted"] = str(exc)
            return
        record["data"] = data
        answer = hashlib.sha256(data).hexdigest().encode()
        headers = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def main() -> None:
        config = uvicorn.Config(
            app, http=BoundedHttpToolsProtocol, log_level="warning", timeout_keep_alive=keep_alive
        )
        config.load()
        proto = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: proto, ours)
        done = asyncio.Event()

        def run_client() -> None:
            try:
                client(theirs)
            finally:
                theirs.close()
                loop.call_soon_threadsafe(done.set)

        thread = threading.Thread(target=run_client)
        thread.start()
        await done.wait()
        await asyncio.sleep(0.05)  # let the app finish what the client's leaving started
        thread.join()
        proto.transport.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        pool.shutdown(wait=True)
    return seen


def _head(path: str, length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"PATCH {path} HTTP/1.1\r\nHost: t\r\n{size}{extra}\r\n".encode()


def _response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    if head.startswith(b"HTTP/1.1 100"):
        return 100, rest
    length = int(
        next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(
            b":"
        )[1]
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest[:length]


def _send_in_pieces(sock: socket.socket, data: bytes, seed: int) -> None:
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 1000, 64 * KiB, 700 * KiB, 3 * MiB])
        sock.sendall(data[pos : pos + step])
        pos += step
        if rng.random() < 0.2:
            time.sleep(0.002)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_byte_arrives_once_and_the_next_request_is_parsed(seed: int) -> None:
    """Head and body pieces of any size (the head's read brings body bytes along); then, on
    the same connection, a second request with a direct body and a third with none."""
    first = random.Random(seed).randbytes(9 * MiB + seed)
    second = random.Random(seed + 10).randbytes(300 * KiB)
    answers: list[tuple[int, bytes]] = []

    def client(sock: socket.socket) -> None:
        _send_in_pieces(sock, _head("/one", len(first)) + first, seed)
        answers.append(_response(sock))
        sock.sendall(_head("/two", len(second)) + second)
        answers.append(_response(sock))
        sock.sendall(_head("/three", 0))
        answers.append(_response(sock))

    seen = _serve(Reads([5 * MiB, 1, 100 * KiB, 8 * MiB + 3]), client)
    assert [s["path"] for s in seen] == ["/one", "/two", "/three"]
    assert seen[0]["direct"] and seen[0]["data"] == first and seen[0]["received"] == len(first)
    assert answers[0] == (200, hashlib.sha256(first).hexdigest().encode())
    assert seen[1]["data"] == second and answers[1][0] == 200
    assert not seen[2]["direct"] and seen[2]["data"] == b""  # nothing to read: the usual way


def test_expect_100_continue_is_answered_before_the_body() -> None:
    body = random.Random(4).randbytes(2 * MiB)
    answers: list[tuple[int, bytes]] = []

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/x", len(body), "Expect: 100-continue\r\n"))
        answers.append(_response(sock))  # the client waits for it, as curl does
        sock.sendall(body)
        answers.append(_response(sock))

    seen = _serve(Reads([4 * MiB]), client)
    assert answers[0][0] == 100
    assert seen[0]["direct"] and seen[0]["data"] == body and answers[1][0] == 200


def test_a_chunked_body_goes_the_usual_way() -> None:
    answers: list[tuple[int, bytes]] = []

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/c", None, "Transfer-Encoding: chunked\r\n"))
        sock.sendall(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        answers.append(_response(sock))

    seen = _serve(Reads([1 * MiB]), client)
    assert not seen[0]["direct"] and seen[0]["data"] == b"hello world"
    assert answers[0][0] == 200


def test_a_reader_that_stops_early_leaves_the_connection_usable() -> None:
    """The engine takes part of the body and answers: the rest is read and discarded, and
    the connection's next request is parsed from the right byte."""
    body = random.Random(5).randbytes(6 * MiB)
    answers: list[tuple[int, bytes]] = []

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/partial", len(body)))
        sender = threading.Thread(target=lambda: sock.sendall(body))
        sender.start()
        answers.append(_response(sock))  # answered before the client has sent it all
        sender.join()
        sock.sendall(_head("/next", 3) + b"abc")
        answers.append(_response(sock))

    seen = _serve(Reads([256 * KiB], stop_after=1 * MiB), client)
    assert seen[0]["data"] == body[: len(seen[0]["data"])] and len(seen[0]["data"]) >= MiB
    assert [s["path"] for s in seen] == ["/partial", "/next"]
    assert seen[1]["data"] == b"abc" and answers[1] == (
        200,
        hashlib.sha256(b"abc").hexdigest().encode(),
    )


def test_a_body_still_arriving_after_the_answer_is_not_an_idle_connection() -> None:
    """The engine answered early (a refusal, say) and the client goes on sending the body,
    slowly: the rest is discarded as it comes, and the connection stays usable. Body bytes
    read the direct way never reached uvicorn's data_received, so its keep-alive timer,
    started by the answer, was never stopped: the connection was closed under the client
    mid-body (BrokenPipeError, the next request never served)."""
    body = random.Random(13).randbytes(2 * MiB)
    answers: list[tuple[int, bytes]] = []

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/refused", len(body)) + body[:MiB])
        answers.append(_response(sock))
        for pos in range(MiB, len(body), 256 * KiB):
            time.sleep(0.4)  # 1.6 s in all, past the keep-alive timeout of 1 s
            sock.sendall(body[pos : pos + 256 * KiB])
        sock.sendall(_head("/next", 3) + b"abc")
        answers.append(_response(sock))

    seen = _serve(Reads([256 * KiB], stop_after=256 * KiB), client, keep_alive=1)
    assert [s["path"] for s in seen] == ["/refused", "/next"]
    assert seen[1]["data"] == b"abc" and answers[1][0] == 200


def test_a_connection_idle_after_a_body_answered_early_is_closed() -> None:
    """Once that body has ended, the connection idles: closed after the keep-alive timeout
    (the body's bytes stopped the timer the answer started; it must start again)."""
    body = random.Random(14).randbytes(MiB)
    closed: list[bool] = []

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/refused", len(body)) + body[: MiB // 2])
        _response(sock)
        time.sleep(0.1)
        sock.sendall(body[MiB // 2 :])
        sock.settimeout(3)
        closed.append(sock.recv(1) == b"")  # keep-alive timeout: 1 s

    _serve(Reads([64 * KiB], stop_after=64 * KiB), client, keep_alive=1)
    assert closed == [True]


def test_a_client_that_leaves_interrupts_the_reader_keeping_what_arrived() -> None:
    body = random.Random(6).randbytes(3 * MiB)

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/gone", 10 * MiB) + body)
        time.sleep(0.3)  # then the connection closes, 7 MiB short

    seen = _serve(Reads([8 * MiB]), client)
    assert seen[0]["direct"]
    assert seen[0]["interrupted"] == "client disconnected"


def test_a_client_that_goes_quiet_is_cut_off() -> None:
    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/quiet", 1 * MiB) + b"x" * 1000)
        time.sleep(2.5)  # idle_timeout is 1 s

    seen = _serve(Reads([1 * MiB]), client)
    assert seen[0]["interrupted"].startswith("no bytes from the client for")


def test_a_slow_body_is_handed_over_in_pieces_before_the_buffer_is_full() -> None:
    """A lent buffer goes back after GRANT_SECONDS with what it holds: the engine sees
    progress on a slow link instead of waiting for 8 MiB."""
    got: list[tuple[float, int]] = []
    started = time.monotonic()

    class Timed(Reads):
        def __call__(self, src, interrupt):
            out = bytearray()
            buf = memoryview(bytearray(8 * MiB))
            while n := src.readinto(buf):
                got.append((time.monotonic() - started, n))
                out += buf[:n]
            return bytes(out)

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/slow", 4000))
        for _ in range(4):
            sock.sendall(b"y" * 1000)
            time.sleep(direct.GRANT_SECONDS * 1.3)
        _response(sock)

    seen = _serve(Timed([8 * MiB]), client)
    assert seen[0]["data"] == b"y" * 4000
    assert len(got) >= 3, got  # not one read of 4000 bytes at the end


def test_a_pause_after_a_full_buffer_does_not_stop_reading() -> None:
    """A buffer filled at once, then the client pauses longer than GRANT_SECONDS: the timer
    of the buffer already handed back must leave the next one (lent, still empty) alone.
    It used to pause reading there, and the upload stalled until the idle timeout (seen with
    8 concurrent uploads, whose clients pause while the two cores are busy)."""
    body = random.Random(8).randbytes(3 * MiB)

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/pause", len(body)))
        time.sleep(0.1)  # claimed, and the first buffer lent
        sock.sendall(body[:MiB])  # fills it: handed back, the next one lent at once
        time.sleep(direct.GRANT_SECONDS + 0.3)  # past the first buffer's timer, within idle
        sock.sendall(body[MiB:])
        _response(sock)

    seen = _serve(Reads([MiB]), client)
    assert "interrupted" not in seen[0], seen[0]
    assert seen[0]["data"] == body


def test_an_engine_busy_longer_than_the_idle_timeout_is_not_a_quiet_client() -> None:
    """The idle clock runs while the engine waits for bytes, not while it stores them (a slow
    disk under many uploads): the whole body arrives, the engine pauses, nothing is cut."""
    body = random.Random(9).randbytes(3 * MiB)

    class Slow(Reads):
        def __call__(self, src, interrupt):
            out = bytearray()
            buf = memoryview(bytearray(MiB))
            rested = False
            while n := src.readinto(buf):
                out += buf[:n]
                if len(out) >= MiB and not rested:
                    rested = True
                    time.sleep(2.2)  # idle_timeout is 1 s, and its checks come every second
            return bytes(out)

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/busy", len(body)) + body)
        _response(sock)

    seen = _serve(Slow([MiB]), client)
    assert "interrupted" not in seen[0], seen[0]
    assert seen[0]["data"] == body


def test_a_metered_body_is_charged_in_full_and_not_read_while_a_charge_waits() -> None:
    """The bandwidth limit on the direct way: every byte is charged (in steps, the last one
    at the body's end), the loop reads nothing while a charge waits (so TCP slows the client
    down), and the answer comes after the last charge."""
    body = random.Random(10).randbytes(3 * MiB + 5)
    meter = Meter(256 * KiB, wait=lambda i: 0.02)
    answers: list[tuple[int, bytes]] = []

    def client(sock: socket.socket) -> None:
        _send_in_pieces(sock, _head("/metered", len(body)) + body, 10)
        answers.append(_response(sock))
        sock.sendall(_head("/after", 3) + b"abc")  # the connection goes on as usual
        answers.append(_response(sock))

    seen = _serve(Reads([MiB, 300 * KiB]), client, meter)
    assert seen[0]["direct"] and seen[0]["data"] == body
    assert sum(n for n, _, _ in meter.charges) == len(body)
    assert all(n <= meter.step for n, _, _ in meter.charges)
    assert all(before == after for _, before, after in meter.charges), meter.charges
    assert answers[0][0] == 200 and answers[1][0] == 200 and seen[1]["data"] == b"abc"


def test_a_charge_longer_than_the_idle_timeout_is_not_a_quiet_client() -> None:
    """The meter holding the body back (a client far over its rate) is not the client going
    quiet: the idle clock restarts when the charge passes."""
    body = random.Random(11).randbytes(2 * MiB)
    meter = Meter(MiB, wait=lambda i: 2.2 if i == 0 else 0.0)  # idle_timeout is 1 s

    def client(sock: socket.socket) -> None:
        sock.sendall(_head("/held", len(body)) + body)
        _response(sock)

    seen = _serve(Reads([512 * KiB]), client, meter)
    assert "interrupted" not in seen[0], seen[0]
    assert seen[0]["data"] == body
    assert sum(n for n, _, _ in meter.charges) == len(body)


def test_a_tus_patch_to_the_server_is_read_straight_into_the_engine(server) -> None:
    """The real server: a PATCH with a Content-Length takes the direct way (counted in
    /metrics); a chunked one the queued way; both store every byte."""
    data = random_bytes(5 * MiB + 7, seed=12)

    def count(c, path: str) -> float:
        for line in c.get("/metrics").text.splitlines():
            if line.startswith(f'edgestore_upload_bodies_total{{path="{path}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    with server.client() as c:
        before = count(c, "direct"), count(c, "queued")
        url = tus_create(c, 2 * len(data))
        assert tus_patch(c, url, 0, data).status_code == 204
        chunked = tus_patch(c, url, len(data), iter([data[:MiB], data[MiB:]]))
        assert chunked.status_code == 204, chunked.text
        assert (count(c, "direct"), count(c, "queued")) == (before[0] + 1, before[1] + 1)
        got = c.get(url)
    assert got.content == data + data
