"""The native dedup-aware upload API under /v1: only chunks the store lacks cross the network.

GET    /v1/params                                   the store's chunker and hash
POST   /v1/uploads                                  open a session
GET    /v1/uploads/{id}                             where a session stands (resume)
DELETE /v1/uploads/{id}                             abort it, releasing its pins
POST   /v1/uploads/{id}/missing                     which of these chunk ids are missing?
PUT    /v1/uploads/{id}/chunks/{chunk_id}           one chunk's raw bytes, verified first
POST   /v1/uploads/{id}/finalize                    commit the manifest + whole-file SHA-256

The protocol is described with examples in docs/client.md; errors map in api/errors.py.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edgestore.api.identity import identity_of
from edgestore.api.jsonbody import JSON_BODY_BYTES, CappedJsonRoute, content_length, read_capped
from edgestore.api.logs import submit_in_context
from edgestore.api.objects import ObjectVersion
from edgestore.api.state import Services, services
from edgestore.engine.keys import DEFAULT_BUCKET
from edgestore.engine.native import MAX_MISSING_BATCH, ManifestChunk, NativeUploads, check_sha256
from edgestore.errors import InvalidInput, TooLarge
from edgestore.metadata.idempotency import IdempotencyKey
from edgestore.metadata.uploads import OPEN, UploadRecord

# Chunk bodies are held whole in memory (each at most the max chunk size) while they are
# verified and stored; this bounds how many at once, hence memory (64 x 8 MiB by default).
MAX_CHUNK_BODIES = 64
# A chunk body from a client silent this long counts as abandoned (its slot is freed). Not a
# deadline for the whole body: over a slow uplink shared by the client's connections, one
# chunk can take many minutes, and cutting it there failed every PUT, and so the upload.
CHUNK_BODY_IDLE_SECONDS = 60.0
MAX_IDEMPOTENCY_KEY = 255  # characters of an Idempotency-Key (a UUID is 36)
MANIFEST_ENTRY_BYTES = 128  # per finalize entry ({"id": "<64 hex>", "size": n}, ~95 bytes)


class _NativeRoute(CappedJsonRoute):
    """JSON bodies capped (api/jsonbody.py); a finalize's by the session's size."""

    async def body_limit(self, request: Request) -> int:
        if self.name != finalize.__name__:
            return JSON_BODY_BYTES
        native = _native(services(request))
        entries = await asyncio.to_thread(
            native.max_manifest_entries, request.path_params["upload_id"]
        )
        return JSON_BODY_BYTES + entries * MANIFEST_ENTRY_BYTES


router = APIRouter(prefix="/v1", tags=["native uploads"], route_class=_NativeRoute)

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# PostgreSQL cannot store NUL in text or JSON: such values are refused here (400), not at commit.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]


class ChunkerParamsOut(BaseModel):
    algorithm: str = Field(description="Content-defined chunking: FastCDC 2020 (pyfastcdc).")
    hash: str = Field(description="Chunk id: the lower-case hex digest of the raw chunk.")
    min_size: int
    avg_size: int
    max_size: int


class StoreParamsOut(BaseModel):
    api_version: int = 1
    chunker: ChunkerParamsOut
    max_chunk_size: int = Field(description="A larger chunk body is refused with 413.")
    max_upload_size: int
    max_missing_batch: int = Field(description="Chunk ids per /missing request, at most.")


class CreateUploadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: Text = DEFAULT_BUCKET
    key: Text | None = Field(None, description="Default: the filename if valid, else the id.")
    size: int = Field(ge=0, description="The object's size in bytes.")
    sha256: Sha256Hex | None = Field(None, description="Whole-file SHA-256, if known now.")
    content_type: Text | None = Field(None, max_length=255)
    filename: Text | None = Field(None, max_length=1024)
    metadata: dict[Text, Text] = Field(default_factory=dict, max_length=64)


class UploadSessionOut(BaseModel):
    upload_id: str
    state: str = Field(description="open, complete (finalized), expired or terminated.")
    bucket: str | None
    key: str | None
    size: int | None
    expires_at: float | None = Field(description="Unix time after which the session is gone.")
    pinned_chunks: int = Field(0, description="Stored chunks this session holds.")
    pinned_bytes: int = Field(0, description="Their raw bytes: what a resume need not send.")
    params: StoreParamsOut
    version: ObjectVersion | None = Field(None, description="Set once finalized.")


class MissingIn(BaseModel):
    chunk_ids: list[Sha256Hex] = Field(max_length=MAX_MISSING_BATCH)
    offset: int | None = Field(
        None,
        ge=0,
        description="With sizes: chunk_ids are the file's chunks in order (repeats included) "
        "from this byte offset, so the server hashes the whole file as they arrive and "
        "finalize need not read the object back.",
    )
    sizes: list[int] | None = Field(
        None, max_length=MAX_MISSING_BATCH, description="The size of each of chunk_ids."
    )


class MissingOut(BaseModel):
    missing: list[str] = Field(description="Ids the store lacks, in request order: PUT these.")
    pinned: int = Field(description="How many of the others are now held by the session.")


class ChunkOut(BaseModel):
    chunk_id: str
    size: int
    new: bool = Field(description="False: the store already had it (nothing was read).")


class ManifestChunkIn(BaseModel):
    id: Sha256Hex
    size: int = Field(gt=0)


class FinalizeIn(BaseModel):
    chunks: list[ManifestChunkIn] = Field(description="The object's chunks, in order.")
    sha256: Sha256Hex | None = Field(None, description="Whole-file SHA-256 (or at creation).")


class FinalizedOut(ObjectVersion):
    upload_id: str
    verified_by: str = Field(
        description="streamed (hashed as the chunks arrived), read-back (some chunks read back "
        "at finalize), known-manifest, or already (a retry)."
    )


def _native(svc: Services) -> NativeUploads:
    return svc.engine.native


def _params(svc: Services) -> StoreParamsOut:
    p = _native(svc).params()
    return StoreParamsOut(
        chunker=ChunkerParamsOut(
            algorithm=p.algorithm,
            hash=p.hash,
            min_size=p.min_size,
            avg_size=p.avg_size,
            max_size=p.max_size,
        ),
        max_chunk_size=p.max_size,
        max_upload_size=svc.settings.max_upload_size,
        max_missing_batch=MAX_MISSING_BATCH,
    )


def _session_out(
    svc: Services,
    rec: UploadRecord,
    *,
    pinned: tuple[int, int] = (0, 0),
    version: ObjectVersion | None = None,
) -> UploadSessionOut:
    return UploadSessionOut(
        upload_id=rec.upload_id,
        state=rec.state,
        bucket=rec.bucket,
        key=rec.key,
        size=rec.length,
        expires_at=rec.expires_at,
        pinned_chunks=pinned[0],
        pinned_bytes=pinned[1],
        params=_params(svc),
        version=version,
    )


@router.get("/params", response_model=StoreParamsOut, summary="The store's chunker and hash")
async def params(request: Request) -> StoreParamsOut:
    """Chunk exactly this way and the store recognises every chunk it already holds."""
    return _params(services(request))


@router.post(
    "/uploads", status_code=201, response_model=UploadSessionOut, summary="Open an upload session"
)
async def create(
    body: CreateUploadIn,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="A value unique to this creation (a UUID), sent again by its retries: "
            "a repeat gets the session the first request made (same answer), so a lost answer "
            "leaves no orphan session. Scoped to the caller; the same key with another "
            "request is refused (422). It lives as long as its session."
        ),
    ] = None,
) -> UploadSessionOut:
    """Sessions live in the database: any node serves any later request of this session."""
    svc = services(request)
    rec = await asyncio.to_thread(
        _native(svc).create,
        size=body.size,
        bucket=body.bucket,
        key=body.key,
        sha256=body.sha256,
        content_type=body.content_type,
        filename=body.filename,
        metadata=body.metadata,
        idempotency=_idempotency(request, idempotency_key, body),
    )
    response.headers["Location"] = f"/v1/uploads/{rec.upload_id}"
    if rec.state != OPEN:  # a repeated creation whose session was finalized meanwhile
        return await status(rec.upload_id, request)
    return _session_out(svc, rec)


def _idempotency(request: Request, raw: str | None, body: CreateUploadIn) -> IdempotencyKey | None:
    """The creation's Idempotency-Key (a Structured Field string per the IETF httpapi draft,
    or bare), bound to its caller (the API key; anyone, with auth off) and its request."""
    if raw is None:
        return None
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 0 < len(value) <= MAX_IDEMPOTENCY_KEY or not (value.isascii() and value.isprintable()):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters "
            "(a value unique to this creation, such as a UUID)"
        )
    identity = identity_of(request)
    owner = identity.revocable  # the API key, or the one behind a pre-signed URL
    caller = f"key:{owner}" if owner else identity.kind
    return IdempotencyKey.of(caller, value, body.model_dump(mode="json"))


@router.get(
    "/uploads/{upload_id}", response_model=UploadSessionOut, summary="A session's state (resume)"
)
async def status(upload_id: str, request: Request) -> UploadSessionOut:
    svc = services(request)
    st = await asyncio.to_thread(_native(svc).status, upload_id)
    version = ObjectVersion.of(st.version) if st.version else None
    return _session_out(svc, st.upload, pinned=(st.pinned_chunks, st.pinned_bytes), version=version)


@router.delete("/uploads/{upload_id}", status_code=204, summary="Abort a session")
async def abort(upload_id: str, request: Request) -> Response:
    """Releases the chunks the session pinned; a finalized session's object stays."""
    await asyncio.to_thread(_native(services(request)).abort, upload_id)
    return Response(status_code=204)


