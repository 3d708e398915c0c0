"""JSON request bodies read under a cap before FastAPI parses them.

FastAPI reads a JSON body whole before it validates anything, so without a cap any caller
allowed to reach a JSON route could make the server hold gigabytes. A route class here reads
the body first, refusing it (413) by its Content-Length or as soon as it passes the cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import Message

from edgestore.api.bodies import idle_reason
from edgestore.errors import InvalidInput, StorageUnavailable, TooLarge, TransferInterrupted

JSON_BODY_BYTES = 4 << 20  # ample for every JSON body the API takes (10,000 chunk ids: ~0.8 MB)


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidInput(f"Content-Length must be a non-negative integer, got {value!r}")
    return int(value)


async def read_capped(
    request: Request,
    limit: int,
    *,
    what: str = "request body",
    idle_timeout: float | None = None,
    on_received: Callable[[int], None] | None = None,
) -> bytes:
    """A request body, refused (413) by its Content-Length or once it passes `limit`; one
    cut short, or from a client silent for `idle_timeout` seconds, is TransferInterrupted;
    one still arriving when the server begins to shut down is StorageUnavailable (503: send
    it again). A slow body is read however long it takes, as long as bytes keep coming.

    `on_received(n)`: told the body bytes received, however the read ends (the metrics)."""
    declared = content_length(request)
    if declared is not None and declared > limit:
        raise TooLarge(f"a {what} of {declared} bytes exceeds this route's {limit}")
    stopping = _stopping(request)
    reader = asyncio.ensure_future(_read(request, limit, what, idle_timeout, on_received))
    if stopping is None:
        return await reader
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        done, _ = await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        reader.cancel()
        raise
    finally:
        stopped.cancel()
    if reader in done:
        return reader.result()
    reader.cancel()
    await asyncio.wait({reader})
    if not reader.cancelled():
        reader.exception()  # retrieved: it ended as it was cut, and this answer says why
    raise StorageUnavailable(
        f"server is shutting down; nothing of this {what} was kept: send it again"
    )


def _stopping(request: Request) -> asyncio.Event | None:
    """The app's shutdown signal (api/state.py), where the app has started."""
    services = getattr(request.app.state, "services", None)
    return getattr(services, "stopping", None)


async def _read(
    request: Request,
    limit: int,
    what: str,
    idle_timeout: float | None,
    on_received: Callable[[int], None] | None,
) -> bytes:
    buf = bytearray()
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(None) as quiet:
            if idle_timeout is not None:
                quiet.reschedule(loop.time() + idle_timeout)
            async for piece in request.stream():
                buf += piece
                if len(buf) > limit:
                    raise TooLarge(f"the {what} exceeds this route's {limit} bytes")
                if idle_timeout is not None:
                    quiet.reschedule(loop.time() + idle_timeout)
    except ClientDisconnect:
        raise TransferInterrupted(f"client disconnected mid-{what}; nothing was done") from None
    except TimeoutError:
        assert idle_timeout is not None
        raise TransferInterrupted(
            f"{idle_reason(idle_timeout)} mid-{what}; nothing was done"
        ) from None
    finally:
        if on_received is not None:
            on_received(len(buf))
    return bytes(buf)


class CappedJsonRoute(APIRoute):
    """A route whose POST body is read under `body_limit(request)` before FastAPI parses it."""

    async def body_limit(self, request: Request) -> int:
        return JSON_BODY_BYTES

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        if "POST" not in self.methods:
            return handler

        async def capped(request: Request) -> Response:
            body = await read_capped(request, await self.body_limit(request))
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await request.receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await handler(Request(request.scope, replay))

        return capped
