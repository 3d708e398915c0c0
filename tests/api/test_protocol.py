"""The server's HTTP protocol: large reads from one shared buffer, split among uploads."""

from __future__ import annotations

import asyncio
import threading

from edgestore.api import protocol
from edgestore.api.protocol import (
    FEW_RECEIVING,
    MIN_READ,
    READ_BUFFER,
    BoundedHttpToolsProtocol,
    _LoopReads,
)


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
