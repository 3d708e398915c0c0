"""PATCH: append bytes at the upload's offset (core protocol, with the checksum extension).

`Upload-Offset` must equal the durable offset (409 otherwise); the body streams into the
engine, and the response's `Upload-Offset` is the new durable offset: every byte it covers is
on disk in chunks and rows. With `Upload-Checksum` (a header, or a trailer after a chunked
body: checksum-trailer), nothing of this request is kept unless the checksum matches (460).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from edgestore.api.state import services
from edgestore.api.tus import ietf
from edgestore.api.tus.common import TUS_KINDS, append_body, declared_checksum, describe
from edgestore.api.tus.headers import OFFSET_CONTENT_TYPE, parse_size
from edgestore.errors import (
    InvalidInput,
    OffsetConflict,
    TooLarge,
    UnsupportedMediaType,
    UploadStateError,
)
from edgestore.metadata import uploads as upload_rows

router = APIRouter()


@router.patch("/{upload_id}", include_in_schema=False)
async def patch(upload_id: str, request: Request) -> Response:
    if ietf.is_draft(request):
        return await ietf.append(upload_id, request)
    svc = services(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType(
            f"PATCH needs Content-Type: {OFFSET_CONTENT_TYPE}, got {content_type or 'none'!r}"
        )
    offset = parse_size("Upload-Offset", request.headers.get("upload-offset"), required=True)
    assert offset is not None
    length = parse_size("Upload-Length", request.headers.get("upload-length"))
    checksum = declared_checksum(request)
    body_length = parse_size("Content-Length", request.headers.get("content-length"))

    uploads = svc.engine.uploads
    rec = await asyncio.to_thread(uploads.get_open, upload_id, TUS_KINDS)
    if rec.concat_of:
        raise UploadStateError("a final (concatenated) upload cannot be patched")
    # Cheap checks before a byte is read (and before anything changes); the engine checks
    # again under the upload's lock.
    if offset != rec.offset:
        raise OffsetConflict(
            f"Upload-Offset {offset} does not match the upload's offset {rec.offset}",
            expected=rec.offset,
        )
    if length is not None and rec.length is not None and length != rec.length:
        # creation-defer-length: "Once set the length MUST NOT be changed" (tusd: 400).
        raise InvalidInput(
            f"Upload-Length {length} differs from the upload's length {rec.length}, "
            "which cannot change once set"
        )
    if length is not None and length < offset:
        raise InvalidInput(f"Upload-Length {length} is below the {offset} bytes already received")
    final_length = rec.length if rec.length is not None else length
    if final_length is not None and body_length is not None and offset + body_length > final_length:
        raise TooLarge(
            f"{body_length} bytes at offset {offset} go beyond the upload's length {final_length}"
        )
    # A deferred length is declared by the append itself, so a refused one leaves it deferred.
    declared = length if rec.length is None else None
    if final_length is not None and offset == final_length and not body_length:
        if rec.state == upload_rows.OPEN:  # every byte is there: an empty append completes it
            rec = await asyncio.to_thread(uploads.append, upload_id, offset, (), length=declared)
        return Response(status_code=204, headers=describe(request, svc, rec))
    rec = await append_body(request, svc, rec, offset, checksum, length=declared)
    return Response(status_code=204, headers=describe(request, svc, rec))
