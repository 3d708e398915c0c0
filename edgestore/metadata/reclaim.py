"""Queries housekeeping runs on uploads: which ones to reclaim (expired, abandoned), and
what the ones in progress still hold that no other row names (staged tails, and chunks a
writer stored or found but has not checkpointed yet), which gc must spare.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.schema import uploads
from edgestore.metadata.uploads import COMPLETE, OPEN


def _stale(t: float, local_before: float) -> sa.ColumnElement[bool]:
    """Open uploads past their expiry, local puts whose process died, and complete partial
    uploads (kept for concatenation) past their expiry; never one a request is writing now
    (a live lease: a long append with a checksum commits nothing that would push the
    expiry back, and expired under it would lose every byte it carried)."""
    return sa.or_(
        sa.and_(
            uploads.c.state == OPEN,
            sa.or_(uploads.c.lock_expires.is_(None), uploads.c.lock_expires < t),
            sa.or_(
                uploads.c.expires_at < t,
                sa.and_(uploads.c.kind == "local", uploads.c.updated_at < local_before),
            ),
        ),
        sa.and_(
            uploads.c.state == COMPLETE,
            uploads.c.is_partial.is_(True),
            uploads.c.expires_at < t,
        ),
    )


def stale(conn: Connection, t: float, local_before: float, limit: int = 500) -> list[str]:
    """Uploads to reclaim (see _stale)."""
    q = sa.select(uploads.c.upload_id).where(_stale(t, local_before))
    return list(conn.execute(q.limit(limit)).scalars())


def still_stale(conn: Connection, upload_id: str, t: float, local_before: float) -> bool:
    """Whether the upload is still one to reclaim, its row locked (PostgreSQL) until the
    transaction ends: a request may have taken it up since `stale` listed it."""
    q = sa.select(uploads.c.upload_id).where(
        uploads.c.upload_id == upload_id, _stale(t, local_before)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return conn.execute(q).first() is not None


def oldest_lease(conn: Connection, t: float) -> float | None:
    """When the oldest write lease still live at `t` was taken (None: no upload is being
    written). Its writer may hold chunks stored or found since then that no row references
    yet: they become its upload's parts at its next checkpoint."""
    return conn.execute(
        sa.select(sa.func.min(uploads.c.lock_since)).where(
            uploads.c.lock_owner.is_not(None), uploads.c.lock_expires >= t
        )
    ).scalar_one_or_none()


def tail_keys(conn: Connection) -> set[str]:
    """Keys of every staged tail still referenced (gc spares their files)."""
    rows = conn.execute(sa.select(uploads.c.tail_key).where(uploads.c.tail_key.is_not(None)))
    return set(rows.scalars())
