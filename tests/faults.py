"""A real HTTP proxy, in-process, that injects faults in front of a real server.

Rules match a method and a path pattern and fire a given number of times: answer with a
status (503, 429 with Retry-After, 460, …) or drop the connection without an answer, before
or after the request reaches the server. Everything else is forwarded unchanged; with a
`prefix`, the proxy is mounted on that path, as a reverse proxy serving the server under
`/edge/` is: it strips the prefix, and answers 404 to any path outside it.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}


@dataclass
class Rule:
    method: str
    pattern: str
    times: int
    status: int | None = None  # None: drop the connection
    retry_after: str | None = None
    forward_first: bool = False  # let the server act on the request, then fail the answer
    after: int = 0  # let this many matching requests through first
    seen: int = 0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        """Whether to fire on this request (counts it; called under the proxy's lock)."""
        if method != self.method or re.search(self.pattern, path) is None:
            return False
        self.seen += 1
        return self.seen > self.after and self.fired < self.times


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status (0: drop)
    prefix: str = ""  # e.g. "/edge": served at {url}/edge/…, forwarded without it

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=self.upstream, timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_PATCH = do_DELETE = do_OPTIONS = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where clients reach the server through this proxy (its prefix included)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def add(self, method: str, pattern: str, times: int = 1, **kwargs: object) -> Rule:
        rule = Rule(method, pattern, times, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p, _ in self.log if m == method and re.search(pattern, p))

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.fired += 1
                    return rule
        return None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        if self.prefix:
            if not h.path.startswith(self.prefix + "/"):
                self.log.append((h.command, h.path, 404))
                h.send_response(404)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.path = h.path[len(self.prefix) :]
        rule = self._rule_for(h.command, h.path)
        if rule is not None and rule.forward_first:
            self._forward(h, body, answer=False)
        if rule is not None and rule.status is None:
            self.log.append((h.command, h.path, 0))
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if rule is not None:
            payload = b'{"error": "injected", "message": "injected fault"}'
            h.send_response(rule.status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            if rule.retry_after is not None:
                h.send_header("Retry-After", rule.retry_after)
            h.end_headers()
            h.wfile.write(payload)
            self.log.append((h.command, h.path, rule.status))
            return
        self._forward(h, body, answer=True)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes, *, answer: bool) -> None:
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        resp = self._client.request(h.command, h.path, content=body, headers=headers)
        if not answer:
            return
        self.log.append((h.command, h.path, resp.status_code))
        h.send_response(resp.status_code)
        for k, v in resp.headers.items():
            if k.lower() not in HOP_BY_HOP:
                h.send_header(k, v)
        size = resp.headers.get("content-length", "0") if h.command == "HEAD" else len(resp.content)
        h.send_header("Content-Length", str(size))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(resp.content)