@router.post(
    "/uploads/{upload_id}/missing",
    response_model=MissingOut,
    summary="Which of these chunk ids are missing?",
)
async def missing(upload_id: str, body: MissingIn, request: Request) -> MissingOut:
    """The chunks the store has are pinned to the session in the same transaction, so they
    cannot be collected before finalize: the client never needs to send them."""
    native = _native(services(request))
    on_dedup = services(request).metrics.observe_pinned
    lacking = await asyncio.to_thread(
        partial(native.missing, offset=body.offset, sizes=body.sizes, on_dedup=on_dedup),
        upload_id,
        body.chunk_ids,
    )
    return MissingOut(missing=lacking, pinned=len(set(body.chunk_ids)) - len(lacking))


@router.put(
    "/uploads/{upload_id}/chunks/{chunk_id}",
    response_model=ChunkOut,
    status_code=201,
    summary="Upload one chunk by its SHA-256",
    responses={200: {"model": ChunkOut, "description": "Already stored: body not read."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def put_chunk(upload_id: str, chunk_id: str, request: Request) -> JSONResponse:
    """The body is the raw chunk. It is hashed before anything is stored (422 if it is not
    `chunk_id`); a chunk already stored is answered at once, unread: with `Expect:
    100-continue` its bytes never leave the client (uvicorn sends 100 only when the body is
    first read)."""
    svc = services(request)
    native = _native(svc)
    limit = native.params().max_size
    declared = content_length(request)
    if declared is not None and declared > limit:
        raise TooLarge(f"chunk of {declared} bytes exceeds the store's maximum of {limit}")
    check_sha256(chunk_id)
    size = await asyncio.to_thread(
        native.pin_if_stored, upload_id, chunk_id, svc.metrics.observe_pinned
    )
    if size is not None:
        # An unread body that the client holds back (100-continue) would be parsed as the
        # next request: close the connection instead.
        headers = {"Connection": "close"} if _expects_continue(request) else None
        body = ChunkOut(chunk_id=chunk_id, size=size, new=False)
        return JSONResponse(body.model_dump(), 200, headers=headers)
    metrics = svc.metrics
    async with _body_slots(request):
        # Counted as tus bodies are: streaming while it arrives and is stored; its bytes
        # received however the request ends (refused, cut off).
        metrics.uploads_active.inc()
        try:
            raw = await read_capped(
                request,
                limit,
                what="chunk body",
                idle_timeout=CHUNK_BODY_IDLE_SECONDS,
                on_received=metrics.bytes_in.inc,
            )
            stored = await asyncio.wrap_future(
                submit_in_context(svc.uploads, native.put_chunk, upload_id, chunk_id, raw)
            )
        finally:
            metrics.uploads_active.dec()
    metrics.observe_chunk(stored)
    body = ChunkOut(chunk_id=chunk_id, size=len(raw), new=stored.is_new)
    return JSONResponse(body.model_dump(), 201 if stored.is_new else 200)


@router.post(
    "/uploads/{upload_id}/finalize",
    response_model=FinalizedOut,
    summary="Commit the manifest as an object version",
)
async def finalize(upload_id: str, body: FinalizeIn, request: Request) -> FinalizedOut:
    """Every chunk must be stored (409 lists the missing ones) and the bytes must hash to the
    whole-file SHA-256 (422, no version); the version and the release of the session's pins
    are one transaction. Idempotent: a retry returns the same version."""
    svc = services(request)
    chunks = [ManifestChunk(c.id, c.size) for c in body.chunks]
    done = await asyncio.wrap_future(
        submit_in_context(
            svc.uploads,
            _native(svc).finalize,
            upload_id,
            chunks,
            body.sha256,
            svc.metrics.observe_pinned,
        )
    )
    base = ObjectVersion.of(done.version).model_dump()
    return FinalizedOut(**base, upload_id=done.upload.upload_id, verified_by=done.verified_by)


# --- request bodies -------------------------------------------------------------------------


def _expects_continue(request: Request) -> bool:
    return request.headers.get("expect", "").strip().lower() == "100-continue"


def _body_slots(request: Request) -> asyncio.Semaphore:
    state: Any = request.app.state
    slots = getattr(state, "native_chunk_bodies", None)
    if slots is None:
        slots = state.native_chunk_bodies = asyncio.Semaphore(MAX_CHUNK_BODIES)
    return slots
