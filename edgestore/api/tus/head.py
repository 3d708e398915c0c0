"""HEAD: the upload's durable offset (core protocol); what a client resumes from."""

from __future__ import annotations

import asyncio
import dataclasses

from fastapi import APIRouter, Request, Response

from edgestore.api.state import services
from edgestore.api.tus import ietf
from edgestore.api.tus.common import TUS_KINDS, describe
from edgestore.metadata import uploads as upload_rows

router = APIRouter()


@router.head("/{upload_id}", include_in_schema=False)
async def head(upload_id: str, request: Request) -> Response:
    if ietf.is_draft(request):
        return await ietf.head(upload_id, request)
    svc = services(request)
    # A request whose client went quiet or was cut off may hold bytes not yet durable: it
    # keeps them first, so the offset reported here is the one the next PATCH is accepted at.
    await asyncio.to_thread(svc.engine.uploads.settle, upload_id)
    rec = await asyncio.to_thread(svc.engine.uploads.get_open, upload_id, TUS_KINDS)
    if rec.concat_of is not None and rec.length is None:
        # concatenation: a waiting final's Upload-Length is due as soon as it can be computed
        length = await asyncio.to_thread(svc.engine.uploads.final_length, rec)
        rec = dataclasses.replace(rec, length=length)
    headers = describe(request, svc, rec)
    if rec.state == upload_rows.COMPLETE and rec.length is not None:
        headers["Content-Length"] = str(rec.length)  # what GET sends: the object (as tusd)
    response = Response(status_code=200, headers=headers)
    if rec.state != upload_rows.COMPLETE:
        # RFC 9110 8.6: a HEAD's Content-Length must be its GET's, here an error document's;
        # none rather than the 0 an empty response would get.
        del response.headers["content-length"]
    return response
