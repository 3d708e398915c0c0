"""X-HTTP-Method-Override (tus core): clients behind proxies that only pass GET and POST send
`POST` with `X-HTTP-Method-Override: PATCH` (or DELETE); the server must honour it.

Plain ASGI middleware, applied to /files/ only, so it rewrites the method before routing.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from edgestore.api.tus.common import PREFIX

_ALLOWED = {"PATCH", "DELETE", "HEAD", "GET", "OPTIONS", "POST"}


class MethodOverride:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].startswith(PREFIX)
        ):
            for name, value in scope["headers"]:
                if name == b"x-http-method-override":
                    method = value.decode("latin-1").strip().upper()
                    if method in _ALLOWED:
                        scope = {**scope, "method": method}
                    break
        await self.app(scope, receive, send)
