"""The IETF "Resumable Uploads for HTTP" draft, served on the tus URLs (/files/).

A request carrying `Upload-Draft-Interop-Version` is served here instead of by the tus 1.0
handlers, and needs no `Tus-Resumable`. Interop versions: 6 (draft-ietf-httpbis-resumable-
upload-04/-05, what tus-js-client's `protocol: 'ietf-draft-05'` speaks, as tusd), 7 (-06 to
-08) and 8 (-09 to -12, the newest). For a server they differ only in details handled here:
the lifetime key in `Upload-Limit` (`expires` in 6, `max-age` later) and which response
headers are required, which this module always sends. A creation that carries content is
announced at once with a 104 (Upload Resumption Supported) interim response holding its
`Location` (api/protocol.py writes it; ASGI cannot), so a client whose connection drops
mid-creation resumes instead of starting over (Apple's background uploader requires it).

One deviation forced by the engine: an upload whose offset reaches its declared length is
complete (it becomes an object version then), even if that request said `Upload-Complete: ?0`;
a later empty `Upload-Complete: ?1` PATCH at that offset is answered as a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.utils
import time
from collections.abc import Iterator

from fastapi import Request, Response

from edgestore.api import protocol
from edgestore.api.state import Services, services
from edgestore.api.tus.common import TUS_KINDS, append_body, upload_url
from edgestore.api.tus.headers import OFFSET_CONTENT_TYPE, parse_metadata, parse_size
from edgestore.api.tus.structured import boolean_item, field_value, non_negative_integer_item
from edgestore.errors import (
    EdgestoreError,
    InvalidInput,
    NotFound,
    OffsetConflict,
    TooLarge,
    UnsupportedMediaType,
    UploadGone,
)
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.uploads import UploadRecord

INTEROP_HEADER = "Upload-Draft-Interop-Version"
INTEROP_VERSIONS = ("6", "7", "8")
PARTIAL_UPLOAD = "application/partial-upload"


def is_draft(request: Request) -> bool:
    """Whether the request speaks the IETF draft (any interop version) rather than tus 1.0."""
    return INTEROP_HEADER in request.headers


def prepare(request: Request) -> None:
    """Check the interop version (400 if unsupported) and set this protocol's error headers."""
    version = _version(request)
    request.state.error_headers = {}
    if version not in INTEROP_VERSIONS:
        raise InvalidInput(
            f"{INTEROP_HEADER} {version!r} is not supported; this server speaks interop "
            f"versions {', '.join(INTEROP_VERSIONS)} (draft-ietf-httpbis-resumable-upload-04 "
            "to -12; tus-js-client: protocol 'ietf-draft-05'), or tus 1.0.0 without this header"
        )
    headers = {INTEROP_HEADER: version, "Upload-Limit": _limits(request, services(request))}
    if request.method in ("POST", "PATCH"):
        # Draft -05: every response to an `Upload-Complete: ?0` request says ?0, errors too;
        # an error never completes an upload, so ?0 is true for ?1 requests as well.
        headers["Upload-Complete"] = "?0"
    request.state.error_headers = headers


# --- handlers (the tus modules dispatch here) ----------------------------------------------


def options(request: Request) -> Response:
    """What an upload may be: `Upload-Limit` (draft -05: MUST), `Accept-Patch` (-10: MUST)."""
    return Response(
        status_code=204,
        headers={
            INTEROP_HEADER: _version(request),
            "Upload-Limit": _limits(request, services(request)),
            "Accept-Patch": PARTIAL_UPLOAD,
        },
    )


