"""What the tus handlers share: upload URLs, the headers that describe an upload, appends."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastapi import Request

from edgestore.api import direct, protocol
from edgestore.api.bodies import run_with_body
from edgestore.api.http import http_date
from edgestore.api.state import Services
from edgestore.api.tus.headers import TUS_VERSION, base_headers, encode_metadata, parse_checksum
from edgestore.engine.verify import Checksum, TrailingChecksum
from edgestore.errors import InvalidInput, StorageUnavailable, TransferInterrupted
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.uploads import UploadRecord
from edgestore.types import Readable

PREFIX = "/files"
TUS_KINDS = ("tus", "ietf")  # uploads the /files/ URLs serve (not native sessions)
BODY_IDLE_TIMEOUT = 60.0  # seconds without a byte before a request counts as abandoned


def base_url(request: Request, services: Services) -> str:
    if services.settings.public_url:
        return services.settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def upload_url(request: Request, services: Services, upload_id: str) -> str:
    return f"{base_url(request, services)}{PREFIX}/{upload_id}"


def upload_id_from_url(url: str) -> str:
    """The upload id in an upload URL (absolute or a path), for Upload-Concat."""
    path = url.strip().split("?", 1)[0].rstrip("/")
    if "://" in path:
        path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
    return path.rsplit("/", 1)[-1]


def describe(request: Request, services: Services, rec: UploadRecord) -> dict[str, str]:
    """Headers that tell a client where an upload stands (HEAD, POST and PATCH responses)."""
    h = base_headers()
    waiting = rec.concat_of is not None and rec.state == upload_rows.OPEN
    if not waiting:  # a final upload still waiting for its partials has no offset yet
        h["Upload-Offset"] = str(rec.offset)
    if rec.length is not None:
        h["Upload-Length"] = str(rec.length)
    elif rec.concat_of is None:
        h["Upload-Defer-Length"] = "1"
    tus_meta = rec.user_metadata
    if tus_meta:
        h["Upload-Metadata"] = encode_metadata(tus_meta)
    if rec.is_partial:
        h["Upload-Concat"] = "partial"
    elif rec.concat_of:
        # tus: "its value as received in the upload creation request" (relative URLs stay
        # relative); finals made before the URLs were kept are named by absolute URLs.
        urls = rec.concat_urls or [upload_url(request, services, p) for p in rec.concat_of]
        h["Upload-Concat"] = f"final;{' '.join(urls)}"
    if rec.state == upload_rows.OPEN and rec.expires_at is not None:
        h["Upload-Expires"] = http_date(rec.expires_at)
    h["Cache-Control"] = "no-store"
    return h


def declared_checksum(request: Request) -> Checksum | TrailingChecksum | None:
    """The checksum the request's bytes must match: an Upload-Checksum header, or one
    announced (`Trailer: Upload-Checksum`) to follow a chunked body (checksum-trailer).
    Everything that can be checked before the body is."""
    h = request.headers
    header = parse_checksum(h.get("upload-checksum"))
    announced = [name.strip().lower() for name in h.get("trailer", "").split(",")]
    if "upload-checksum" not in announced:
        return Checksum(*header) if header else None
    if header is not None:
        raise InvalidInput("Upload-Checksum is both a header and announced as a trailer; send one")
    if "chunked" not in h.get("transfer-encoding", "").lower():
        raise InvalidInput(
            "Trailer: Upload-Checksum needs Transfer-Encoding: chunked (trailers follow only "
            "a chunked body)"
        )
    fields = protocol.trailers(request.scope)
    if fields is None:
        raise InvalidInput(
            "this server cannot read trailers here; send Upload-Checksum as a header"
        )

    def read() -> Checksum:
        values = [value for name, value in fields if name == b"upload-checksum"]
        if len(values) != 1:
            raise InvalidInput(
                "Trailer: Upload-Checksum was announced, but the body was followed by "
                f"{len(values) or 'no'} Upload-Checksum trailer{'s' if len(values) > 1 else ''}"
                "; none of its bytes were kept"
            )
        parsed = parse_checksum(values[0].decode("latin-1"))
        assert parsed is not None
        return Checksum(*parsed)

    return TrailingChecksum(read)


async def append_body(
    request: Request,
    services: Services,
    upload: UploadRecord,
    offset: int,
    checksum: Checksum | TrailingChecksum | None,
    *,
    length: int | None = None,
) -> UploadRecord:
    """Stream the request body into the upload at `offset`; return the upload afterwards.

    `length`: a deferred length declared with these bytes (kept only if the append is)."""
    engine = services.engine
    metrics = services.metrics
    ceiling = upload.length if upload.length is not None else length
    if ceiling is None:
        ceiling = services.settings.max_upload_size
    remaining = ceiling - offset

    def work(blocks: Iterable[bytes] | Readable, interrupt: Callable[[str], None]) -> UploadRecord:
        return engine.uploads.append(  # on an upload thread
            upload.upload_id,
            offset,
            blocks,
            checksum=checksum,
            on_chunk=metrics.observe_chunk,
            interrupt=interrupt,
            length=length,
        )

    metrics.uploads_active.inc()
    try:
        body = direct.claim(request.scope)  # read straight into the engine's buffer
        metrics.upload_bodies.labels("direct" if body is not None else "queued").inc()
        # Every byte that arrived is counted however the request ends: an interrupted one
        # keeps what it received (the client resumes after it).
        if body is not None:
            rec = await direct.run_with_direct_body(
                services.uploads,
                body,
                work,
                idle_timeout=BODY_IDLE_TIMEOUT,
                on_received=metrics.bytes_in.inc,
            )
        else:
            rec = await run_with_body(
                services.uploads,
                request.stream(),
                work,
                limit=remaining,
                idle_timeout=BODY_IDLE_TIMEOUT,
                on_received=metrics.bytes_in.inc,
            )
    except TransferInterrupted:
        closing = engine.uploads.closing
        if closing:  # the client is still there: tell it to come back (tus clients retry 5xx)
            raise StorageUnavailable(f"{closing}; resume from HEAD's Upload-Offset") from None
        raise
    finally:
        metrics.uploads_active.dec()
    return rec


__all__ = [
    "TUS_VERSION",
    "append_body",
    "base_url",
    "declared_checksum",
    "describe",
    "upload_url",
]
