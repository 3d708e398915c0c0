"""Serving an object version over HTTP: Range, ETag, conditional requests, streaming.

Bytes come from the engine chunk by chunk (each verified against its SHA-256, the next ones
decoding ahead in parallel), pulled off the event loop one chunk at a time: memory stays at a
few chunks whatever the object's size. Each body being sent holds one of the node's
`max_concurrent_downloads` slots (its chunk in hand, however slowly its client reads).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from edgestore.api.http import http_date
from edgestore.api.slots import Release
from edgestore.api.state import Services
from edgestore.errors import InvalidRange, ServerBusy
from edgestore.metadata.objects import VersionInfo

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_UNSAFE_FILENAME = re.compile(r'[\x00-\x1f\x7f"\\]')
_PRINTABLE = re.compile(r"[\x21-\x7e][\x20-\x7e]*")
# How long a download waits for a free slot before it is answered 503 (Retry-After: 1): a
# burst (a client's parallel ranges) is absorbed; a node full of slow readers says so soon.
SLOT_WAIT_SECONDS = 1.0


def etag_of(info: VersionInfo) -> str:
    return f'"{info.etag}"'


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the exact UTF-8 name (RFC 6266 / 5987).

    Quotes, backslashes and control characters (CR/LF: header injection) never reach the
    header; the UTF-8 form is percent-encoded.
    """
    name = filename.replace("/", "_")
    ascii_name = _UNSAFE_FILENAME.sub("_", name).encode("ascii", "replace").decode()
    ascii_name = ascii_name.replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


# Any position with more digits is past every object's end; Python's int() refuses more than
# 4300 digits, and a client's Range header must never make that a 500.
_MAX_DIGITS = 19
_BEYOND_ANY_SIZE = 10**_MAX_DIGITS


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else _BEYOND_ANY_SIZE


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as [start, end), None to serve everything, InvalidRange → 416."""
    if header is None:
        return None
    header = header.strip()
    if "," in header:
        return None  # multiple ranges: serving the whole object is allowed (RFC 9110 14.2)
    m = _RANGE.fullmatch(header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # not a byte range we understand: ignore it, as RFC 9110 permits
    first, last = m.group(1), m.group(2)
    if first:
        start = _position(first)
        end = min(_position(last) + 1, size) if last else size
        if last and _position(last) < start:
            return None
    else:
        suffix = _position(last)
        if suffix == 0:
            raise InvalidRange("a zero-length suffix range cannot be satisfied", size=size)
        if size == 0:
            return None  # satisfiable (RFC 9110 14.1.1), but no 206 can describe it: a 200
        start, end = max(size - suffix, 0), size
    if start >= size:
        raise InvalidRange(f"range starts at {start}, the object has {size} bytes", size=size)
    return start, end


def _headers(info: VersionInfo) -> dict[str, str]:
    h = {
        "ETag": etag_of(info),
        "Last-Modified": http_date(info.created_at),
        "Accept-Ranges": "bytes",
        "X-Edgestore-Object-Id": info.object_id,
        "X-Edgestore-Version": str(info.version),
        "Cache-Control": "private, no-cache",
        # Stored bytes are the uploader's: a browser must neither guess a type the uploader
        # did not declare nor run what it opens (an uploaded text/html page or SVG would run
        # scripts on this server's origin).
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if info.sha256:
        h["X-Edgestore-Sha256"] = info.sha256
    if info.filename:
        h["Content-Disposition"] = content_disposition(info.filename)
    return h


async def _pull(
    services: Services, pieces: Iterator[bytes | memoryview]
) -> AsyncGenerator[bytes, None]:
    """Pull a blocking iterator one chunk at a time on a worker thread."""
    sentinel = object()
    try:
        while True:
            piece = await asyncio.to_thread(next, pieces, sentinel)
            if piece is sentinel:
                return
            data = bytes(piece) if isinstance(piece, memoryview) else piece
            services.metrics.bytes_out.inc(len(data))
            yield data  # type: ignore[misc]
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


async def _prefetched(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for piece in rest:
            yield piece
    finally:
        await rest.aclose()


class _SlotResponse(StreamingResponse):
    """A body that gives its download slot back however it ends: sent, failed, or its
    client gone (Starlette then cancels the stream, and the body's own cleanup may not run
    until it is collected)."""

    def __init__(self, *args: object, release: Release, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _download_slot(services: Services) -> Release:
    """One of the node's download slots (ServerBusy, a 503, if none frees up soon); its
    release is idempotent."""
    take = await services.downloads.take(SLOT_WAIT_SECONDS)
    if take is None:
        services.metrics.downloads_refused.inc()
        limit = services.settings.max_concurrent_downloads
        raise ServerBusy(
            f"too many downloads at once: this server sends {limit} at a time "
            "(max_concurrent_downloads); retry in a moment",
            retry_after=1,
        )
    active = services.metrics.downloads_active
    active.inc()
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            take()
            active.dec()

    return release


async def object_response(
    request: Request, services: Services, info: VersionInfo, *, head: bool = False
) -> Response:
    headers = _headers(info)
    media_type = info.content_type or "application/octet-stream"
    if not _PRINTABLE.fullmatch(media_type):  # stored from client input: never a broken header
        media_type = "application/octet-stream"
    etag = headers["ETag"]
    inm = request.headers.get("if-none-match")
    # Weak comparison, as RFC 9110 13.1.2 requires for If-None-Match.
    if inm is not None and (
        inm.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in inm.split(",")]
    ):
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        # The client's copy is stale: its Range is ignored, even one past this version's end
        # (RFC 9110 13.2.2), and the whole (current) object is sent.
        range_header = None
    byte_range = parse_range(range_header, info.size)
    status = 200
    start, end = 0, info.size
    if byte_range is not None:
        start, end = byte_range
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    headers["Content-Length"] = str(end - start)
    # Set directly: media_type= would append "; charset=utf-8" to text/* types.
    headers["Content-Type"] = media_type
    if head or start == end:
        return Response(status_code=status, headers=headers)
    release = await _download_slot(services)
    try:
        body = _pull(services, services.engine.objects.read(info, start, end))
        # The first piece is read before the status goes out: an object whose first chunk
        # cannot be rebuilt (every one-chunk object) is an error response the client can
        # read, not a 200 whose body breaks off. A later chunk can only end the connection.
        first = await anext(body)
    except StopAsyncIteration:
        release()
        return Response(status_code=status, headers=headers)
    except BaseException:
        release()
        raise
    return _SlotResponse(
        _prefetched(first, body), status_code=status, headers=headers, release=release
    )
