"""GET on a finished upload's URL returns the object, as tusd does."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from edgestore.api.download import object_response
from edgestore.api.state import services
from edgestore.api.tus.common import TUS_KINDS
from edgestore.errors import NotFound, UploadGone
from edgestore.metadata import uploads as upload_rows

router = APIRouter()


@router.get("/{upload_id}", include_in_schema=False)
async def download(upload_id: str, request: Request) -> Response:
    svc = services(request)
    rec = await asyncio.to_thread(svc.engine.uploads.get, upload_id, TUS_KINDS)
    if rec.state in (upload_rows.TERMINATED, upload_rows.EXPIRED):
        raise UploadGone(f"upload {upload_id} was {rec.state}; its object is at /objects")
    if rec.version_id is None and rec.concat_of is not None:
        raise NotFound(f"final upload {upload_id} is waiting for its partial uploads")
    if rec.version_id is None:
        raise NotFound(f"upload {upload_id} is not finished ({rec.offset} bytes so far)")
    info = await asyncio.to_thread(svc.engine.objects.by_version_id, rec.version_id)
    return await object_response(request, svc, info)