async def create(request: Request) -> Response:
    """Upload creation: a POST with or without content; `Upload-Complete: ?1` finishes it."""
    svc = services(request)
    h = request.headers
    complete = _upload_complete(request)
    length = _integer_field(request, "Upload-Length")
    body_length = parse_size("Content-Length", h.get("content-length"))
    if complete and body_length is not None:
        if length is not None and length != body_length:
            raise InvalidInput(
                f"inconsistent length: Upload-Length {length} but Upload-Complete: ?1 with "
                f"{body_length} bytes of content"
            )
        length = body_length
    if not complete and length is not None and body_length is not None and body_length > length:
        # Known from the headers, as for an append: refused before the upload exists (else
        # it would stay behind, open and counted against its bucket's quota).
        raise InvalidInput(f"{body_length} bytes of content go beyond Upload-Length {length}")
    largest = svc.settings.max_upload_size  # a length not yet known is bounded by it
    if length is None and body_length is not None and body_length > largest:
        raise TooLarge(f"{body_length} bytes of content go beyond the maximum of {largest}")
    meta = parse_metadata(h.get("upload-metadata"))  # tus-js-client sends it in draft mode too
    filename = _disposition_filename(h.get("content-disposition"))
    if filename and not meta.filename:
        meta.raw["filename"] = filename
    media_type = h.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ("", PARTIAL_UPLOAD, OFFSET_CONTENT_TYPE) and not meta.content_type:
        meta.raw["filetype"] = media_type  # the draft: Content-Type is the representation's

    from edgestore.api.tus.creation import object_key  # creation imports this module

    rec = await asyncio.to_thread(
        svc.engine.uploads.create,
        kind="ietf",
        bucket=meta.bucket,
        key=object_key(meta),
        length=length,
        content_type=meta.content_type,
        filename=meta.filename,
        user_metadata=meta.user,
        body_length=body_length,
    )
    location = upload_url(request, svc, rec.upload_id)
    request.state.error_headers["Location"] = location  # so a failed transfer can resume
    if _has_body(request):  # where to resume, before the content (an empty POST ends at once)
        version = _version(request)
        limits = _limits(request, svc, rec)
        interim = [("Location", location), (INTEROP_HEADER, version), ("Upload-Limit", limits)]
        protocol.informational(request.scope, 104, interim)
    try:
        rec = await _transfer(request, svc, rec, 0, complete)
    except EdgestoreError:
        await _offset_header(request, rec.upload_id)  # the upload exists: say where it stands
        raise
    headers = _state_headers(request, svc, rec)
    headers["Location"] = location
    return Response(status_code=201, headers=headers)


async def head(upload_id: str, request: Request) -> Response:
    """Offset retrieval: where the upload stands (durable bytes only)."""
    _refuse_fields(request, ("Upload-Offset", "Upload-Complete", "Upload-Length"))
    svc = services(request)
    uploads = svc.engine.uploads
    with _gone_as_not_found(request):
        # An append whose client went quiet may hold bytes not yet durable: it stops and
        # keeps them first, so the next append is accepted at the offset reported here.
        await asyncio.to_thread(uploads.settle, upload_id)
        rec = await asyncio.to_thread(uploads.get_open, upload_id, TUS_KINDS)
    return Response(status_code=204, headers=_state_headers(request, svc, rec))


async def append(upload_id: str, request: Request) -> Response:
    """Upload append: a PATCH of `application/partial-upload` content at `Upload-Offset`."""
    try:
        with _gone_as_not_found(request):
            return await _append(upload_id, request)
    except OffsetConflict as exc:  # the draft: a 409 carries the correct offset
        request.state.error_headers["Upload-Offset"] = str(exc.expected)
        raise
    except (NotFound, UploadGone):
        raise
    except EdgestoreError:  # draft -05: a failure about an active upload carries its offset
        await _offset_header(request, upload_id)
        raise


async def cancel(upload_id: str, request: Request) -> Response:
    """Upload cancellation: the upload is terminated and its staged bytes released."""
    _refuse_fields(request, ("Upload-Offset", "Upload-Complete"))
    uploads = services(request).engine.uploads
    with _gone_as_not_found(request):
        await asyncio.to_thread(uploads.get_open, upload_id, TUS_KINDS)  # 404 / 410 first
    await asyncio.to_thread(uploads.terminate, upload_id)
    return Response(status_code=204, headers={INTEROP_HEADER: _version(request)})


# --- the append and completion --------------------------------------------------------------


