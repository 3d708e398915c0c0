"""Opening a native upload session: the store's chunking, and a creation that survives a lost
answer.

`POST /v1/uploads` carries an Idempotency-Key made for this one creation (the IETF httpapi
draft's header, a quoted UUID), and every retry of it sends the same key: when the link drops
after the server committed the session, the retry gets that session back instead of opening
a second one, an orphan that held its size against the bucket's quota until it expired.
"""

from __future__ import annotations

import uuid
from typing import Any

from edgestore.client.http import ANY_STATUS, Transport, not_edgestore
from edgestore.errors import InvalidInput
from edgestore.types import ChunkerParams

SUPPORTED = ("fastcdc2020", "sha256")
IDEMPOTENCY_KEY = "Idempotency-Key"


def chunker_params(session: dict[str, Any]) -> ChunkerParams:
    """The store's chunking, from a session or /v1/params response; refuses what we can't do."""
    p = session["params"]["chunker"] if "params" in session else session["chunker"]
    if (p["algorithm"], p["hash"]) != SUPPORTED:
        raise InvalidInput(
            f"the server chunks with {p['algorithm']}/{p['hash']}; this client supports "
            f"{SUPPORTED[0]}/{SUPPORTED[1]} only"
        )
    return ChunkerParams(int(p["min_size"]), int(p["avg_size"]), int(p["max_size"]))


def new_idempotency_key() -> str:
    """A key for one creation, as the draft writes it (a Structured Field string)."""
    return f'"{uuid.uuid4()}"'


def create_session(transport: Transport, body: dict[str, Any], key: str) -> dict[str, Any]:
    """Open a session; the transport's retries resend `key` with the same body."""
    resp = transport.request(
        "POST",
        "/v1/uploads",
        json=body,
        headers={IDEMPOTENCY_KEY: key},
        ok=ANY_STATUS,
        what="opening a session",
    )
    if resp.status_code != 201:
        raise not_edgestore(resp, transport.base_url)
    session: dict[str, Any] = resp.json()
    return session
