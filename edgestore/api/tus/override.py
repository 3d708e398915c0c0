"""The door of /files/: plain ASGI middleware, outside authentication and the router.

X-HTTP-Method-Override (tus core): clients behind proxies that only pass GET and POST send
`POST` with `X-HTTP-Method-Override: PATCH` (or DELETE); the server must honour it, so the
method is rewritten before routing.

Tus-Resumable (tus core) "MUST be included in every ... response except for OPTIONS requests":
the tus handlers set it, but answers written in front of them (authentication's 401 and 403,
the rate limits' 429, the router's 405) are tus responses too, so it is added here where
missing, as tusd's middleware does for all. Not for IETF-draft requests (no such header
there). A 405's `Allow` names what the tus URL takes (the router's names one route's only).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgestore.api.tus.common import PREFIX
from edgestore.api.tus.headers import TUS_VERSION

_ALLOWED = {"PATCH", "DELETE", "HEAD", "GET", "OPTIONS", "POST"}
_COLLECTION_METHODS = "OPTIONS, POST"
_UPLOAD_METHODS = "OPTIONS, HEAD, GET, PATCH, DELETE"
_INTEROP = b"upload-draft-interop-version"


class MethodOverride:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            for name, value in scope["headers"]:
                if name == b"x-http-method-override":
                    method = value.decode("latin-1").strip().upper()
                    if method in _ALLOWED:
                        scope = {**scope, "method": method}
                    break
        if scope["method"] == "OPTIONS" or any(n == _INTEROP for n, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        collection = path.rstrip("/") == PREFIX

        async def send_tus(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "tus-resumable" not in headers:
                    headers["Tus-Resumable"] = TUS_VERSION
                if message["status"] == 405:
                    headers["Allow"] = _COLLECTION_METHODS if collection else _UPLOAD_METHODS
            await send(message)

        await self.app(scope, receive, send_tus)
