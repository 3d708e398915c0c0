"""Idempotent creation: a client's Idempotency-Key finds the session its first request made.

A `POST /v1/uploads` whose answer is lost (the link dropped after the server committed) is
sent again; without a key it opened a second session, and the first, an orphan, reserved
the bucket's quota and pinned chunks until it expired. The key is stored with the session,
hashed together with its caller (one caller can never reach another's session by guessing
its key), next to a digest of what the request asked for: the same key with another
request is refused rather than answered with a session that is not the one asked for.

The key lives as long as its session: `release_data` clears it when the session is
terminated or expires, and one whose session lapsed unreaped is cleared here before reuse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.errors import IdempotencyKeyReused
from edgestore.metadata.clock import now
from edgestore.metadata.schema import uploads
from edgestore.metadata.uploads import COMPLETE, OPEN, UploadRecord, get


def _digest(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A creation's key as stored: hashed with its caller, and the digest of its request."""

    scoped: str
    request: str

    @classmethod
    def of(cls, caller: str, key: str, request: Mapping[str, Any]) -> IdempotencyKey:
        """`caller`: who sends it (an API key's id); `request`: every parameter of the
        creation, defaults filled in, so that two spellings of one request are one."""
        return cls(_digest([caller, key]), _digest(dict(request)))


def holder(conn: Connection, key: IdempotencyKey) -> UploadRecord | None:
    """The live session created with `key`, or None (a key whose session lapsed is freed).

    Raises IdempotencyKeyReused if that session was created by another request."""
    row = conn.execute(
        sa.select(uploads.c.upload_id, uploads.c.idempotency_request).where(
            uploads.c.idempotency_key == key.scoped
        )
    ).one_or_none()
    if row is None:
        return None
    rec = get(conn, row.upload_id)
    lapsed = rec.expires_at is not None and rec.expires_at < now(conn)
    if rec.state not in (OPEN, COMPLETE) or lapsed:
        release(conn, rec.upload_id)  # expired, not yet reaped: the key goes with it
        return None
    if row.idempotency_request != key.request:
        raise IdempotencyKeyReused(
            f"this Idempotency-Key was first sent to create upload {rec.upload_id} with other "
            "parameters; a retry must send the same request, and a new session needs a new key"
        )
    return rec


def release(conn: Connection, upload_id: str) -> None:
    """Forget the session's key: it has ended, and the key may open another."""
    conn.execute(
        sa.update(uploads)
        .where(uploads.c.upload_id == upload_id, uploads.c.idempotency_key.is_not(None))
        .values(idempotency_key=None, idempotency_request=None)
    )
