"""Queries on what gc collects: chunks unreferenced past their grace period, deleted under
their row locks, and the shard files no row names (orphans)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.schema import chunks, repair_queue, shards
from edgestore.types import ChunkId, ShardRef

IN_BATCH = 500  # keeps IN (...) lists well under every database's parameter limit
# As the partial index ix_chunks_unreferenced says it, with the 0 written out: a bound
# parameter would not prove the index's condition to every planner (PostgreSQL's generic
# plans), which would walk the whole primary key instead.
UNREFERENCED = chunks.c.refcount <= sa.literal_column("0")


def _batches(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), IN_BATCH):
        yield items[i : i + IN_BATCH]


def unreferenced(
    conn: Connection, before: float, limit: int, after: str | None = None
) -> list[str]:
    """Chunks with no references since before `before` (their grace period is over), in
    chunk id order, after `after`: a page of them, the next page after its last id.

    Paged so that a run goes on past a page it could delete none of (held by writers, or
    referenced again), rather than listing that page over and over.
    """
    q = sa.select(chunks.c.chunk_id).where(UNREFERENCED, chunks.c.zero_since < before)
    if after is not None:
        q = q.where(chunks.c.chunk_id > after)
    return list(conn.execute(q.order_by(chunks.c.chunk_id).limit(limit)).scalars())


def delete_unreferenced(
    conn: Connection, chunk_ids: Sequence[str], before: float
) -> dict[str, list[ShardRef]]:
    """Delete those of the chunks (at most IN_BATCH) still unreferenced since before
    `before`, shards and repair entries with them; return their shards (now files to remove).

    A chunk referenced, kept alive or stored again since it was listed is not garbage any
    more: it stays, shards and all. The rows are locked first (PostgreSQL), in chunk id order,
    skipping those another transaction holds: that one is referencing, pinning or storing the
    chunk again, which a later run sees. So the shard rows read are those deleted, and gc,
    holding a batch of rows, never waits for one: no deadlock with a writer locking its own.
    """
    ids = sorted(set(chunk_ids))
    if not ids:
        return {}
    doomed = list(
        conn.execute(
            sa.select(chunks.c.chunk_id)
            .where(chunks.c.chunk_id.in_(ids), chunks.c.refcount <= 0, chunks.c.zero_since < before)
            .order_by(chunks.c.chunk_id)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if not doomed:
        return {}
    found: dict[str, list[ShardRef]] = {cid: [] for cid in doomed}
    for s in conn.execute(
        sa.delete(shards).where(shards.c.chunk_id.in_(doomed)).returning(*shards.c)
    ):
        found[s.chunk_id].append(
            ShardRef(ChunkId(s.chunk_id), s.shard_index, s.backend, s.key, s.size, s.checksum)
        )
    conn.execute(sa.delete(repair_queue).where(repair_queue.c.chunk_id.in_(doomed)))
    conn.execute(sa.delete(chunks).where(chunks.c.chunk_id.in_(doomed)))
    return found


def known_shard_keys(conn: Connection, backend: str, keys: Sequence[str]) -> set[str]:
    """Those of the keys a shard row names on the backend (the others are orphan files).

    Looked up by equality, through the (backend, key) index on every database and collation:
    a LIKE 'abc/%' per fan-out dir could not use it (SQLite's LIKE is case-insensitive,
    PostgreSQL's needs a C collation), so each scanned all the backend's rows, ~2M on an
    8 TB store, 4096 times per sweep.
    """
    found: set[str] = set()
    for batch in _batches(list(keys)):
        q = sa.select(shards.c.key).where(shards.c.backend == backend, shards.c.key.in_(batch))
        found.update(conn.execute(q).scalars())
    return found
