"""The tus 1.0.0 server at /files/: one module per method and extension, as tusd and
@tus/server are organised. Every response carries Tus-Resumable; requests other than OPTIONS
and GET must carry it too (412 otherwise). Requests carrying Upload-Draft-Interop-Version speak
the IETF resumable-upload draft instead (ietf.py) and need no Tus-Resumable."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from edgestore.api.tus import creation, download, head, ietf, options, patch, termination
from edgestore.api.tus.common import PREFIX
from edgestore.api.tus.headers import TUS_VERSION, base_headers, require_tus_resumable


async def tus_request(request: Request) -> None:
    if ietf.is_draft(request):
        ietf.prepare(request)
        return
    request.state.error_headers = {**base_headers(), "Tus-Version": TUS_VERSION}
    if request.method not in ("OPTIONS", "GET"):
        require_tus_resumable(request)


router = APIRouter(dependencies=[Depends(tus_request)])
for module in (options, creation, head, patch, termination, download):
    router.include_router(module.router, prefix=PREFIX)
