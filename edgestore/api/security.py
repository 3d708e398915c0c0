"""The access-control stack of one app: CORS, authentication, per-client limits, the
pre-signed URL route, and what they load at start (the signing secret, the first admin key,
the Redis connection). docs/security.md describes the behaviour; this wires it.

Order, outermost first: RequestContext (request id, access log) → MethodOverride → CORS
(preflights answered before any credential check; error responses still carry CORS headers,
so a browser can read a 401, a 429 or a bug's 500) → Unexpected (answers that 500) →
AccessControl → Throttle (knows the API key) → routes.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from edgestore.api import presign, presign_route
from edgestore.api.auth import AccessControl
from edgestore.api.identity import ADMIN
from edgestore.api.keyring import KeyRing
from edgestore.api.limits import Limiter, Throttle
from edgestore.api.middleware import Unexpected
from edgestore.api.presign import Signer
from edgestore.config import Settings
from edgestore.engine import Engine
from edgestore.metadata import keys as key_rows
from edgestore.metadata.db import Database

log = logging.getLogger("edgestore.auth")

TUS_REQUEST_HEADERS = [
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
    "Upload-Complete",
    "Upload-Draft-Interop-Version",
    "X-HTTP-Method-Override",
]
CORS_ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "Range",
    "If-Match",
    "If-None-Match",
    "If-Range",
    "X-Request-ID",
    "X-Requested-With",
    "Idempotency-Key",  # a native session's creation, safe to retry (api/native.py)
    "Content-Disposition",  # an IETF-draft creation's file name (api/tus/ietf.py)
    *TUS_REQUEST_HEADERS,
]
CORS_EXPOSE_HEADERS = [
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    "Upload-Complete",
    "Upload-Draft-Interop-Version",
    "Upload-Limit",
    "Accept-Patch",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "ETag",
    "Content-Range",
    "Content-Length",
    "Content-Disposition",
    "Accept-Ranges",
    "Retry-After",
    "WWW-Authenticate",
    "X-Request-ID",
    "X-Edgestore-Object-Id",
    "X-Edgestore-Version",
    "X-Edgestore-Sha256",
]
CORS_METHODS = ["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"]
CORS_MAX_AGE = 86400

BANNER = """
=============================================================================
edgestore created the first API key of this store (scope: admin).
It is shown only this once; store it now:

    {secret}

Send it as 'Authorization: Bearer <key>'. Create narrower keys with
`edgestore keys create`, then revoke this one with `edgestore keys revoke {key_id}`.
=============================================================================
"""


class Security:
    """What the access-control middleware shares, created with the app, loaded at start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyRing()
        self.signer = Signer()
        self.limiter = Limiter(settings)

    async def start(self, engine: Engine) -> None:
        db = engine.core.db
        self.keys.db = db
        self.signer.secret, created = await asyncio.to_thread(self._prepare, db)
        if created is not None:
            key, secret = created
            sys.stderr.write(BANNER.format(secret=secret, key_id=key.key_id))
            sys.stderr.flush()
            log.warning("created the first admin key %s (printed above, once)", key.key_id)
        if not self.settings.auth_enabled:
            log.warning(
                "authentication is OFF (--no-auth): anyone reaching %s can do anything",
                self.settings.host,
            )
        await self.limiter.start(engine.core.store_id)

    def _prepare(self, db: Database) -> tuple[bytes, tuple[key_rows.ApiKey, str] | None]:
        created = None
        with db.write() as conn:
            secret = key_rows.server_secret(db, conn, presign.SECRET_NAME)
            if self.settings.admin_key is not None:
                key, _ = key_rows.ensure(
                    conn,
                    name="admin (EDGESTORE_ADMIN_KEY)",
                    secret=self.settings.admin_key.get_secret_value(),
                    scopes=frozenset({ADMIN}),
                )
                if key.revoked_at is not None:
                    log.warning("admin_key (EDGESTORE_ADMIN_KEY) is revoked: it grants nothing")
            elif self.settings.auth_enabled:
                created = key_rows.bootstrap(db, conn)
        return secret, created

    async def stop(self) -> None:
        await self.limiter.stop()


def install(app: FastAPI, settings: Settings) -> Security:
    """Add the pre-signed URL route and the middleware; call before RequestContext is added."""
    security = Security(settings)
    app.state.security = security
    app.include_router(presign_route.router)
    app.add_middleware(Throttle, limiter=security.limiter)
    app.add_middleware(
        AccessControl,
        settings=settings,
        keys=security.keys,
        signer=security.signer,
        limiter=security.limiter,
    )
    app.add_middleware(Unexpected)  # inside CORS: a bug's 500 is readable by a page too
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            max_age=CORS_MAX_AGE,
            # Chromium's Private Network Access: a public site's page calling a server on a
            # LAN address says so in its preflight, refused (400) unless this is allowed. Only
            # the origins listed get it, as every other CORS permission.
            allow_private_network=True,
        )
    return security
