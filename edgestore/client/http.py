"""The client's HTTP transport: one pooled httpx client, retries, and server errors turned
back into the same domain errors the server raised (by their stable `error` code).

HTTP/1.1 on purpose: parallel transfers need parallel TCP connections (each with its own
congestion window), which HTTP/2 would multiplex onto one.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from httpx._utils import get_environment_proxies

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


def proxy_mounts(
    transport: Callable[[str], httpx.HTTPTransport],
) -> dict[str, httpx.BaseTransport | None]:
    """HTTP(S)_PROXY, ALL_PROXY and NO_PROXY, read as httpx reads them: given a transport of
    our own (for its socket options) httpx ignores them, and a client behind a proxy failed
    to connect, or went around it. None: that host is reached directly."""
    mounts: dict[str, httpx.BaseTransport | None] = {}
    for pattern, proxy in get_environment_proxies().items():
        try:
            mounts[pattern] = None if proxy is None else transport(proxy)
        except (ImportError, ValueError) as exc:
            raise _proxy_error(proxy or "", exc) from None
    return mounts


def _proxy_error(proxy: str, exc: Exception) -> e.ConfigError:
    """A proxy httpx cannot use, named (without its password) with the variables to check;
    httpx's own error was a traceback, and for SOCKS it named a pip command only."""
    try:
        url = httpx.URL(proxy)
        shown = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    except Exception:  # not even a URL: show no part of it
        shown = "the proxy"
    where = "set by HTTPS_PROXY, HTTP_PROXY or ALL_PROXY; NO_PROXY lists hosts reached directly"
    if shown.lower().startswith("socks"):
        return e.ConfigError(
            f"the SOCKS proxy {shown} needs the Python package 'socksio', which is not "
            f"installed with this client (install httpx[socks] beside it, or use an HTTP "
            f"proxy) ({where})"
        )
    return e.ConfigError(f"cannot use the proxy {shown}: {exc} ({where})")


def tls_context(ca_cert: str | Path | None) -> ssl.SSLContext | bool:
    """What verifies servers: with `ca_cert` (a PEM file, or a directory of hashed CA
    certificates, as `openssl rehash` makes) those CAs instead of the default bundle, as
    curl's --cacert does; else the default (which SSL_CERT_FILE and SSL_CERT_DIR replace)."""
    if ca_cert is None:
        return True
    path = Path(ca_cert)
    if not path.exists():
        raise e.InvalidInput(f"CA certificate {path}: no such file or directory")
    try:
        if path.is_dir():
            return ssl.create_default_context(capath=os.fspath(path))
        return ssl.create_default_context(cafile=os.fspath(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise e.InvalidInput(
            f"CA certificate {path}: no CA certificate could be read from it ({exc})"
        ) from None


def bearer_key(key: str | None) -> str | None:
    """The API key as a header can carry it: without the line break a key read from a file
    or a secret keeps. A key that still cannot be sent (a control or non-ASCII character)
    is refused without being echoed (httpx's error, a traceback, printed the key)."""
    key = (key or "").strip()
    if key and not (key.isascii() and key.isprintable()):
        raise e.InvalidInput(
            "the API key holds characters an HTTP header cannot carry (a control or "
            "non-ASCII character): check --api-key or $EDGESTORE_API_KEY"
        )
    return key or None


ANY_STATUS = tuple(range(100, 600))
# What a web server answers to a route or a method it does not have.
_NO_SUCH_ROUTE = frozenset({404, 405, 501})


def refusal(
    resp: httpx.Response, *, server: str, ours: bool, expected: str, hint: str
) -> e.EdgestoreError:
    """The error of a refused request; ProtocolMismatch when the URL has no such route and the
    answer is not from a server of the protocol (`ours`): without it, `upload` to a plain web
    server or the wrong path ended as "HTTP 501", exit code 6 (a server storage error)."""
    if resp.status_code in _NO_SUCH_ROUTE and not ours:
        return e.ProtocolMismatch(
            f"{server} is not {expected} (HTTP {resp.status_code} from "
            f"{resp.request.method} {resp.request.url.path}): {hint}"
        )
    return error_from(resp)


def not_edgestore(resp: httpx.Response, server: str) -> e.EdgestoreError:
    """The error of a refused native request; edgestore's own errors are JSON with a code."""
    try:
        body = resp.json()
    except Exception:  # not JSON: another server's page
        body = None
    return refusal(
        resp,
        server=server,
        ours=isinstance(body, dict) and "error" in body,
        expected="an edgestore server",
        hint="for any other tus server, upload with protocol tus (--protocol tus)",
    )


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
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.resume_hint = resume_hint
        headers = {"User-Agent": f"edgestore-client/{__version__}"}
        if key := bearer_key(key):
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

        def transport(proxy: str | None = None) -> httpx.HTTPTransport:
            return httpx.HTTPTransport(
                verify=verify, limits=limits, socket_options=SOCKET_OPTIONS, proxy=proxy
            )

        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=limits,
            verify=verify,
            transport=transport(),
            mounts=proxy_mounts(transport),
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
        headers: dict[str, str | bytes] | None = None,
        timeout: float | None = None,
        what: str | None = None,
        stream: bool = False,
        before_body: Callable[[httpx.Response], None] | None = None,
    ) -> httpx.Response:
        """Send with retries; return a response whose status is in `ok`, else raise its error.

        `content` is a factory so every try sends the body from its start. With `stream`, the
        body is left unread (the caller reads it, and closes the response). `before_body`
        sees each answer's status and headers before its body is read, and may refuse it by
        raising (a whole object answered to a range request is not read into memory).
        """

        def send() -> httpx.Response:
            if self.stop.is_set():
                raise e.TransferInterrupted("stopped")
            built = self.http.build_request(
                method,
                url,
                json=json,
                content=content() if content is not None else None,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            if before_body is None:
                return self.http.send(built, stream=stream)
            resp = self.http.send(built, stream=True)
            try:
                before_body(resp)
                if not stream:
                    resp.read()  # here, so that a cut in the body is retried as before
            except BaseException:
                resp.close()
                raise
            return resp

        resp = call_with_retry(
            send,
            self.retry,
            what=what or f"{method} {url}",
            resume_hint=self.resume_hint,
            sleep=self.pause,
            on_retry=self.note_retry,
        )
        if resp.status_code not in ok:
            if stream:
                resp.read()
                resp.close()
            raise error_from(resp)
        return resp

    def json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.request(method, url, **kwargs).json()
