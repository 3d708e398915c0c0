"""The client's HTTP transport: one pooled httpx client, retries, and server errors turned
back into the same domain errors the server raised (by their stable `error` code).

HTTP/1.1 on purpose: parallel transfers need parallel TCP connections (each with its own
congestion window), which HTTP/2 would multiplex onto one.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from edgestore import __version__
from edgestore import errors as e
from edgestore.client.retry import DEFAULT_RESUME_HINT, RetryPolicy, call_with_retry

Content = bytes | Iterable[bytes]

# Unsent bytes a socket may hold (Linux TCP_NOTSENT_LOWAT). By default the kernel lets the
# send buffer grow to megabytes, so "bytes handed to the socket" ran seconds ahead of the
# wire on a slow path: the 'auto' controller measured buffer filling instead of throughput
# (14.7 MB/s "measured" on a path that carried 8). 512 KiB is ~10 ms at 50 MB/s per flow,
# enough that a sender thread waiting for the GIL never starves its socket.
NOTSENT_LOWAT = 512 * 1024
SOCKET_OPTIONS: list[tuple[int, int, int]] = (
    [(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)]
    if hasattr(socket, "TCP_NOTSENT_LOWAT")
    else []
)


def _by_code() -> dict[str, type[e.EdgestoreError]]:
    found: dict[str, type[e.EdgestoreError]] = {}
    stack: list[type[e.EdgestoreError]] = [e.EdgestoreError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return found


_BY_CODE = _by_code()
_BY_STATUS: dict[int, type[e.EdgestoreError]] = {
    400: e.InvalidInput,
    401: e.Unauthorized,
    403: e.Forbidden,
    404: e.NotFound,
    409: e.UploadStateError,
    410: e.UploadGone,
    413: e.TooLarge,
    415: e.UnsupportedMediaType,
    422: e.InvalidInput,
    429: e.RateLimited,
    460: e.ChecksumMismatch,
    503: e.StorageUnavailable,
    507: e.StorageFull,
}


def error_from(resp: httpx.Response) -> e.EdgestoreError:
    """The domain error a response reports (its JSON `error` code, else its status)."""
    try:
        body = resp.json()
    except Exception:  # not JSON (a proxy's error page)
        body = None
    if not isinstance(body, dict):
        body = {}
    request = resp.request
    where = f"HTTP {resp.status_code} from {request.method} {request.url.path}"
    message = f"{body.get('message') or resp.reason_phrase or 'request failed'} ({where})"
    cls = _BY_CODE.get(str(body.get("error"))) or _BY_STATUS.get(resp.status_code)
    if cls is None:
        cls = e.StorageError if resp.status_code >= 500 else e.EdgestoreError
    if issubclass(cls, e.MissingChunks):
        return e.MissingChunks(message, [str(c) for c in body.get("missing", [])])
    if issubclass(cls, e.OffsetConflict):
        return e.OffsetConflict(message, int(body.get("offset", -1)))
    if issubclass(cls, e.InvalidRange):
        total = resp.headers.get("content-range", "*/0").rsplit("/", 1)[-1]
        return e.InvalidRange(message, size=int(total) if total.isdigit() else 0)
    return cls(message, status=resp.status_code)


class Transport:
    """A thread-safe, pooled HTTP client for one server, with retries and error mapping."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        connections: int = 20,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        resume_hint: str = DEFAULT_RESUME_HINT,
        verify: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.resume_hint = resume_hint
        headers = {"User-Agent": f"edgestore-client/{__version__}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=limits,
            verify=verify,
            transport=httpx.HTTPTransport(
                verify=verify, limits=limits, socket_options=SOCKET_OPTIONS
            ),
        )
        self._lock = threading.Lock()
        self.retries = 0
        self.stop = threading.Event()  # set: waits between tries end at once

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pause(self, seconds: float) -> None:
        """Wait before a retry; ends at once (TransferInterrupted) when `stop` is set."""
        if self.stop.wait(seconds):
            raise e.TransferInterrupted("stopped while waiting to retry")

    def note_retry(self, _why: str) -> None:
        with self._lock:
            self.retries += 1

    def request(
        self,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...] = (200, 201, 204),
        json: Any = None,
        content: Callable[[], Content] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        what: str | None = None,
    ) -> httpx.Response:
        """Send with retries; return a response whose status is in `ok`, else raise its error.

        `content` is a factory so every try sends the body from its start.
        """

        def send() -> httpx.Response:
            if self.stop.is_set():
                raise e.TransferInterrupted("stopped")
            return self.http.request(
                method,
                url,
                json=json,
                content=content() if content is not None else None,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )

        resp = call_with_retry(
            send,
            self.retry,
            what=what or f"{method} {url}",
            resume_hint=self.resume_hint,
            sleep=self.pause,
            on_retry=self.note_retry,
        )
        if resp.status_code not in ok:
            raise error_from(resp)
        return resp

    def json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.request(method, url, **kwargs).json()