async def _append(upload_id: str, request: Request) -> Response:
    svc = services(request)
    h = request.headers
    media_type = h.get("content-type", "").split(";")[0].strip().lower()
    if media_type != PARTIAL_UPLOAD:
        raise UnsupportedMediaType(
            f"an upload append needs Content-Type: {PARTIAL_UPLOAD}, got {media_type or 'none'!r}"
        )
    offset = _integer_field(request, "Upload-Offset")
    if offset is None:
        raise InvalidInput(
            "an upload append needs Upload-Offset, a non-negative Integer (RFC 9651); "
            f"got {field_value(h, 'upload-offset')!r}"
        )
    length = _integer_field(request, "Upload-Length")
    body_length = parse_size("Content-Length", h.get("content-length"))
    complete = _upload_complete(request)

    uploads = svc.engine.uploads
    rec = await asyncio.to_thread(uploads.get_open, upload_id, TUS_KINDS)
    if rec.state != upload_rows.OPEN:
        request.state.error_headers["Upload-Complete"] = "?1"
        if complete and offset == rec.offset and not _has_body(request):
            # A retried completion whose response was lost, or the confirmation of an upload
            # that completed when its offset reached Upload-Length: nothing changes.
            return Response(status_code=204, headers=_state_headers(request, svc, rec))
        raise InvalidInput(f"upload {upload_id} is already complete; it takes no more bytes")
    # Cheap checks before a byte is read; the engine checks the offset again under its lock.
    if offset != rec.offset:
        raise OffsetConflict(
            f"Upload-Offset {offset} does not match the upload's offset {rec.offset}",
            expected=rec.offset,
        )
    # Both lengths a request can indicate must agree, checked before either is recorded.
    indicated = offset + body_length if complete and body_length is not None else None
    if length is not None and indicated is not None and length != indicated:
        raise InvalidInput(
            f"inconsistent length: Upload-Length {length} but Upload-Complete: ?1 with "
            f"{body_length} bytes of content at offset {offset}"
        )
    if length is not None and rec.length is not None and rec.length != length:
        raise InvalidInput(
            f"inconsistent length: Upload-Length {length}, but the upload was declared "
            f"with {rec.length}"
        )
    target = rec.length if rec.length is not None else length
    if not complete and target is not None and offset + (body_length or 0) > target:
        # Draft -05: "reject the request with a 400 (Bad Request)"; a 413 would speak of the
        # server's limits (-09 on: retry with a smaller append), not of the declared length.
        raise InvalidInput(
            f"{body_length} bytes at offset {offset} go beyond the upload's length {target}"
        )
    rec = await _transfer(request, svc, rec, offset, complete, length)
    return Response(status_code=204, headers=_state_headers(request, svc, rec))


async def _transfer(
    request: Request,
    svc: Services,
    rec: UploadRecord,
    offset: int,
    complete: bool,
    length: int | None = None,
) -> UploadRecord:
    """Stream the request content in at `offset`; complete the upload if asked to.

    A deferred length the request indicates (`length`, or offset + content with
    `Upload-Complete: ?1` and a Content-Length) is declared by the append itself, under the
    upload's lease: the engine refuses any byte beyond it and completes the upload at its
    end, and a refused append (nothing kept) leaves the length deferred, as tus PATCH does.
    """
    uploads = svc.engine.uploads
    body_length = parse_size("Content-Length", request.headers.get("content-length"))
    declare = length if rec.length is None else None
    if complete and body_length is not None:
        total = offset + body_length
        if rec.length is None:
            declare = total  # an Upload-Length given too was checked equal in _append
        elif rec.length != total:
            raise InvalidInput(
                f"inconsistent length: Upload-Complete: ?1 with {body_length} bytes at offset "
                f"{offset}, but the upload's length is {rec.length}"
            )
    if _has_body(request):
        limit = rec.length if rec.length is not None else declare
        try:
            rec = await append_body(request, svc, rec, offset, None, length=declare)
        except TooLarge:
            if limit is None or limit > svc.settings.max_upload_size:
                raise  # beyond max-size: the server's limit, a 413
            raise InvalidInput(  # beyond the declared length: a 400, as above
                f"the content goes beyond the upload's length {limit}"
            ) from None
    elif declare is not None:  # no content: nothing that could be refused after it
        rec = await asyncio.to_thread(uploads.declare_length, rec.upload_id, declare)
    if rec.state == upload_rows.OPEN and (complete or rec.offset == rec.length):
        if rec.length is None:  # chunked content: its length is known only now
            rec = await asyncio.to_thread(uploads.declare_length, rec.upload_id, rec.offset)
        if rec.offset != rec.length:
            raise InvalidInput(
                f"Upload-Complete: ?1, but the upload has {rec.offset} of its {rec.length} "
                "bytes; resume from HEAD's Upload-Offset"
            )
        # An empty append at the declared length makes the engine complete the upload.
        rec = await asyncio.to_thread(uploads.append, rec.upload_id, rec.offset, ())
    return rec


