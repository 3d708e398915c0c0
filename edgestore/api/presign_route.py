"""`POST /v1/presign`: an API key mints a pre-signed URL (api/presign.py signs and checks them;
this route is apart so the CLI's `presign` signs without loading FastAPI)."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from edgestore.api.identity import READ, UPLOAD, Target, identity_of
from edgestore.api.jsonbody import CappedJsonRoute
from edgestore.api.presign import ACTION_DOWNLOAD, ACTION_UPLOAD, LARGEST_SIZE, Grant, Signer
from edgestore.api.state import services
from edgestore.api.tus.common import base_url
from edgestore.engine.keys import DEFAULT_BUCKET, validate_bucket, validate_key
from edgestore.errors import InvalidInput

router = APIRouter(tags=["access"], route_class=CappedJsonRoute)  # JSON bodies capped


class PresignRequest(BaseModel):
    action: Literal["upload", "download"]
    bucket: str = Field(DEFAULT_BUCKET, max_length=63)
    key: str = Field(max_length=1024)
    expires_in: int = Field(3600, ge=1, description="Seconds the URL stays valid.")
    max_size: int | None = Field(
        None, ge=0, le=LARGEST_SIZE, description="Upload: largest Upload-Length."
    )
    content_type: str | None = Field(
        None, max_length=255, pattern=r"^[\x21-\x7e][\x20-\x7e]*$", description="Upload: filetype."
    )


class PresignResponse(BaseModel):
    url: str
    methods: list[str]
    expires_at: int


@router.post("/v1/presign", response_model=PresignResponse, summary="Mint a pre-signed URL")
async def presign(body: PresignRequest, request: Request) -> PresignResponse:
    """A URL that lets its bearer (a browser) upload or download one object until it expires.

    Minting needs the `upload` scope for uploads and `read` for downloads, and a key limited
    to a bucket or prefix can only sign inside it.
    """
    identity = identity_of(request)
    identity.require(UPLOAD if body.action == ACTION_UPLOAD else READ)
    validate_bucket(body.bucket)
    validate_key(body.key)
    identity.require_target(Target(body.bucket, body.key))
    svc = services(request)
    limit = svc.settings.presign_max_seconds
    if body.expires_in > limit:
        raise InvalidInput(f"expires_in {body.expires_in} s is above presign_max_seconds ({limit})")
    if body.action == ACTION_DOWNLOAD and (body.max_size is not None or body.content_type):
        raise InvalidInput("max_size and content_type only apply to upload URLs")
    grant = Grant(
        body.action,
        body.bucket,
        body.key,
        int(time.time()) + body.expires_in,
        body.max_size,
        body.content_type,
        identity.key_id,
    )
    signer: Signer = request.app.state.security.signer
    methods = ["POST"] if grant.action == ACTION_UPLOAD else ["GET", "HEAD"]
    return PresignResponse(
        url=signer.url(base_url(request, svc), grant), methods=methods, expires_at=grant.expires
    )
