"""Objects: list, read (GET/HEAD with Range and ETags), version history, delete.

GET    /objects?bucket=&prefix=&after=&limit=     list latest versions
GET    /objects/{bucket}/{key}?version=N          the bytes (HEAD: headers only)
DELETE /objects/{bucket}/{key}?version=N          delete that version (default: latest;
                                                  If-Match: its ETag, or 412)
GET    /ids/{object_id}?version=N                 the bytes, by object id (HEAD, DELETE too)
GET    /ids/{object_id}/versions?after=&limit=    the version history, newest first, paged
GET    /ids/{object_id}/info?version=N            one version's metadata as JSON
(HEAD too on every GET route: RFC 9110 9.1.)
A blank query parameter (`?limit=`, a form's empty field) counts as not given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from edgestore.api import conditional
from edgestore.api.download import etag_of, object_response
from edgestore.api.state import services
from edgestore.engine import ObjectSelector
from edgestore.errors import PreconditionFailed
from edgestore.metadata import objects as object_rows
from edgestore.metadata.objects import VersionInfo


class BlankIsAbsentRoute(APIRoute):
    """A route that drops blank query parameters (`limit=`, or a bare `limit`) before FastAPI
    parses them: docs/api.md says a blank one counts as not given, and FastAPI would try to
    read '' as a number (400) rather than take the default."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            query: bytes = request.scope.get("query_string", b"")
            kept = b"&".join(p for p in query.split(b"&") if p.partition(b"=")[2])
            if kept != query:  # a copy: the logs and middleware keep what the client sent
                request = Request({**request.scope, "query_string": kept}, request.receive)
            return await handler(request)

        return route


router = APIRouter(tags=["objects"], route_class=BlankIsAbsentRoute)

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


class VersionList(BaseModel):
    versions: list[ObjectVersion]
    # Pass as `after` for the next page (the last version number listed); null on the last.
    next_after: int | None


PageLimit = Annotated[int, Query(ge=1, le=10_000, description="Items on a page.")]


async def _stat(request: Request, sel: ObjectSelector) -> VersionInfo:
    return await asyncio.to_thread(services(request).engine.objects.stat, sel)


def _require_match(request: Request, info: VersionInfo) -> None:
    """If-Match (RFC 9110 13.1.1, strong comparison): a DELETE of "the latest" sent again
    (a client's retry, a proxy passing it on to another node) finds another version the
    latest, whose ETag differs, and is refused instead of deleting that one too."""
    header = conditional.field(request, "if-match")
    # `*`: any current version, and there is one, `info`.
    if header is None or conditional.matches(header, etag_of(info), weak=False):
        return
    raise PreconditionFailed(
        f"If-Match {header.strip()!r} does not match {info.bucket}/{info.key} version "
        f"{info.version} (ETag {etag_of(info)}), the version this DELETE names: the one meant "
        "was deleted already or another is the latest now; nothing was deleted"
    )


async def _delete(request: Request, sel: ObjectSelector) -> Response:
    info = await _stat(request, sel)
    _require_match(request, info)
    # That very version (by its id): never one that became the latest meanwhile.
    await asyncio.to_thread(services(request).engine.objects.delete, info)
    return Response(status_code=204)


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
    limit: PageLimit = 1000,
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


@router.delete(
    "/objects/{bucket}/{key:path}",
    summary="Delete a version",
    status_code=204,
    responses={412: {"description": "If-Match does not match the version named"}},
)
async def delete_object(
    request: Request, bucket: str, key: str, version: VersionQuery = None
) -> Response:
    return await _delete(request, ObjectSelector(bucket=bucket, key=key, version=version))


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


@router.delete(
    "/ids/{object_id}",
    summary="Delete a version by object id",
    status_code=204,
    responses={412: {"description": "If-Match does not match the version named"}},
)
async def delete_by_id(request: Request, object_id: str, version: VersionQuery = None) -> Response:
    return await _delete(request, ObjectSelector(object_id=object_id, version=version))


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
    response_model=VersionList,
    summary="Versions, newest first",
)
async def versions(
    request: Request,
    object_id: str,
    after: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="Return versions below this one.")
    ] = None,
    limit: PageLimit = 1000,
) -> VersionList:
    await _stat(request, ObjectSelector(object_id=object_id))
    # One more than asked, as the object listing does: a full last page says it is the last.
    found = await asyncio.to_thread(
        services(request).engine.objects.versions, object_id, after=after, limit=limit + 1
    )
    page = found[:limit]
    return VersionList(
        versions=[ObjectVersion.of(v) for v in page],
        next_after=page[-1].version if len(found) > limit else None,
    )
