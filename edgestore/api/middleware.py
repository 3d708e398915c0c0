"""Request context as plain ASGI middleware: request id, access log, request metrics.

Plain ASGI (not Starlette's BaseHTTPMiddleware) so request bodies stream straight through:
the base class re-queues every body piece through an extra task, which costs real CPU on
multi-gigabyte uploads.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgestore.api import direct
from edgestore.api.errors import status_for, unexpected_response
from edgestore.api.logs import request_id
from edgestore.errors import EdgestoreError

log = logging.getLogger("edgestore.http")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]+")
MAX_REQUEST_ID = 64


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # A client's id is kept only if it is a plain token of at most 64 characters (as
        # docs/operations.md says; a longer one was cut, and the client got back an id it never
        # sent): it goes into every log line of the request (the text format's [request id]
        # field) and back into a response header.
        ok = len(incoming) <= MAX_REQUEST_ID and _REQUEST_ID.fullmatch(incoming)
        rid = incoming if ok else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        # One state dict for the whole request, however the layers below copy the scope: a
        # route's error headers (request.state) must reach the 500 answered for it.
        scope.setdefault("state", {})
        started = time.monotonic()
        status = 500
        responded = False
        # Body bytes for the access line: what came through `receive`, what the event loop
        # read straight into the engine's buffer (api/direct.py), what went out.
        bytes_in = bytes_out = 0
        direct_bodies: list[direct.DirectBody] = []
        scope = direct.observed(scope, direct_bodies.append)

        async def receive_counted() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded, bytes_out
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)
            if message["type"] == "http.response.body":  # counted once the connection took it
                bytes_out += len(message.get("body", b""))

        broken_off = False
        try:
            await self.app(scope, receive_counted, send_with_id)
        except BaseException as exc:
            named = _named_cause(exc) if responded else None
            if named is not None:
                # A body broken off for a reason the code names (the version deleted by
                # another process mid-read, a chunk lost): one line says why, not a
                # traceback with the data dirs' paths. Returning without completing the
                # response makes the server drop the connection: the client sees a body
                # short of its Content-Length, as before.
                broken_off = True
                level = logging.ERROR if status_for(named) >= 500 else logging.WARNING
                method, path = scope["method"], scope["path"]
                log.log(level, "%s %s: body broken off: %s", method, path, named)
                return
            if responded or not isinstance(exc, Exception):
                # A body broken off, or the request cancelled (shutdown's grace ran out): the
                # server drops the connection and logs why.
                broken_off = True
                raise
            # Answered here, where the request id is still known (Starlette's own 500 handler
            # runs outside this middleware: no X-Request-ID, a traceback logged as "-"). A
            # route's error is answered by Unexpected, inside CORS; this is for the rest.
            await _answer_unexpected(scope, receive, send_with_id)
        finally:
            seconds = time.monotonic() - started
            app: Any = scope.get("app")
            svc = getattr(getattr(app, "state", None), "services", None)
            if svc is not None:
                svc.metrics.requests.labels(scope["method"], str(status)).inc()
            client = scope.get("client")
            bytes_in += sum(body.received for body in direct_bodies)
            log.info(
                "%s %s %d %.3fs in=%d out=%d",
                scope["method"],
                scope["path"],
                status,
                seconds,
                bytes_in,
                bytes_out,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "seconds": round(seconds, 4),
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "client": client[0] if client else None,
                },
            )
            if not broken_off:  # else the server's traceback, logged after this, keeps the id
                request_id.reset(token)


class Unexpected:
    """Answers an error nothing mapped (a bug) with a 500, placed just inside CORS.

    RequestContext, the outermost layer, answered it before: its 500 went out without CORS
    headers, and a page saw a network error instead of the status and its X-Request-ID.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        responded = False

        async def tracked(message: Message) -> None:
            nonlocal responded
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if responded:  # a body broken off: the server drops the connection
                raise
            await _answer_unexpected(scope, receive, send)


def _named_cause(exc: BaseException) -> EdgestoreError | None:
    """The EdgestoreError behind `exc`: Starlette wraps one raised after the response began
    in a RuntimeError ("Caught handled exception, but response already started")."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None or isinstance(seen, EdgestoreError):
            return seen
        if not isinstance(seen, RuntimeError):
            return None
        seen = seen.__cause__
    return None


async def _answer_unexpected(scope: Scope, receive: Receive, send: Send) -> None:
    """The 500 of the exception being handled, its traceback logged under the request id."""
    log.exception("unhandled error in %s %s", scope["method"], scope["path"])
    headers = scope.get("state", {}).get("error_headers")
    await unexpected_response(headers)(scope, receive, send)
