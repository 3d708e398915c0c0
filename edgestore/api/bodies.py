"""Streaming a request body from the event loop into an engine call on a worker thread.

The event loop receives the body (~64 KiB pieces) and hands them over in batches of
~256 KiB (a list) through a small bounded queue; the engine consumes them on its own
thread, so the loop never hashes, compresses, codes or fsyncs. Back-pressure: when the
engine falls behind, the loop stops reading the socket. A client that disconnects (or goes
silent) turns into TransferInterrupted on the engine side, which keeps the durable prefix.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from starlette.requests import ClientDisconnect

from edgestore.api.logs import submit_in_context
from edgestore.errors import TooLarge, TransferInterrupted

T = TypeVar("T")

BLOCK = 256 * 1024
QUEUE_BLOCKS = 2
_END = object()


def idle_reason(idle_timeout: float) -> str:
    """Why an upload whose client went quiet was cut (both ways a body reaches the engine)."""
    return f"no bytes from the client for {idle_timeout:.0f}s"


class _Interrupt:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Refuse:
    """The body broke a limit: the engine keeps nothing more of this request."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class BodyBridge:
    """A bounded, one-way channel of byte blocks from the event loop to one worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = QUEUE_BLOCKS) -> None:
        self._loop = loop
        self._queue: queue.Queue[object] = queue.Queue()
        self._space = asyncio.Semaphore(depth)
        self.received = 0
        self.consumer_finished = False
        self._idle = False
        self._last_byte = 0.0
        self._waiting_for_room = False  # the engine is behind: the loop reads nothing
        self._pump_task: asyncio.Task[object] | None = None

    # --- worker-thread side --------------------------------------------------------------------

    def blocks(self) -> Iterator[bytes]:
        """What the engine iterates; raises TransferInterrupted if the sender went away."""
        while True:
            item = self._queue.get()
            self._loop.call_soon_threadsafe(self._space.release)
            if item is _END:
                return
            if isinstance(item, _Interrupt):
                raise TransferInterrupted(item.reason)
            if isinstance(item, _Refuse):
                raise item.error
            assert isinstance(item, list)
            # One ~256 KiB block per batch: one memcpy here saves the engine a trip through its
            # loop per 64 KiB piece.
            yield item[0] if len(item) == 1 else b"".join(item)

    # --- event-loop side -----------------------------------------------------------------------

    async def _put(self, item: object, consumer: asyncio.Future[object]) -> bool:
        """Queue an item once there is room; False if the consumer has already finished."""
        if consumer.done():
            return False
        # While the engine is behind, the loop reads nothing and TCP stops the client: its
        # silence then is the server's doing, and the idle clock waits with it.
        self._waiting_for_room = True
        try:
            acquire = asyncio.ensure_future(self._space.acquire())
            done, _ = await asyncio.wait({acquire, consumer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting_for_room = False
            self._last_byte = self._loop.time()
        if acquire not in done:
            acquire.cancel()
            return False
        self._queue.put_nowait(item)
        return True

    def _keep(self, pending: list[bytes]) -> None:
        """Hand over the pieces of a batch not yet queued before the body is cut short: an
        interrupted upload keeps every byte that arrived (without waiting for room: at most
        one batch more)."""
        if pending:
            self._queue.put_nowait(pending)

    def interrupt_now(self, reason: str) -> None:
        """Wake the consumer with an interruption without waiting for queue space.

        Thread-safe: the engine calls it (through Appender.stop) when a newer request takes
        the upload over or the server shuts down, even while no byte is arriving.
        """
        self._queue.put_nowait(_Interrupt(reason))

    async def pump(
        self,
        body: AsyncIterator[bytes],
        consumer: asyncio.Future[object],
        *,
        limit: int | None = None,
        idle_timeout: float = 60.0,
    ) -> None:
        """Feed the body to the consumer until it ends, the client leaves or the consumer stops.

        Runs as its own task, so an idle client can be cut off without a timer per piece.

        `limit`: more bytes than this is refused (TooLarge) before they reach the engine.
        """
        pending: list[bytes] = []
        pending_size = 0
        loop = asyncio.get_running_loop()
        self._last_byte = loop.time()
        watchdog = asyncio.ensure_future(self._watch_idle(idle_timeout))
        try:
            async for piece in body:
                if not piece:
                    continue
                self._last_byte = loop.time()
                self.received += len(piece)
                if limit is not None and self.received > limit:
                    error = TooLarge(
                        f"request body exceeds the {limit} bytes this upload can still take"
                    )
                    self._queue.put_nowait(_Refuse(error))
                    raise error
                pending.append(piece)
                pending_size += len(piece)
                if pending_size >= BLOCK:
                    if not await self._put(pending, consumer):
                        return
                    pending, pending_size = [], 0
            if pending:
                if not await self._put(pending, consumer):
                    return
                pending = []
            await self._put(_END, consumer)
        except ClientDisconnect:
            self._keep(pending)
            self.interrupt_now("client disconnected")
        except TransferInterrupted as exc:  # the body was cut on purpose (api/revocation.py)
            self._keep(pending)
            self.interrupt_now(exc.message)
        except TooLarge:
            raise  # the engine was told (_Refuse)
        except Exception as exc:  # a bug below: the engine must not wait for the next block
            self._keep(pending)
            self.interrupt_now(f"the request body could not be read ({type(exc).__name__})")
            raise
        except asyncio.CancelledError:
            if self.consumer_finished:  # the engine stopped first (taken over, shut down)
                return
            self._keep(pending)
            if self._idle:
                self.interrupt_now(idle_reason(idle_timeout))
                return
            self.interrupt_now("server shutting down")  # keep what arrived
            raise
        finally:
            watchdog.cancel()

    async def _watch_idle(self, idle_timeout: float) -> None:
        """Cancel the pump once the client has sent nothing for `idle_timeout` seconds while
        the loop was reading (not while the engine was behind).

        One timer per request instead of one per body piece (wait_for per 64 KiB piece cost
        more CPU than the rest of the receive path).
        """
        loop = asyncio.get_running_loop()
        step = min(idle_timeout, 5.0)
        while True:
            await asyncio.sleep(step)
            if self._waiting_for_room:
                continue
            if loop.time() - self._last_byte >= idle_timeout and self._pump_task is not None:
                self._idle = True
                self._pump_task.cancel()
                return


async def run_with_body(
    executor: ThreadPoolExecutor,
    body: AsyncIterator[bytes],
    work: Callable[[Iterator[bytes], Callable[[str], None]], T],
    *,
    limit: int | None = None,
    idle_timeout: float = 60.0,
    on_received: Callable[[int], None],
) -> T:
    """Run work(blocks, interrupt) on a worker thread while streaming the body into it.

    `interrupt(reason)` lets the engine end the stream from any thread (the block iterator
    then raises TransferInterrupted), even while the client sends nothing; the body pump stops
    as soon as the work has finished.

    Returns the work's result. Whatever happens on the loop side (cancellation, oversize
    body), the worker is waited for, so it never outlives the request unseen.
    `on_received(n)`: told the body bytes received, however the request ends (an interrupted
    one keeps what arrived, and raises).
    """
    loop = asyncio.get_running_loop()
    bridge = BodyBridge(loop)
    fut: Future[T] = submit_in_context(executor, work, bridge.blocks(), bridge.interrupt_now)
    consumer = asyncio.wrap_future(fut)
    pump = asyncio.ensure_future(
        bridge.pump(body, consumer, limit=limit, idle_timeout=idle_timeout)
    )
    bridge._pump_task = pump

    def stop_pump(_done: object) -> None:  # runs on the event loop
        if not pump.done():
            bridge.consumer_finished = True
            pump.cancel()

    consumer.add_done_callback(stop_pump)
    try:
        try:
            await asyncio.shield(pump)
        except asyncio.CancelledError:
            if not pump.done():  # we were cancelled (shutdown), not the pump: cut it cleanly
                pump.cancel()
            await asyncio.shield(asyncio.wait({consumer}))
            raise
        except BaseException:
            await asyncio.shield(asyncio.wait({consumer}))
            if not consumer.cancelled():
                consumer.exception()  # retrieved: this error, raised on, is the answer
            raise
        return await consumer
    finally:
        on_received(bridge.received)
