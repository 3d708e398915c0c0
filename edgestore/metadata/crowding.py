"""Chunks with more of their shards on one data dir than placement puts there ("doubled up",
after a repair around a dir that was gone or full), and queueing them to be spread again.

Placement puts at most ceil(shards / dirs) of a chunk's shards on one dir (storage/placement.py,
`doubled_up`): only more than that is a loss of fault tolerance.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.clock import now
from edgestore.metadata.db import Database
from edgestore.metadata.schema import repair_queue, shards

# The reason of a queue entry that asks only for spreading (no fault): a repair that rewrites
# the chunk's rows supersedes it (chunks.replace_shards), and queues it again if need be.
REASON_PREFIX = "spread: "


def page(conn: Connection, after: str | None, limit: int, dirs: int) -> list[tuple[str, int]]:
    """The next `limit` doubled-up chunks by id after `after` on a store of `dirs` data dirs:
    (chunk id, the most of its shards on one dir). One statement: the shards table walked in
    chunk id order along its primary key, grouped by chunk, each group's busiest dir counted
    by a lookup in that key; it reads on until it has `limit` (or the end)."""
    inner = shards.alias("on_one_dir")
    most = (
        sa.select(sa.func.count())
        .select_from(inner)
        .where(inner.c.chunk_id == shards.c.chunk_id)
        .group_by(inner.c.backend)
        .order_by(sa.func.count().desc())
        .limit(1)
        .scalar_subquery()
    )
    d = sa.bindparam("dirs", max(dirs, 1), type_=sa.Integer)
    q = (
        sa.select(shards.c.chunk_id, most.label("most"))
        .group_by(shards.c.chunk_id)
        # ceil(count / dirs) in integer arithmetic, the same on SQLite and PostgreSQL.
        .having(most > (sa.func.count() + d - 1) / d)
        .order_by(shards.c.chunk_id)
        .limit(limit)
    )
    if after is not None:
        q = q.where(shards.c.chunk_id > after)
    return [(r.chunk_id, int(r.most)) for r in conn.execute(q)]


def queue(db: Database, conn: Connection, chunk: str, reason: str, due_in: float) -> None:
    """Queue the chunk to be spread again, due `due_in` seconds from now. A chunk queued
    already keeps its entry (its reason, its due time): its repair spreads it as well."""
    t = now(conn)
    stmt = db.insert(repair_queue).values(
        chunk_id=chunk,
        reason=REASON_PREFIX + reason,
        bad_shards=[],
        first_seen=t,
        last_seen=t,
        count=1,
        next_attempt=t + due_in if due_in > 0 else None,
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=[repair_queue.c.chunk_id]))


def superseded(conn: Connection, chunk: str) -> None:
    """Drop the chunk's request to be spread (not a fault's entry): its shard rows were just
    rewritten, and whoever rewrote them queues it again if it is still doubled up."""
    conn.execute(
        sa.delete(repair_queue).where(
            repair_queue.c.chunk_id == chunk, repair_queue.c.reason.startswith(REASON_PREFIX)
        )
    )
