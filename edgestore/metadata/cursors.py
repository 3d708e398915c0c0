"""Shared cursors of background jobs that go round the whole store (the scrub), each under a
lease: nodes sharing the database take turns instead of each doing all the work, and a
restarted node goes on where the last one stopped. Leases are measured on the database's
clock (metadata/clock.py), as upload leases are.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.clock import now
from edgestore.metadata.db import Database
from edgestore.metadata.schema import job_cursors


@dataclass(frozen=True, slots=True)
class JobCursor:
    position: str | None  # the last chunk id done; None: from the start
    passes: int  # whole passes over the store finished


def take(db: Database, conn: Connection, job: str, owner: str, hold: float) -> JobCursor | None:
    """Hold the job for `hold` seconds and return where it is; None if another owner's lease
    has not run out (it is that node's turn)."""
    t = now(conn)
    until = t + hold
    conn.execute(
        db.insert(job_cursors)
        .values(job=job, passes=0, updated_at=t)
        .on_conflict_do_nothing(index_elements=[job_cursors.c.job])
    )
    # One statement: on PostgreSQL a node racing for it waits for the row, then finds the
    # lease taken; on SQLite writers are serialised anyway.
    taken = conn.execute(
        sa.update(job_cursors)
        .where(
            job_cursors.c.job == job,
            sa.or_(
                job_cursors.c.owner.is_(None),
                job_cursors.c.owner == owner,
                job_cursors.c.lease_expires.is_(None),
                job_cursors.c.lease_expires <= t,
            ),
        )
        .values(owner=owner, lease_expires=until, updated_at=t)
    )
    if taken.rowcount != 1:
        return None
    row = conn.execute(
        sa.select(job_cursors.c.position, job_cursors.c.passes).where(job_cursors.c.job == job)
    ).one()
    return JobCursor(row.position, row.passes)


def advance(db: Database, job: str, owner: str, cursor: JobCursor, hold: float | None) -> bool:
    """Record the job's position and hold it `hold` seconds more (None: give it up); False, and
    nothing changed, if `owner` no longer holds it (its lease ran out and another took it).
    Its own transaction, not flushed to disk: losing it costs some work done again."""
    with db.write(durable=False) as conn:
        return _advance(conn, job, owner, cursor, hold)


def _advance(conn: Connection, job: str, owner: str, cursor: JobCursor, hold: float | None) -> bool:
    t = now(conn)
    res = conn.execute(
        sa.update(job_cursors)
        .where(job_cursors.c.job == job, job_cursors.c.owner == owner)
        .values(
            position=cursor.position,
            passes=cursor.passes,
            owner=owner if hold is not None else None,
            lease_expires=t + hold if hold is not None else None,
            updated_at=t,
        )
    )
    return res.rowcount == 1


def leave(db: Database, job: str, owner: str) -> None:
    """Give the job up if `owner` holds it (a node shutting down), so another goes on now."""
    with db.write(durable=False) as conn:
        conn.execute(
            sa.update(job_cursors)
            .where(job_cursors.c.job == job, job_cursors.c.owner == owner)
            .values(owner=None, lease_expires=None, updated_at=now(conn))
        )
