"""A TCP proxy on loopback that behaves like a link that drops: each connection is reset
after a budget of bytes (client to server, server to client, or both), wherever in a request
or an answer that falls. Unlike tests/faults.py (whole HTTP requests), it cuts mid-body,
mid-header and mid-answer, as a real link does. A reset discards what the peer's kernel holds
unread; `linger` waits before it, as a real drop does (the bytes that reached the far host are
read there; only those still on the way are lost). With `stall`, a connection whose budget runs
out goes silent instead (nothing forwarded either way, nothing closed): a peer that stops
reading, a laptop that suspends, a Wi-Fi access point gone while the TCP state lingers.

Budgets are per connection, so whether one runs out depends on how the client spreads its
requests over connections; `cut_at` instead cuts at chosen bytes of all the traffic, on
whichever connection carries them, for a test that must see a cut however they fall.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass
class FlakyLink:
    """Forwards 127.0.0.1:<port> to `upstream_port`; connection n may carry `up[n]` bytes to
    the server and `down[n]` back (None: unlimited) before both sides are reset (with
    `stall`: before both directions go silent, the connection left open)."""

    upstream_port: int
    up: Iterable[int | None] = field(default_factory=lambda: itertools.repeat(None))
    down: Iterable[int | None] = field(default_factory=lambda: itertools.repeat(None))
    stall: bool = False
    linger: float = 0.0  # seconds between a budget's last byte and the reset (see below)
    cuts: int = 0  # connections reset (or stalled) so far

    def __post_init__(self) -> None:
        self._up: Iterator[int | None] = iter(self.up)
        self._down: Iterator[int | None] = iter(self.down)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()
        self._carried = {"up": 0, "down": 0}  # bytes forwarded since `cut_at`, all connections
        self._marks: dict[str, deque[int]] = {"up": deque(), "down": deque()}
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_budgets(self, up: Iterable[int | None], down: Iterable[int | None]) -> None:
        with self._lock:
            self._up, self._down = iter(up), iter(down)

    def cut_at(self, up: Iterable[int] = (), down: Iterable[int] = ()) -> None:
        """Cut (with `stall`: silence) the connection that carries byte n of the traffic to the
        server (`up`) or back (`down`), counted from this call over every connection, n in
        the marks given; those bytes and the rest of that connection are never forwarded.
        Per-connection budgets still apply beside the marks."""
        marks = {"up": deque(sorted(up)), "down": deque(sorted(down))}
        done = threading.Event()

        def apply() -> None:  # on the loop, where the pipes count: never half set
            self._carried = {"up": 0, "down": 0}
            self._marks = marks
            done.set()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(apply)
            done.wait(10)
        else:
            apply()

    def _allowance(self, way: str, budget: int | None) -> int | None:
        """The bytes a connection with `budget` left may forward before its cut, None: any."""
        marks = self._marks[way]
        if not marks:
            return budget
        to_mark = max(0, marks[0] - self._carried[way])
        return to_mark if budget is None else min(budget, to_mark)

    def _forwarded(self, way: str, n: int) -> None:
        self._carried[way] += n
        marks = self._marks[way]
        if marks and self._carried[way] >= marks[0]:
            marks.popleft()

    def start(self) -> FlakyLink:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        def cancel_all() -> None:  # silent connections wait forever: end them quietly
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_soon(self._loop.stop)

        self._loop.call_soon_threadsafe(cancel_all)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, reuse_address=True)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        with self._lock:
            up, down = next(self._up, None), next(self._down, None)
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(c_writer)
            return
        done = asyncio.Event()
        silent = asyncio.Event()  # stall mode: the budget ran out, nothing moves any more

        async def pipe(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, budget: int | None, way: str
        ) -> None:
            try:
                while True:
                    data = await r.read(64 * 1024)
                    if not data:
                        break
                    if silent.is_set():
                        await asyncio.Event().wait()  # until the proxy stops
                    # counted before any await: the pipes of all connections share the marks
                    allowed = self._allowance(way, budget)
                    self._forwarded(way, len(data) if allowed is None else min(allowed, len(data)))
                    if allowed is not None and len(data) >= allowed:
                        w.write(data[:allowed])
                        await w.drain()
                        if self.linger:
                            await asyncio.sleep(self.linger)
                        self.cuts += 1
                        if self.stall:
                            silent.set()
                            await asyncio.Event().wait()
                        break
                    if budget is not None:
                        budget -= len(data)
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            done.set()

        tasks = [
            asyncio.ensure_future(pipe(c_reader, s_writer, up, "up")),
            asyncio.ensure_future(pipe(s_reader, c_writer, down, "down")),
        ]
        await done.wait()
        _reset(c_writer)
        _reset(s_writer)
        for t in tasks:
            t.cancel()


def _reset(w: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a dropped link or a middlebox does."""
    sock = w.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    w.transport.abort()
