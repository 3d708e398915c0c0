"""An upload's body read by the event loop straight into the engine's chunker buffer.

The usual way (api/bodies.py) copies every byte twice on its way in: httptools copies each
body piece out of the loop's read buffer into a bytes object, and the engine copies that into
its chunker's buffer. Here the engine lends the free room of its chunker buffer (a `readinto`
call, see StreamChunker.fill) and the loop's socket reads land there: the kernel's copy is
the only one. The loop hands a lent region back when it is full, the body has ended, or it
has held bytes for GRANT_SECONDS (so a slow link still shows progress), and pauses reading
while the engine holds no region (back-pressure, as before).

Only a body of known length (Content-Length) is read this way, once the request's route has
claimed it (`claim(scope)`); the protocol (api/protocol.py) stops feeding the HTTP parser for
those bytes and gives it a fresh parser when the body has ended. A middleware that meters
body bytes (the bandwidth limit) attaches its meter with `metered(scope, spend, step)`: the
loop charges what lands and stops reading while a charge waits, so TCP slows the client
down as on the usual way. One that must see the bytes themselves takes the claim away with
`disallow(scope)`, and the body goes the usual way.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from starlette.types import Scope

from edgestore.api.bodies import idle_reason
from edgestore.api.logs import submit_in_context
from edgestore.buffers import copy_into
from edgestore.errors import TransferInterrupted
from edgestore.types import Readable

T = TypeVar("T")

EXTENSION = "edgestore.direct_body"
GRANT_SECONDS = 0.5


class _Reader(Protocol):
    """What a DirectBody needs of the connection's protocol (on the event loop)."""

    loop: asyncio.AbstractEventLoop

    def direct_resume(self) -> None: ...
    def direct_pause(self) -> None: ...


