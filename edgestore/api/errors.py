"""The one table from domain errors to HTTP statuses, and the error response body.

Everything edgestore raises on purpose maps here; anything else is logged and answered 500.
Bodies are JSON: {"error": <stable code>, "message": <what happened and what to do>}.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgestore import errors as e
from edgestore.logonce import OncePer

log = logging.getLogger(__name__)

# tus 1.0 checksum extension: "460 Checksum Mismatch".
CHECKSUM_MISMATCH = 460

STATUS: list[tuple[type[e.EdgestoreError], int]] = [
    (e.ChecksumMismatch, CHECKSUM_MISMATCH),
    (e.ChunkHashMismatch, 422),
    (e.WholeFileMismatch, 422),
    (e.IdempotencyKeyReused, 422),
    (e.InvalidRange, 416),
    (e.ProtocolMismatch, 412),
    (e.UnsupportedMediaType, 415),
    (e.TooLarge, 413),
    (e.UnsupportedChecksum, 400),
    (e.InvalidInput, 400),
    (e.Forbidden, 403),
    (e.Unauthorized, 401),
    (e.UploadGone, 410),
    (e.NotFound, 404),
    (e.PreconditionFailed, 412),
    (e.OffsetConflict, 409),
    (e.MissingChunks, 409),
    (e.UploadStateError, 403),
    (e.UploadLocked, 423),
    (e.QuotaExceeded, 507),
    (e.RateLimited, 429),
    (e.StorageFull, 507),
    (e.StorageUnavailable, 503),
    (e.ServerBusy, 503),
    (e.ChunkUnreadable, 500),
    (e.ChunkCorrupt, 500),
    (e.TransferInterrupted, 400),
]


def status_for(exc: e.EdgestoreError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": code, "message": message, **extra}


def without_paths(message: str, dirs: Mapping[str, str]) -> str:
    """`message` with each data dir's path (`dirs`: path → name) replaced by its name.

    Storage errors name the path for the operator (the CLI, the log); a client is told which
    data dir, never where the server keeps it. Longest paths first: /x/d1 is a prefix of
    /x/d10."""
    for path in sorted(dirs, key=len, reverse=True):
        message = message.replace(path, dirs[path])
    return message


# A store that cannot take writes now (a data dir read-only, missing or unmounted; the
# database down) is not back within a second: a 503 says when to try again, so that clients
# that honour it (edgestore's) do not send each chunk's body again several times a second
# (measured: 195 MiB sent for a 30 MiB file while a data dir was read-only for 8 s).
STORAGE_RETRY_AFTER_S = 5


def error_response(
    exc: e.EdgestoreError,
    headers: dict[str, str] | None = None,
    dirs: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The answer to `exc`; `dirs` (data dir path → name) are named, not shown, to the client."""
    status = status_for(exc)
    extra: dict[str, object] = {}
    if isinstance(exc, e.MissingChunks):
        extra["missing"] = exc.chunk_ids
    if isinstance(exc, e.OffsetConflict):
        extra["offset"] = exc.expected
    hdrs = dict(headers or {})
    if isinstance(exc, e.InvalidRange):
        hdrs["Content-Range"] = f"bytes */{exc.size}"
    retry_after = exc.details.get("retry_after")
    if retry_after is None and isinstance(exc, e.StorageUnavailable):
        retry_after = STORAGE_RETRY_AFTER_S
    if retry_after is not None:
        hdrs["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    if status >= 500:
        _log_error(exc)
    message = without_paths(exc.message, dirs) if dirs else exc.message
    return JSONResponse(error_body(exc.code, message, **extra), status, headers=hdrs)


# A storage error (a data dir missing, full, read-only) is logged once an hour, not for
# every request it refuses: a lost disk would otherwise log one line per upload request.
STORAGE_ERROR_LOG_SECONDS = 3600.0
_storage_errors = OncePer(STORAGE_ERROR_LOG_SECONDS)


def _log_error(exc: e.EdgestoreError) -> None:
    storage = isinstance(exc, e.StorageError) and not isinstance(exc, e.TransactionConflict)
    if storage and not _storage_errors.due(exc.message):
        log.debug("%s: %s", exc.code, exc.message)
        return
    log.error("%s: %s", exc.code, exc.message)


def unexpected_response(headers: dict[str, str] | None = None) -> JSONResponse:
    """The 500 for an error nothing mapped: no detail of it (paths, internals) reaches the
    client; the server log has the traceback, under the request's id."""
    body = error_body("internal_error", "internal server error; see the server log")
    return JSONResponse(body, 500, headers=headers)


def data_dir_names(request: Request) -> dict[str, str]:
    """Data dir path → name for the app's store (none before it has started), and a SQLite
    database's path → its file name (a busy database's 503 named where the server keeps it)."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return {}
    core = services.engine.core
    names = {
        str(b.root): name for name, b in core.dirs.backends.items() if getattr(b, "root", None)
    }
    if core.db.path is not None:
        names[str(core.db.path)] = core.db.path.name
    return names


def install(app: FastAPI) -> None:
    """Register the handlers; tus routes add their protocol headers in their own wrapper.

    Errors nothing maps are answered by the request-context middleware (api/middleware.py),
    which still knows the request's id: Starlette's handler for them runs outside every
    middleware, so its 500 lacked X-Request-ID and its log line the id."""

    @app.exception_handler(e.EdgestoreError)
    async def _domain(request: Request, exc: e.EdgestoreError) -> JSONResponse:
        headers = getattr(request.state, "error_headers", None)
        return error_response(exc, headers, data_dir_names(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        return JSONResponse(error_body("invalid_request", problems), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        headers.update(getattr(request.state, "error_headers", None) or {})
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)
