"""POST: create an upload (creation, creation-with-upload, creation-defer-length, and the
final uploads of the concatenation extension).

Upload-Metadata keys edgestore understands: `bucket`, `key`, `filename` (also `name`),
`filetype` (also `contentType`, `type`); all keys are kept with the object version.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from edgestore.api.state import Services, services
from edgestore.api.tus import ietf
from edgestore.api.tus.common import append_body, declared_checksum, describe, upload_url
from edgestore.api.tus.concatenation import parse_concat
from edgestore.api.tus.headers import (
    OFFSET_CONTENT_TYPE,
    UploadMetadata,
    parse_metadata,
    parse_size,
)
from edgestore.engine.keys import validate_key
from edgestore.engine.verify import Checksum, TrailingChecksum
from edgestore.errors import (
    InvalidInput,
    InvalidKey,
    TooLarge,
    UnsupportedMediaType,
    UploadStateError,
)
from edgestore.metadata.uploads import UploadRecord

router = APIRouter()


def object_key(meta: UploadMetadata) -> str | None:
    """The key the finished object gets: `key`, else the file name if it is a valid key
    (else the upload id, chosen by the engine)."""
    if meta.key is not None:
        return meta.key
    if meta.filename:
        try:
            return validate_key(meta.filename)
        except InvalidKey:
            return None
    return None


@router.post("", include_in_schema=False)
@router.post("/", include_in_schema=False)
async def create(request: Request) -> Response:
    if ietf.is_draft(request):
        return await ietf.create(request)
    svc = services(request)
    h = request.headers
    meta = parse_metadata(h.get("upload-metadata"))
    concat = parse_concat(h.get("upload-concat"))
    defer = h.get("upload-defer-length")
    length = parse_size("Upload-Length", h.get("upload-length"))
    if defer is not None and defer.strip() != "1":
        raise InvalidInput("Upload-Defer-Length must be 1")

    if concat is not None and not concat.partial:
        if length is not None:
            raise InvalidInput("a final upload must not carry Upload-Length")
        if _has_body(request):  # as tusd: its bytes would be dropped behind a 201
            raise UploadStateError(
                "a final (concatenated) upload takes no bytes: send them to its partial uploads"
            )
        rec = await asyncio.to_thread(
            svc.engine.uploads.concatenate,
            concat.parts,
            bucket=meta.bucket,
            key=object_key(meta),
            content_type=meta.content_type,
            filename=meta.filename,
            user_metadata=meta.user,
            partial_urls=concat.urls,
        )
        return _created(request, svc, rec)

    if (length is None) == (defer is None):
        raise InvalidInput("send exactly one of Upload-Length and Upload-Defer-Length: 1")
    # Everything about the body is checked before the upload exists.
    has_body = _has_body(request)
    checksum: Checksum | TrailingChecksum | None = None
    body_length: int | None = None
    if has_body:
        content_type = h.get("content-type", "").split(";")[0].strip().lower()
        if content_type != OFFSET_CONTENT_TYPE:
            raise UnsupportedMediaType(
                f"creation-with-upload needs Content-Type: {OFFSET_CONTENT_TYPE}"
            )
        checksum = declared_checksum(request)
        body_length = parse_size("Content-Length", h.get("content-length"))
        if length is not None and body_length is not None and body_length > length:
            raise TooLarge(f"a {body_length}-byte body exceeds Upload-Length {length}")
        largest = svc.settings.max_upload_size  # a deferred length's bound (Tus-Max-Size)
        if length is None and body_length is not None and body_length > largest:
            raise TooLarge(f"a {body_length}-byte body exceeds the maximum of {largest}")
    partial = concat is not None and concat.partial
    rec = await asyncio.to_thread(
        svc.engine.uploads.create,
        kind="tus",
        bucket=meta.bucket,  # a partial's: the bucket it is for (only its keys may touch it)
        key=None if partial else object_key(meta),
        length=length,
        content_type=meta.content_type,
        filename=meta.filename,
        user_metadata=meta.user,
        is_partial=partial,
        body_length=body_length if has_body else None,
    )
    if has_body:
        try:
            rec = await append_body(request, svc, rec, 0, checksum)
        except BaseException:
            # The client never learns the Location of an upload whose creation failed: drop it
            # rather than leave an orphan nobody can resume or delete.
            await asyncio.shield(asyncio.to_thread(svc.engine.uploads.discard, rec.upload_id))
            raise
    elif rec.length == 0:  # nothing to send: the empty object exists at once
        rec = await asyncio.to_thread(svc.engine.uploads.append, rec.upload_id, 0, ())
    return _created(request, svc, rec)


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def _created(request: Request, svc: Services, rec: UploadRecord) -> Response:
    headers = describe(request, svc, rec)
    headers["Location"] = upload_url(request, svc, rec.upload_id)
    return Response(status_code=201, headers=headers)