class DirectBody:
    """One request body: the engine's thread reads it (`readinto`), the event loop fills it.

    Loop side (`room`, `landed`, `fail`, `finish`) runs on the event loop only; `readinto`
    and `interrupt` on any thread. `_cond` guards what both sides touch.
    """

    def __init__(self, reader: _Reader, left: int, pending: bytes) -> None:
        self._reader = reader
        self._loop = reader.loop
        self._cond = threading.Condition()
        self.left = left  # body bytes still to come from the socket (changed under _cond)
        self.received = len(pending)
        self.last_byte = self._loop.time()
        self._overflow: deque[memoryview] = deque([memoryview(pending)] if pending else [])
        self._grant: memoryview | None = None  # the engine's lent region, while it waits
        self._filled = 0
        self._grant_id = 0  # numbers the grants: tells a late timer from the current grant
        self._handed_back = False
        self._error: BaseException | None = None
        self._finished = False  # the engine is done: what still arrives is discarded
        self._into_grant = False  # the last room() was part of the grant
        # The bandwidth meter (loop side only): bytes landed but not yet charged, and the
        # charge under way, during which the loop reads nothing.
        self._spend: Callable[[int], Awaitable[None]] | None = None
        self._step = 0
        self._unpaid = 0
        self._paying: asyncio.Task[None] | None = None

    def meter(self, spend: Callable[[int], Awaitable[None]], step: int) -> None:
        """Charge the body's bytes to `spend` as they land, `step` at a time (loop side,
        before the engine's first read). `spend` returns once the bytes may pass."""
        self._spend, self._step = spend, max(1, step)
        self._charge(self.received)  # what came with the request's head

    # --- engine side (any thread) ---------------------------------------------------------------

    def readinto(self, buffer: memoryview, /) -> int:
        """Lend `buffer` to the loop until bytes land in it; 0 once the body has ended.

        Raises TransferInterrupted if the client left, went quiet, or the append was
        stopped; bytes that landed before that are returned first.
        """
        with self._cond:
            if self._overflow:
                return self._take_overflow(buffer)
            if self.left == 0:  # every byte arrived: the end, whatever was asked since
                return 0
            if self._error is not None:
                raise self._error
            self._grant, self._filled, self._handed_back = buffer, 0, False
            self._grant_id += 1
            # The idle clock runs while the engine waits for the client, not while it works.
            self.last_byte = self._loop.time()
        self._loop.call_soon_threadsafe(self._resume_for_grant)
        with self._cond:
            while not self._handed_back and self._error is None and self.left:
                self._cond.wait()
            n, self._grant = self._filled, None
            if n == 0 and self._error is not None:
                raise self._error
            return n

    def interrupt(self, reason: str) -> None:
        """Stop the append (taken over, shutting down); thread-safe."""
        error = TransferInterrupted(reason)
        try:
            self._loop.call_soon_threadsafe(self.fail, error)
        except RuntimeError:  # the loop is closed: nothing reads into the buffer any more
            with self._cond:
                self._error = self._error or error
                self._cond.notify_all()

    def _take_overflow(self, buffer: memoryview) -> int:
        n = 0
        while self._overflow and n < len(buffer):
            piece = self._overflow[0]
            take = min(len(piece), len(buffer) - n)
            copy_into(buffer, n, piece[:take])
            n += take
            if take == len(piece):
                self._overflow.popleft()
            else:
                self._overflow[0] = piece[take:]
        return n

    # --- loop side ------------------------------------------------------------------------------

    def room(self, spare: memoryview) -> memoryview:
        """Where the next socket read goes: the lent region, else `spare` (copied after)."""
        with self._cond:
            grant = self._grant
            if grant is not None and not self._handed_back and self._error is None:
                self._into_grant = True
                return grant[
                    self._filled : self._filled + min(len(grant) - self._filled, self.left)
                ]
        self._into_grant = False
        return spare[: min(len(spare), self.left)]

    def landed(self, data: memoryview) -> bool:
        """`data` (the room's first bytes) was read; True when the body has ended."""
        n = len(data)
        self.last_byte = self._loop.time()
        with self._cond:
            self.left -= n
            self.received += n
            discarded = self._finished or self._error is not None
            if discarded:
                pass  # the engine takes no more
            elif self._into_grant:
                if self._filled == 0:
                    self._first_byte()
                self._filled += n
            else:
                self._overflow.append(memoryview(bytes(data)))
                self._fill_grant_from_overflow()
            grant = self._grant
            full = grant is not None and self._filled == len(grant)
            if grant is not None and not self._handed_back and (full or self.left == 0):
                self._hand_back()
            elif self.left == 0:
                self._cond.notify_all()
            waiting = grant is not None and not self._handed_back
        if self._spend is not None and not discarded:
            self._charge(n)
            if self._paying is not None and self.left:
                self._reader.direct_pause()  # until the meter lets the bytes that landed pass
                return False
        if not waiting and self._reading() and self.left:
            self._reader.direct_pause()  # nowhere to read into until the engine lends again
        return self.left == 0

    def _reading(self) -> bool:
        """The engine still takes this body's bytes (it has not finished, nothing failed)."""
        return not self._finished and self._error is None

    def _resume_for_grant(self) -> None:
        """The engine lent a region: read into it, unless a charge is still waiting."""
        if self._paying is None:
            self._reader.direct_resume()

    def _charge(self, n: int) -> None:
        """Count landed bytes; start charging them once a step's worth (or the body's end)
        is due."""
        self._unpaid += n
        if self._charge_due() and self._paying is None:
            self._paying = self._loop.create_task(self._pay())

    def _charge_due(self) -> bool:
        """A step's worth is uncharged, or the body has ended with bytes uncharged."""
        return self._unpaid >= self._step or (self.left == 0 and self._unpaid > 0)

    async def _pay(self) -> None:
        assert self._spend is not None
        try:
            while self._charge_due():
                amount = min(self._unpaid, self._step)
                await self._spend(amount)
                self._unpaid -= amount
        finally:
            self._paying = None
            # The meter's wait is not the client's silence.
            self.last_byte = self._loop.time()
            with self._cond:
                waiting = self._grant is not None and not self._handed_back
            if waiting and self._reading() and self.left:
                self._reader.direct_resume()

    async def charged(self) -> None:
        """Wait until the bytes that landed have been charged to the meter."""
        if self._paying is not None:
            await asyncio.shield(self._paying)

    def _fill_grant_from_overflow(self) -> None:
        grant = self._grant
        if grant is None or self._handed_back:
            return
        if self._filled == 0:
            self._first_byte()
        self._filled += self._take_overflow(grant[self._filled :])

    def _first_byte(self) -> None:
        """The lent region got its first byte: it goes back within GRANT_SECONDS, full or not."""
        self._loop.call_later(GRANT_SECONDS, self._hand_back_if_held, self._grant_id)

    def _hand_back_if_held(self, grant_id: int) -> None:
        """The timer of grant `grant_id`: hand it back if it still holds bytes. A later grant
        (the engine lends the next one as soon as it has taken this one) is left alone."""
        with self._cond:
            held = grant_id == self._grant_id and self._grant is not None and self._filled > 0
            held = held and not self._handed_back
            if held:
                self._hand_back()
        if held and self._reading():
            self._reader.direct_pause()  # nowhere to read into until the engine lends again

    def _hand_back(self) -> None:
        self._handed_back = True
        self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The engine's next read raises `error`; what still arrives is discarded."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()
        self._reader.direct_resume()  # keep reading: the rest of the body is discarded

    def finish(self) -> None:
        """The engine is done with the body: discard whatever still arrives."""
        with self._cond:
            self._finished = True
            self._overflow.clear()
        self._reader.direct_resume()

    async def watch_idle(self, idle_timeout: float) -> None:
        step = min(idle_timeout, 5.0)
        while self.left:  # once every byte has arrived, the client has nothing left to send
            await asyncio.sleep(step)
            with self._cond:  # idle only while the engine waits for bytes, not while it works
                waiting = self._grant is not None and not self._handed_back and self.left > 0
                waiting = waiting and self._paying is None  # not while the meter holds it
            if waiting and self._loop.time() - self.last_byte >= idle_timeout:
                self.fail(TransferInterrupted(idle_reason(idle_timeout)))
                return


