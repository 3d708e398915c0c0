"""OPTIONS: what this tus server supports (core protocol)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from edgestore.api.state import services
from edgestore.api.tus import ietf
from edgestore.api.tus.headers import EXTENSIONS, TUS_VERSION
from edgestore.codec.hashing import CHECKSUM_ALGORITHMS

router = APIRouter()


@router.options("", include_in_schema=False)
@router.options("/", include_in_schema=False)
@router.options("/{upload_id}", include_in_schema=False)
async def options(request: Request) -> Response:
    if ietf.is_draft(request):
        return ietf.options(request)
    return Response(
        status_code=204,
        headers={
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(EXTENSIONS),
            "Tus-Max-Size": str(services(request).settings.max_upload_size),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        },
    )
