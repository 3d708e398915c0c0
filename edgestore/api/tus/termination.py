"""DELETE: terminate an upload (termination extension); its staged bytes are released."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from edgestore.api.state import services
from edgestore.api.tus import ietf
from edgestore.api.tus.common import TUS_KINDS
from edgestore.api.tus.headers import base_headers

router = APIRouter()


@router.delete("/{upload_id}", include_in_schema=False)
async def terminate(upload_id: str, request: Request) -> Response:
    if ietf.is_draft(request):
        return await ietf.cancel(upload_id, request)
    uploads = services(request).engine.uploads
    await asyncio.to_thread(uploads.get_open, upload_id, TUS_KINDS)  # 404 / 410 first
    await asyncio.to_thread(uploads.terminate, upload_id)
    return Response(status_code=204, headers=base_headers())
