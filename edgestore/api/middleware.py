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

from edgestore.api.logs import request_id

log = logging.getLogger("edgestore.http")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]+")


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:64]
        # A client's id is kept only if it is a plain token: it goes into every log line of
        # the request (the text format's [request id] field) and back into a response header.
        rid = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        started = time.monotonic()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.monotonic() - started
            app: Any = scope.get("app")
            svc = getattr(getattr(app, "state", None), "services", None)
            if svc is not None:
                svc.metrics.requests.labels(scope["method"], str(status)).inc()
            client = scope.get("client")
            log.info(
                "%s %s %d %.3fs",
                scope["method"],
                scope["path"],
                status,
                seconds,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "seconds": round(seconds, 4),
                    "client": client[0] if client else None,
                },
            )
            request_id.reset(token)
