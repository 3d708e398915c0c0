"""Queries engine/prefix.py follows stored manifests with: the SHA-256 state recorded after
each entry lets an upload of the same bytes take a prefix's digest instead of hashing it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.schema import manifests, upload_parts


def version_with_entry(
    conn: Connection, chunk_id: str, seq: int, state_before: bytes | None
) -> str | None:
    """A version whose entry `seq` is this chunk, with its hash state recorded, and whose
    state before it is `state_before` (none at seq 0): its bytes up to there are the ones
    hashed into that state."""
    query = sa.select(manifests.c.version_id).where(
        manifests.c.chunk_id == chunk_id,
        manifests.c.seq == seq,
        manifests.c.sha_state.is_not(None),
    )
    if seq > 0:
        before = manifests.alias("before")
        query = query.join(
            before,
            sa.and_(
                before.c.version_id == manifests.c.version_id,
                before.c.seq == seq - 1,
                before.c.sha_state == state_before,
            ),
        )
    row = conn.execute(query.limit(1)).first()
    return None if row is None else str(row[0])


def version_continuing(conn: Connection, upload_id: str, seq: int, state: bytes) -> str | None:
    """A version whose entry `seq` is the upload's part `seq`, with the same hash state after
    it: its bytes up to there are the upload's."""
    part = upload_parts
    row = conn.execute(
        sa.select(manifests.c.version_id)
        .join(part, part.c.chunk_id == manifests.c.chunk_id)
        .where(
            part.c.upload_id == upload_id,
            part.c.seq == seq,
            manifests.c.seq == seq,
            manifests.c.sha_state == state,
        )
        .limit(1)
    ).first()
    return None if row is None else str(row[0])


def entry_states(
    conn: Connection, version_id: str, first_seq: int, limit: int
) -> list[tuple[str, int, bytes | None]]:
    """(chunk id, length, hash state) of a version's manifest entries from `first_seq` on."""
    rows = conn.execute(
        sa.select(manifests.c.chunk_id, manifests.c.length, manifests.c.sha_state)
        .where(manifests.c.version_id == version_id, manifests.c.seq >= first_seq)
        .order_by(manifests.c.seq)
        .limit(limit)
    )
    return [(str(r[0]), int(r[1]), r[2]) for r in rows]