def claim(scope: Scope) -> DirectBody | None:
    """The request's body as a DirectBody, or None where it must go the usual way."""
    claimer: Callable[[], DirectBody | None] | None = scope.get("extensions", {}).get(EXTENSION)
    return claimer() if claimer is not None else None


def offer(scope: Scope, claimer: Callable[[], DirectBody | None]) -> None:
    scope.setdefault("extensions", {})[EXTENSION] = claimer


def metered(scope: Scope, spend: Callable[[int], Awaitable[None]], step: int) -> Scope:
    """The same request, its direct body (if claimed) charged to `spend` as it arrives."""
    extensions = scope.get("extensions")
    claimer: Callable[[], DirectBody | None] | None = (extensions or {}).get(EXTENSION)
    if claimer is None:
        return scope

    def claim_metered() -> DirectBody | None:
        body = claimer()
        if body is not None:
            body.meter(spend, step)
        return body

    return {**scope, "extensions": {**(extensions or {}), EXTENSION: claim_metered}}


def observed(scope: Scope, seen: Callable[[DirectBody], None]) -> Scope:
    """The same request, `seen(body)` told of its direct body once the route claims it (a
    middleware that may have to cut the body short: `body.fail(error)`)."""
    extensions = scope.get("extensions")
    claimer: Callable[[], DirectBody | None] | None = (extensions or {}).get(EXTENSION)
    if claimer is None:
        return scope

    def claim_observed() -> DirectBody | None:
        body = claimer()
        if body is not None:
            seen(body)
        return body

    return {**scope, "extensions": {**(extensions or {}), EXTENSION: claim_observed}}


def disallow(scope: Scope) -> Scope:
    """The same request without a direct body (for a middleware that wraps `receive`)."""
    extensions = scope.get("extensions")
    if not extensions or EXTENSION not in extensions:
        return scope
    return {**scope, "extensions": {k: v for k, v in extensions.items() if k != EXTENSION}}


async def run_with_direct_body(
    executor: ThreadPoolExecutor,
    body: DirectBody,
    work: Callable[[Readable, Callable[[str], None]], T],
    *,
    idle_timeout: float,
    on_received: Callable[[int], None],
) -> T:
    """Run work(body, interrupt) on a worker thread; its result.

    The worker is always waited for, whatever happens here (cancellation at shutdown keeps
    what arrived: the engine's read raises TransferInterrupted). `on_received(n)`: told the
    body bytes received, however the request ends, as bodies.run_with_body does."""
    try:
        fut: Future[T] = submit_in_context(executor, work, body, body.interrupt)
    except BaseException:
        body.finish()  # never leave the connection paused on a body nobody reads
        raise
    consumer: asyncio.Future[Any] = asyncio.wrap_future(fut)
    watchdog = asyncio.ensure_future(body.watch_idle(idle_timeout))
    try:
        result: T = await asyncio.shield(consumer)
        await body.charged()  # as the usual way: the answer waits for the meter
    except asyncio.CancelledError:
        body.fail(TransferInterrupted("server shutting down"))
        await asyncio.shield(asyncio.wait({consumer}))
        raise
    finally:
        watchdog.cancel()
        body.finish()
        on_received(body.received)
    return result
