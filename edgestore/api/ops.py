"""Operations: liveness, readiness (database and data dirs reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from edgestore.api.metrics import CONTENT_TYPE
from edgestore.api.state import services
from edgestore.errors import StorageError

router = APIRouter(tags=["operations"])


@router.api_route(  # HEAD too: load balancers and uptime monitors often probe with it
    "/healthz", methods=["GET", "HEAD"], summary="Liveness: the process answers"
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route(
    "/readyz",
    methods=["GET", "HEAD"],
    summary="Readiness: database reachable, data dirs writable",
)
async def readyz(request: Request) -> JSONResponse:
    svc = services(request)
    problems: list[str] = []

    def check() -> None:
        try:
            with svc.engine.core.db.read() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            problems.append(f"metadata database: {exc}")
        for backend in svc.engine.core.dirs.backends.values():
            try:
                backend.check()
            except StorageError as exc:
                problems.append(str(exc))

    await asyncio.to_thread(check)
    if svc.engine.uploads.closing:
        problems.append(svc.engine.uploads.closing)
    status = 503 if problems else 200
    return JSONResponse({"ready": not problems, "problems": problems}, status_code=status)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE)
