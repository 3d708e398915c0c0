"""Objects: list, read (GET/HEAD with Range and ETags), version history, delete.

GET    /objects?bucket=&prefix=&after=&limit=     list latest versions
GET    /objects/{bucket}/{key}?version=N          the bytes (HEAD: headers only)
DELETE /objects/{bucket}/{key}?version=N          delete that version (default: latest)
GET    /ids/{object_id}?version=N                 the bytes, by object id (HEAD, DELETE too)
GET    /ids/{object_id}/versions                  the version history
GET    /ids/{object_id}/info?version=N            one version's metadata as JSON
(HEAD too on every GET route: RFC 9110 9.1.)
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from edgestore.api.download import object_response
from edgestore.api.state import services
from edgestore.engine import ObjectSelector
from edgestore.metadata import objects as object_rows
from edgestore.metadata.objects import VersionInfo

router = APIRouter(tags=["objects"])

# Bounded like the column (32-bit): PostgreSQL answers a larger one with an error, not "none".
VersionQuery = Annotated[
    int | None, Query(ge=1, le=2**31 - 1, description="Version number; default latest.")
]


class ObjectVersion(BaseModel):
    object_id: str
    version_id: str
    bucket: str
    key: str
    version: int
    size: int
    sha256: str | None
    etag: str
    content_type: str | None
    filename: str | None
    created_at: float
    metadata: dict[str, Any]

    @classmethod
    def of(cls, v: VersionInfo) -> ObjectVersion:
        return cls(
            object_id=v.object_id,
            version_id=v.version_id,
            bucket=v.bucket,
            key=v.key,
            version=v.version,
            size=v.size,
            sha256=v.sha256,
            etag=v.etag,
            content_type=v.content_type,
            filename=v.filename,
            created_at=v.created_at,
            metadata=v.user_metadata,
        )


class ObjectList(BaseModel):
    objects: list[ObjectVersion]
    # Pass as `after` for the next page (the key, or bucket/key when listing every bucket);
    # null on the last page.
    next_after: str | None


async def _stat(request: Request, sel: ObjectSelector) -> VersionInfo:
    return await asyncio.to_thread(services(request).engine.objects.stat, sel)


@router.api_route(
    "/objects",
    methods=["GET", "HEAD"],
    response_model=ObjectList,
    summary="List objects (latest versions)",
)
async def list_objects(
    request: Request,
    bucket: str | None = None,
    prefix: str = "",
    after: Annotated[str | None, Query(description="Return keys after this one.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> ObjectList:
    bucket = bucket or None  # `?bucket=` (an empty form field): every bucket, as `prefix=`
    # One more than asked: a page that ends exactly at the last object says so (null
    # next_after) instead of sending the client for an empty page.
    found = await asyncio.to_thread(
        services(request).engine.objects.list,
        bucket=bucket,
        prefix=prefix,
        after=after,
        limit=limit + 1,
    )
    page = found[:limit]
    return ObjectList(
        objects=[ObjectVersion.of(v) for v in page],
        next_after=object_rows.cursor(page[-1], bucket) if len(found) > limit else None,
    )


@router.get(
    "/objects/{bucket}/{key:path}",
    summary="Download an object",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {}, 304: {}, 416: {}},
)
async def get_object(
    request: Request, bucket: str, key: str, version: VersionQuery = None
) -> Response:
    info = await _stat(request, ObjectSelector(bucket=bucket, key=key, version=version))
    return await object_response(request, services(request), info)


@router.head("/objects/{bucket}/{key:path}", summary="Object headers", response_class=Response)
async def head_object(
    request: Request, bucket: str, key: str, version: VersionQuery = None
) -> Response:
    info = await _stat(request, ObjectSelector(bucket=bucket, key=key, version=version))
    return await object_response(request, services(request), info, head=True)


@router.delete("/objects/{bucket}/{key:path}", summary="Delete a version", status_code=204)
async def delete_object(
    request: Request, bucket: str, key: str, version: VersionQuery = None
) -> Response:
    info = await _stat(request, ObjectSelector(bucket=bucket, key=key, version=version))
    await asyncio.to_thread(services(request).engine.objects.delete, info)
    return Response(status_code=204)


@router.get(
    "/ids/{object_id}",
    summary="Download an object by id",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {}, 304: {}, 416: {}},
)
async def get_by_id(request: Request, object_id: str, version: VersionQuery = None) -> Response:
    info = await _stat(request, ObjectSelector(object_id=object_id, version=version))
    return await object_response(request, services(request), info)


@router.head("/ids/{object_id}", summary="Object headers by id", response_class=Response)
async def head_by_id(request: Request, object_id: str, version: VersionQuery = None) -> Response:
    info = await _stat(request, ObjectSelector(object_id=object_id, version=version))
    return await object_response(request, services(request), info, head=True)


@router.delete("/ids/{object_id}", summary="Delete a version by object id", status_code=204)
async def delete_by_id(request: Request, object_id: str, version: VersionQuery = None) -> Response:
    info = await _stat(request, ObjectSelector(object_id=object_id, version=version))
    await asyncio.to_thread(services(request).engine.objects.delete, info)
    return Response(status_code=204)


@router.api_route(
    "/ids/{object_id}/info",
    methods=["GET", "HEAD"],
    response_model=ObjectVersion,
    summary="Version metadata",
)
async def info_by_id(
    request: Request, object_id: str, version: VersionQuery = None
) -> ObjectVersion:
    return ObjectVersion.of(
        await _stat(request, ObjectSelector(object_id=object_id, version=version))
    )


@router.api_route(
    "/ids/{object_id}/versions",
    methods=["GET", "HEAD"],
    response_model=list[ObjectVersion],
    summary="Versions",
)
async def versions(request: Request, object_id: str) -> list[ObjectVersion]:
    await _stat(request, ObjectSelector(object_id=object_id))
    found = await asyncio.to_thread(services(request).engine.objects.versions, object_id)
    return [ObjectVersion.of(v) for v in found]