# --- headers ----------------------------------------------------------------------------------


async def _offset_header(request: Request, upload_id: str) -> None:
    """Put the upload's offset on an error response, if the upload is still there."""
    uploads = services(request).engine.uploads
    try:
        rec = await asyncio.to_thread(uploads.get_open, upload_id, TUS_KINDS)
    except EdgestoreError:
        return
    request.state.error_headers["Upload-Offset"] = str(rec.offset)


def _refuse_fields(request: Request, names: tuple[str, ...]) -> None:
    """Draft -05 (interop 6): HEAD and DELETE requests carrying these fields are a 400 (a
    malformed one counts as absent, as everywhere)."""
    present = [name for name in names if _field(request, name) is not None]
    if present and _version(request) == "6":
        raise InvalidInput(f"a {request.method} request must not carry {', '.join(present)}")


@contextlib.contextmanager
def _gone_as_not_found(request: Request) -> Iterator[None]:
    """Draft -05 (interop 6): an upload that is no longer active is a 404, not a 410."""
    try:
        yield
    except UploadGone as exc:
        if _version(request) != "6":
            raise
        raise NotFound(exc.message) from None


def _version(request: Request) -> str:
    return request.headers.get(INTEROP_HEADER, "").strip()


def _upload_complete(request: Request) -> bool:
    """`Upload-Complete: ?1`; absent, ?0 or malformed (so ignored, as the draft says): False."""
    return boolean_item(field_value(request.headers, "upload-complete")) is True


def _integer_field(request: Request, name: str) -> int | None:
    """`Upload-Offset` or `Upload-Length`; None when absent or malformed (ignored, as the
    draft says: "Other values MUST cause the entire header field to be ignored")."""
    return non_negative_integer_item(field_value(request.headers, name))


def _field(request: Request, name: str) -> int | bool | None:
    """A draft field's parsed value, None if absent or ignored."""
    if name == "Upload-Complete":
        return boolean_item(field_value(request.headers, name))
    return _integer_field(request, name)


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def _disposition_filename(header: str | None) -> str | None:
    """The file name in `Content-Disposition` (`filename*` per RFC 6266 preferred)."""
    if not header:
        return None
    msg = email.message.Message()
    msg["Content-Disposition"] = header
    params = msg.get_params([], header="content-disposition")[1:]
    names = [value for key, value in params if key == "filename"]
    names.sort(key=lambda value: not isinstance(value, tuple))  # `filename*` decodes to a tuple
    if not names:
        return None
    return email.utils.collapse_rfc2231_value(names[0]) or None


def _limits(request: Request, svc: Services, rec: UploadRecord | None = None) -> str:
    """`Upload-Limit`: the maximum size and, for an open upload, its remaining lifetime."""
    limits = [f"max-size={svc.settings.max_upload_size}"]
    if rec is not None and rec.state == upload_rows.OPEN and rec.expires_at is not None:
        key = "expires" if _version(request) == "6" else "max-age"
        limits.append(f"{key}={max(0, int(rec.expires_at - time.time()))}")
    return ",".join(limits)


def _state_headers(request: Request, svc: Services, rec: UploadRecord) -> dict[str, str]:
    """What HEAD, POST and PATCH responses say about an upload."""
    complete = rec.state == upload_rows.COMPLETE
    headers = {
        INTEROP_HEADER: _version(request),
        "Upload-Offset": str(rec.offset),
        "Upload-Complete": "?1" if complete else "?0",
        "Upload-Limit": _limits(request, svc, rec),
        "Cache-Control": "no-store",
    }
    length = rec.length if rec.length is not None or not complete else rec.offset
    if length is not None:
        headers["Upload-Length"] = str(length)
    return headers
