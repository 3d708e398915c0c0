"""Serving an object version over HTTP: Range (one part or multipart/byteranges), ETag,
conditional requests, streaming; the one path of every download route.

Bytes come from the engine chunk by chunk (each verified against its SHA-256, the next ones
decoding ahead in parallel), pulled off the event loop one chunk at a time: memory stays at a
few chunks whatever the object's size. Each body being sent holds one of the node's
`max_concurrent_downloads` slots (its chunk in hand, however slowly its client reads; one
that takes nothing for send_timeout seconds is cut off: api/protocol.py).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncGenerator, Callable, Iterator
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from edgestore.api import conditional, ranges
from edgestore.api.http import http_date
from edgestore.api.ranges import ByteRange
from edgestore.api.slots import Release
from edgestore.api.state import Services
from edgestore.errors import PreconditionFailed, ServerBusy
from edgestore.metadata.objects import VersionInfo

# Never in a saved file's name: control characters (CR/LF would also inject headers) and
# path separators, '/' and Windows' '\' (a download manager must not write elsewhere).
_UNSAFE_IN_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")
# Nor in the ASCII fallback: what a quoted-string cannot hold plainly, '%' (some agents
# percent-decode the fallback: RFC 6266 appendix D) and every non-ASCII character.
_UNSAFE_IN_FALLBACK = re.compile(r'["%]|[^\x20-\x7e]')
# Response bodies go to the connection in slices of this size, each counted in bytes_out once
# the connection took it: an aborted download counts about what it sent, not the chunk-sized
# pieces read ahead of the client. 4 MiB: 1 MiB slices cost ~5% more server CPU per GiB sent.
SEND_SLICE = 4 * 1024 * 1024
_PRINTABLE = re.compile(r"[\x21-\x7e][\x20-\x7e]*")
# How long a download waits for a free slot before it is answered 503 (Retry-After: 1): a
# burst (a client's parallel ranges) is absorbed; a node full of slow readers says so soon.
SLOT_WAIT_SECONDS = 1.0
# A segment of a body: the bytes that go before it (a part's delimiter and headers), then
# the object's bytes [start, end).
Segment = tuple[bytes, int, int]


def etag_of(info: VersionInfo) -> str:
    return f'"{info.etag}"'


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the UTF-8 name (RFC 6266 / 5987).

    Control characters (CR/LF: header injection) and path separators become '_' in both;
    the UTF-8 form is percent-encoded.
    """
    name = _UNSAFE_IN_NAME.sub("_", filename)
    ascii_name = _UNSAFE_IN_FALLBACK.sub("_", name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _validators(info: VersionInfo) -> dict[str, str]:
    """All a 304 sends (RFC 9110 15.4.5): no representation metadata beyond what guides a
    cache's update, so neither Content-* nor this server's own fields."""
    return {
        "ETag": etag_of(info),
        "Last-Modified": http_date(info.created_at),
        "Cache-Control": "private, no-cache",
    }


def _headers(info: VersionInfo) -> dict[str, str]:
    h = {
        **_validators(info),
        "Accept-Ranges": "bytes",
        "X-Edgestore-Object-Id": info.object_id,
        "X-Edgestore-Version": str(info.version),
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


async def _pull(pieces: Iterator[bytes | memoryview]) -> AsyncGenerator[bytes, None]:
    """Pull a blocking iterator one chunk at a time on a worker thread."""
    sentinel = object()
    try:
        while True:
            piece = await asyncio.to_thread(next, pieces, sentinel)
            if piece is sentinel:
                return
            yield bytes(piece) if isinstance(piece, memoryview) else piece  # type: ignore[misc]
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


async def _prefetched(
    first: bytes, rest: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    try:
        yield first
        async for piece in rest:
            yield piece
    finally:
        await rest.aclose()


class _SlotResponse(StreamingResponse):
    """A body that gives its download slot back however it ends: sent, failed, or its
    client gone (Starlette then cancels the stream, and leaves the body unclosed: it is
    closed here). Its bytes are counted as the connection takes them."""

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        release: Release,
        sent: Callable[[int], None],
        **kw: object,
    ) -> None:
        super().__init__(content, **kw)  # type: ignore[arg-type]
        self._content = content
        self._release = release
        self._sent = sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def one(message: Message, size: int) -> None:
            await send(message)  # waits while the connection's buffer is full
            # A client gone, the server drops what is sent without waiting; Starlette then
            # cancels the stream, at this task's next pause: here, before the slice counts.
            await asyncio.sleep(0)
            self._sent(size)

        async def counted(message: Message) -> None:
            """A piece in slices, each counted once the connection took it."""
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            if len(body) <= SEND_SLICE:
                await one(message, len(body))
                return
            view = memoryview(body)
            more = message.get("more_body", False)
            for at in range(0, len(view), SEND_SLICE):
                piece = view[at : at + SEND_SLICE]
                last = at + SEND_SLICE >= len(view)
                await one({**message, "body": piece, "more_body": more or not last}, len(piece))

        try:
            await super().__call__(scope, receive, counted)
        finally:
            try:
                # Closed here, in order, the read-ahead cancelled with it: left to the
                # garbage collector, a body its client abandoned had its generators closed
                # by two tasks at once, one failing with "asynchronous generator is already
                # running" (an ERROR and a traceback per abandoned download).
                await self._content.aclose()
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


async def _if_range_holds(services: Services, info: VersionInfo, if_range: str, etag: str) -> bool:
    """RFC 9110 13.1.5: an entity-tag must match strongly; a date must be Last-Modified
    exactly and a strong validator (8.8.2.2): one-second resolution, so not when the
    version before this one was made in the same second (the client's copy may be that
    one's)."""
    date = conditional.if_range_date(if_range)
    if date is None:
        return if_range.strip() == etag
    modified = int(info.created_at)
    if date != modified:
        return False
    before = await asyncio.to_thread(
        services.engine.objects.versions, info.object_id, after=info.version, limit=1
    )
    return not before or int(before[0].created_at) != modified


async def _segments(
    services: Services, info: VersionInfo, segments: list[Segment], trailer: bytes
) -> AsyncGenerator[bytes, None]:
    """The body: each segment read through the engine in turn (one at a time, so memory stays
    at a few chunks however many parts), its first piece read before anything of it is sent."""
    for lead, start, end in segments:
        pieces = _pull(services.engine.objects.read(info, start, end))
        try:
            first = await anext(pieces, None)
            if lead:
                yield lead
            if first is not None:
                yield first
            async for piece in pieces:
                yield piece
        finally:
            await pieces.aclose()
    if trailer:
        yield trailer


def _media_type(info: VersionInfo) -> str:
    media_type = info.content_type or "application/octet-stream"
    if not _PRINTABLE.fullmatch(media_type):  # stored from client input: never a broken header
        media_type = "application/octet-stream"
    return media_type


def _body_plan(
    headers: dict[str, str], info: VersionInfo, parts: list[ByteRange] | None
) -> tuple[int, list[Segment], bytes]:
    """Status, segments and trailer for the parts to send (None: the whole object); sets
    the Content-* headers, Content-Length computed before a byte is read."""
    media_type = _media_type(info)
    status, segments, trailer = 200, [(b"", 0, info.size)], b""
    if parts is not None and len(parts) == 1:
        (start, end), status = parts[0], 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        segments = [(b"", start, end)]
    elif parts is not None:
        status, boundary = 206, secrets.token_hex(16)  # unguessable: not in the uploaded bytes
        segments = [
            (ranges.part_head(boundary, media_type, part, info.size, first=i == 0), *part)
            for i, part in enumerate(parts)
        ]
        trailer = ranges.closing(boundary)
        media_type = ranges.multipart_type(boundary)
    length = sum(len(lead) + end - start for lead, start, end in segments) + len(trailer)
    headers["Content-Length"] = str(length)
    # Set directly: media_type= would append "; charset=utf-8" to text/* types.
    headers["Content-Type"] = media_type
    return status, segments, trailer


async def object_response(
    request: Request, services: Services, info: VersionInfo, *, head: bool = False
) -> Response:
    """The one answer to a download, whichever route found the version (/objects, /ids, a
    finished upload's /files URL): conditionals, then Range (one part, several, or none)."""
    headers = _headers(info)
    etag = headers["ETag"]
    modified = int(info.created_at)  # Last-Modified's whole seconds
    outcome = conditional.evaluate(request, etag, modified)
    if outcome == 412:
        raise PreconditionFailed(
            f"{info.bucket}/{info.key} version {info.version} (ETag {etag}, Last-Modified "
            f"{headers['Last-Modified']}) fails the request's If-Match or If-Unmodified-Since"
        )
    if outcome == 304:
        return Response(status_code=304, headers=_validators(info))
    # Range handling is defined for GET only: a HEAD ignores it (RFC 9110 14.2), answering
    # as a GET without it would.
    range_header = None if head else request.headers.get("range")
    if_range = request.headers.get("if-range")
    if (
        range_header is not None
        and if_range is not None
        and not await _if_range_holds(services, info, if_range, etag)
    ):
        # The client's copy is stale: its Range is ignored, even one past this version's end
        # (RFC 9110 13.2.2), and the whole (current) object is sent.
        range_header = None
    status, segments, trailer = _body_plan(
        headers, info, ranges.parse_ranges(range_header, info.size)
    )
    if head or headers["Content-Length"] == "0":
        return Response(status_code=status, headers=headers)
    release = await _download_slot(services)
    try:
        body = _segments(services, info, segments, trailer)
        # The first piece is read before the status goes out: an object whose first chunk
        # cannot be rebuilt (every one-chunk object) is an error response the client can
        # read, not a 206 or 200 whose body breaks off. A later chunk can only end the
        # connection.
        first = await anext(body)
    except StopAsyncIteration:
        release()
        return Response(status_code=status, headers=headers)
    except BaseException:
        release()
        raise
    return _SlotResponse(
        _prefetched(first, body),
        status_code=status,
        headers=headers,
        release=release,
        sent=services.metrics.bytes_out.inc,
    )
