"""Operations: liveness, readiness (database and data dirs reachable) and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from edgestore.api.metrics import CONTENT_TYPE
from edgestore.api.state import Services, services

log = logging.getLogger("edgestore.http")
router = APIRouter(tags=["operations"])


@router.api_route(  # HEAD too: load balancers and uptime monitors often probe with it
    "/healthz", methods=["GET", "HEAD"], summary="Liveness: the process answers"
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route(
    "/readyz",
    methods=["GET", "HEAD"],
    summary="Readiness: database reachable and writable, data dirs writable with room",
)
async def readyz(request: Request) -> JSONResponse:
    """Anyone may ask (load balancers do, without credentials): the answer names each
    problem, never a path or a database's address; the server's log has the full text."""
    svc = services(request)
    problems = await svc.readiness.problems()  # (what the caller sees, what the log says)
    if svc.engine.uploads.closing:
        problems.append((svc.engine.uploads.closing, svc.engine.uploads.closing))
    _log_change(svc, tuple(detail for _, detail in problems))
    status = 503 if problems else 200
    public = [text for text, _ in problems]
    return JSONResponse({"ready": not problems, "problems": public}, status_code=status)


def _log_change(svc: Services, details: tuple[str, ...]) -> None:
    """Log readiness when it changes, not at every probe of every load balancer."""
    if details == svc.readiness_problems:
        return
    svc.readiness_problems = details
    if details:
        log.warning("not ready: %s", "; ".join(details))
    else:
        log.info("ready again")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    svc = services(request)
    svc.metrics.set_health(await svc.readiness.health())
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
