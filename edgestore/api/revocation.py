"""Cutting a request body short when the key behind its credential is revoked meanwhile.

Credentials are checked when a request starts (api/auth.py), but one tus PATCH can carry a
whole file (tus-js-client's default) and stream for hours. While a body streams, the key
behind it (the bearer key, or the one that minted the pre-signed URL or upload token) is
checked again every RECHECK_SECONDS; once it is revoked, the body is cut as a dropped
connection would be: what arrived is kept (400 transfer_interrupted), and the next request
is refused (401).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.types import Message, Receive, Scope

from edgestore.api import direct
from edgestore.api.direct import DirectBody
from edgestore.errors import TransferInterrupted, Unauthorized

log = logging.getLogger("edgestore.auth")

RECHECK_SECONDS = 5.0  # with the key ring's 5 s cache: a body is cut within ~10 s
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RevocationWatch:
    """Checks `still_active` every RECHECK_SECONDS while a request runs; cuts its body (the
    direct one, or the queued one at its next piece) once the check fails (Unauthorized)."""

    def __init__(self, still_active: Callable[[], Awaitable[None]]) -> None:
        self._still_active = still_active
        self._bodies: list[DirectBody] = []
        self.revoked: TransferInterrupted | None = None

    def scope(self, scope: Scope) -> Scope:
        return direct.observed(scope, self._bodies.append)

    def receive(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            if self.revoked is not None:
                raise self.revoked
            message = await receive()
            if self.revoked is not None and message["type"] == "http.request":
                raise self.revoked  # bytes sent after the revocation are not taken
            return message

        return watched

    async def run(self) -> None:
        """The watch itself: a task for the request's lifetime (cancelled when it ends)."""
        while self.revoked is None:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                await self._still_active()
            except Unauthorized as exc:
                self.revoked = TransferInterrupted(
                    f"{exc.message} while this request was sending its body: what arrived is "
                    "kept, and no further request is accepted with it"
                )
                for body in self._bodies:
                    body.fail(self.revoked)
            except Exception:  # the database is out of reach: the check waits for the next
                log.warning("could not check a streaming request's key", exc_info=True)
