"""A rack for multi-node tests: several `edgestore serve` processes on one PostgreSQL database
and one home (data dirs), behind a round-robin TCP proxy, as a load balancer without
stickiness would put them.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.server import ServerProcess


@dataclass
class RoundRobinProxy:
    """Each new connection goes to the next node; a node that refuses the connection (dead)
    is skipped, as nginx's `proxy_next_upstream error` does. Runs on its own event loop."""

    nodes: Sequence[ServerProcess]
    port: int = 0
    routes: list[int] = field(default_factory=list)  # the node of each connection, in order
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RoundRobinProxy:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._server.close()
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="rack-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.nodes)):
            index = next(self._turn) % len(self.nodes)
            try:
                upstream = await asyncio.open_connection("127.0.0.1", self.nodes[index].port)
                self.routes.append(index)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error on either side; a reset on one side resets the other (as a
    TCP load balancer passes on a node's death), a clean EOF is passed on as one."""
    try:
        while data := await src.read(1 << 16):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, asyncio.IncompleteReadError):
        transport = dst.transport
        transport.abort()
    except RuntimeError:  # the other side was closed meanwhile
        dst.transport.abort()
