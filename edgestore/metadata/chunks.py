"""Queries on the chunk index: dedup lookups, inserts, reference counts, shard locations.

A chunk row is inserted only after all its shards are durable (invariant 2), with refcount 0;
references (manifest, upload part or pin rows) add to the count in the same transaction that
writes them. A chunk whose count stays 0 past the grace period is garbage.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata import crowding
from edgestore.metadata.clock import now
from edgestore.metadata.db import Database
from edgestore.metadata.schema import (
    chunks,
    manifests,
    repair_queue,
    shards,
    upload_parts,
    upload_pins,
)
from edgestore.types import ChunkId, Compression, Layout, ShardRef

_IN_BATCH = 500  # keeps IN (...) lists well under every database's parameter limit
READ_NOTE_INTERVAL = 3600.0


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    chunk_id: ChunkId
    raw_size: int
    stored_size: int
    compression: Compression
    layout: Layout
    ec_k: int
    ec_m: int
    shard_size: int
    generation: str
    refcount: int
    inline_data: bytes | None = None
    shards: tuple[ShardRef, ...] = ()
    last_read_at: float | None = None

    @property
    def read_is_stale(self) -> bool:
        """Whether last_read_at is worth updating (at most hourly: reads must stay cheap).
        A hint only, on this node's clock: note_read checks again on the database's."""
        return self.last_read_at is None or self.last_read_at < time.time() - READ_NOTE_INTERVAL


def _record(row: sa.Row, shard_refs: Sequence[ShardRef] = ()) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=ChunkId(row.chunk_id),
        raw_size=row.raw_size,
        stored_size=row.stored_size,
        compression=Compression(row.compression),
        layout=Layout(row.layout),
        ec_k=row.ec_k,
        ec_m=row.ec_m,
        shard_size=row.shard_size,
        generation=row.generation,
        refcount=row.refcount,
        inline_data=row.inline_data,
        shards=tuple(shard_refs),
        last_read_at=row.last_read_at,
    )


def _batches(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _IN_BATCH):
        yield items[i : i + _IN_BATCH]


# The statements run once per chunk are built once: building one (and its cache key, from
# its literal values) cost about as much CPU as running it. Measured on SQLite, a chunk and
# its 9 shard rows inserted in a transaction of their own: 1,300-1,450 -> 950 us of CPU.
_INSERT_SHARDS = sa.insert(shards)
_N = sa.bindparam("n", type_=sa.BigInteger)
_BY_CID = chunks.c.chunk_id == sa.bindparam("cid")
_ADD_REFS = (
    sa.update(chunks).where(_BY_CID).values(refcount=chunks.c.refcount + _N, zero_since=None)
)
# Signed: a chunk gaining references leaves its grace period, one reaching zero starts it.
_CHANGE_REFS = (
    sa.update(chunks)
    .where(_BY_CID)
    .values(
        refcount=chunks.c.refcount + _N,
        zero_since=sa.case(
            (_N > 0, None),
            (chunks.c.refcount + _N <= 0, sa.bindparam("t", type_=chunks.c.zero_since.type)),
            else_=chunks.c.zero_since,
        ),
    )
)
_INSERT_CHUNK: dict[str, Any] = {}  # by dialect: ON CONFLICT is dialect-specific


def _insert_chunk(db: Database) -> Any:
    stmt = _INSERT_CHUNK.get(db.dialect)
    if stmt is None:  # the VALUES clause follows the keys of the parameters it runs with
        stmt = (
            db.insert(chunks)
            .on_conflict_do_nothing(index_elements=[chunks.c.chunk_id])
            .returning(chunks.c.chunk_id)
        )
        _INSERT_CHUNK[db.dialect] = stmt
    return stmt


_LOOKUP = (
    sa.select(
        chunks.c.refcount,
        chunks.c.generation,
        repair_queue.c.chunk_id.is_not(None).label("damaged"),
    )
    .select_from(chunks.outerjoin(repair_queue, repair_queue.c.chunk_id == chunks.c.chunk_id))
    .where(chunks.c.chunk_id == sa.bindparam("cid"))
)


@dataclass(frozen=True, slots=True)
class Found:
    """A stored chunk, as a dedup lookup sees it."""

    refcount: int
    generation: str
    damaged: bool  # queued for repair: a read found shards of it missing or corrupt


def lookup(conn: Connection, chunk: ChunkId) -> Found | None:
    """The stored chunk, for a dedup hit; None if it is not stored."""
    row = conn.execute(_LOOKUP, {"cid": chunk}).one_or_none()
    return None if row is None else Found(row.refcount, row.generation, bool(row.damaged))


def damaged(conn: Connection, chunk_ids: Sequence[str]) -> set[str]:
    """Those of the chunks queued for repair."""
    found: set[str] = set()
    for batch in _batches(list(chunk_ids)):
        found.update(
            conn.execute(
                sa.select(repair_queue.c.chunk_id).where(repair_queue.c.chunk_id.in_(batch))
            ).scalars()
        )
    return found


def replace(
    conn: Connection, record: ChunkRecord, shard_refs: Sequence[ShardRef], generation: str
) -> bool:
    """Point a damaged chunk at freshly written shards (stored again from its raw bytes, as
    a new `record` of the same chunk), if its row still has `generation` (the shards it had
    are files no row names: gc's orphan sweep takes them); False, and nothing changed, if
    the row is gone or another writer replaced it first.

    The repair entry goes, and an unreferenced chunk's grace period restarts, as for any
    dedup hit. References are untouched: the chunk id, and so its bytes, are the same.
    """
    locked = conn.execute(
        sa.select(chunks.c.generation).where(chunks.c.chunk_id == record.chunk_id).with_for_update()
    ).scalar_one_or_none()
    if locked != generation:
        return False
    conn.execute(
        sa.update(chunks)
        .where(chunks.c.chunk_id == record.chunk_id)
        .values(
            **_stored_as(record),
            zero_since=sa.case((chunks.c.refcount <= 0, now(conn)), else_=chunks.c.zero_since),
        )
    )
    conn.execute(sa.delete(shards).where(shards.c.chunk_id == record.chunk_id))
    _insert_shards(conn, shard_refs)
    conn.execute(sa.delete(repair_queue).where(repair_queue.c.chunk_id == record.chunk_id))
    return True


def replace_shards(
    conn: Connection, chunk: str, generation: str, shard_refs: Sequence[ShardRef], checked_at: float
) -> bool | None:
    """Point some shard rows of a damaged chunk at files rebuilt for them (repair in place:
    same generation, its other rows untouched), if its row still has `generation`; None,
    and nothing changed, if it is gone or stored again meanwhile. The chunk then leaves the
    repair queue unless a fault was seen since `checked_at` (see unqueue): whether it is off
    the queue (also when another repair of it took it off first)."""
    if lock(conn, chunk) != generation:
        return None
    rebuilt = [s.shard_index for s in shard_refs]
    conn.execute(
        sa.delete(shards).where(shards.c.chunk_id == chunk, shards.c.shard_index.in_(rebuilt))
    )
    _insert_shards(conn, shard_refs)
    crowding.superseded(conn, chunk)  # a request to spread it: the caller queues it again
    return unqueue(conn, chunk, checked_at) or not damaged(conn, [chunk])


def lock(conn: Connection, chunk: str) -> str | None:
    """The chunk's generation, its row locked until the transaction ends (None: gone).
    Repair in place deletes a shard file no row names only under this lock, and commits
    the rows of its rebuilt files under it, so the two do not cross (see inplace.py)."""
    return conn.execute(
        sa.select(chunks.c.generation).where(chunks.c.chunk_id == chunk).with_for_update()
    ).scalar_one_or_none()


def _stored_as(record: ChunkRecord) -> dict[str, Any]:
    """The columns that say how a chunk is stored (what `replace` changes, with its shards)."""
    return {
        "stored_size": record.stored_size,
        "compression": str(record.compression),
        "layout": str(record.layout),
        "ec_k": record.ec_k,
        "ec_m": record.ec_m,
        "shard_size": record.shard_size,
        "generation": record.generation,
        "inline_data": record.inline_data,
    }


def keep_alive(conn: Connection, chunk: ChunkId) -> bool:
    """Restart an unreferenced chunk's grace period (a dedup hit is about to reference it).

    Returns False if the chunk no longer exists.
    """
    res = conn.execute(
        sa.update(chunks)
        .where(chunks.c.chunk_id == chunk)
        .values(zero_since=sa.case((chunks.c.refcount == 0, now(conn)), else_=chunks.c.zero_since))
    )
    return res.rowcount == 1


def insert(
    db: Database, conn: Connection, record: ChunkRecord, shard_refs: Sequence[ShardRef]
) -> bool:
    """Insert a chunk and its shards; False if another writer stored the chunk first."""
    t = now(conn)
    row = {
        "chunk_id": record.chunk_id,
        "raw_size": record.raw_size,
        **_stored_as(record),
        "refcount": 0,
        "created_at": t,
        "zero_since": t,
    }
    if conn.execute(_insert_chunk(db), row).scalar_one_or_none() is None:
        return False
    _insert_shards(conn, shard_refs)
    return True


def _insert_shards(conn: Connection, shard_refs: Sequence[ShardRef]) -> None:
    if shard_refs:
        conn.execute(
            _INSERT_SHARDS,
            [
                {
                    "chunk_id": s.chunk_id,
                    "shard_index": s.shard_index,
                    "backend": s.backend,
                    "key": s.key,
                    "size": s.size,
                    "checksum": s.checksum,
                }
                for s in shard_refs
            ],
        )


def add_refs(conn: Connection, counts: Counter[str]) -> bool:
    """Add references; the caller inserts the referencing rows in the same transaction.
    False if some of the chunks are not stored (any more: gc took them), which the
    caller must not reference. One pass, in chunk id order: see change_refs."""
    if not counts:
        return True
    res = conn.execute(_ADD_REFS, [{"cid": c, "n": counts[c]} for c in sorted(counts)])
    return res.rowcount == len(counts)


def drop_refs(conn: Connection, counts: Counter[str]) -> None:
    """Remove references (one pass, in chunk id order: see change_refs); a chunk reaching
    zero starts its grace period."""
    if counts:
        t = now(conn)
        conn.execute(
            sa.update(chunks)
            .where(_BY_CID)
            .values(
                refcount=chunks.c.refcount - _N,
                zero_since=sa.case((chunks.c.refcount - _N <= 0, t), else_=chunks.c.zero_since),
            ),
            [{"cid": c, "n": counts[c]} for c in sorted(counts)],
        )


def change_refs(conn: Connection, delta: Mapping[str, int]) -> bool:
    """Change reference counts by signed amounts (zero: the row is not touched); False if
    some of the chunks are not stored.

    A transaction changes its counts in one call (of this, add_refs or drop_refs), which
    updates (and so locks, PostgreSQL) the rows in chunk id order, after the upload rows and
    before the object and totals rows (docs/architecture.md, Lock order): counts changed in
    another order, or in two passes (a finalize's manifest, then its pins), deadlocked with
    a writer of the same chunks."""
    changed = {c: n for c, n in delta.items() if n}
    if all(n > 0 for n in changed.values()):
        return add_refs(conn, Counter(changed))
    if all(n < 0 for n in changed.values()):
        drop_refs(conn, Counter({c: -n for c, n in changed.items()}))
        return True  # (a count is dropped only by its referencing rows: they exist)
    t = now(conn)
    rows = [{"cid": c, "n": changed[c], "t": t} for c in sorted(changed)]
    return conn.execute(_CHANGE_REFS, rows).rowcount == len(changed)


def load(conn: Connection, chunk_ids: Sequence[str]) -> dict[str, ChunkRecord]:
    """Chunk rows with their shard locations, for reading."""
    ids = list(dict.fromkeys(chunk_ids))
    found: dict[str, ChunkRecord] = {}
    for batch in _batches(ids):
        shard_map: dict[str, list[ShardRef]] = {}
        for s in conn.execute(
            sa.select(shards).where(shards.c.chunk_id.in_(batch)).order_by(shards.c.shard_index)
        ):
            shard_map.setdefault(s.chunk_id, []).append(
                ShardRef(ChunkId(s.chunk_id), s.shard_index, s.backend, s.key, s.size, s.checksum)
            )
        for row in conn.execute(sa.select(chunks).where(chunks.c.chunk_id.in_(batch))):
            found[row.chunk_id] = _record(row, shard_map.get(row.chunk_id, ()))
    return found


def note_read(conn: Connection, chunk_ids: Sequence[str]) -> None:
    """Record last-read times for tiering, at most once per READ_NOTE_INTERVAL per chunk."""
    t = now(conn)
    every = READ_NOTE_INTERVAL
    for batch in _batches(list(dict.fromkeys(chunk_ids))):
        conn.execute(
            sa.update(chunks)
            .where(chunks.c.chunk_id.in_(batch))
            .where(sa.or_(chunks.c.last_read_at.is_(None), chunks.c.last_read_at < t - every))
            .values(last_read_at=t)
        )


def queue_repair(
    db: Database,
    conn: Connection,
    chunk: str,
    reason: str,
    bad: list[int],
    generation: str | None = None,
    read_at: Sequence[ShardRef] = (),
) -> bool:
    """Queue the chunk for repair; False (nothing queued) if its row is gone, or no longer
    has the `generation` of shards found bad (stored again since they were read), or if the
    rows of the bad shards all name other files now than `read_at` (the record they were
    read from) does: rebuilt elsewhere by a repair since (faults of no shard count always).

    A read can find a chunk's shards gone because gc collected it meanwhile (its version was
    deleted mid-read). The row is locked first (PostgreSQL): a concurrent gc either commits
    before (the row is not found) or waits, and its delete of the queue entry comes after.
    """
    current = conn.execute(
        sa.select(chunks.c.generation).where(chunks.c.chunk_id == chunk).with_for_update(read=True)
    ).scalar_one_or_none()
    if current is None or (generation is not None and current != generation):
        return False
    was = {r.shard_index: (r.backend, r.key) for r in read_at}
    if was and all(i in was for i in bad):
        rows = conn.execute(
            sa.select(shards.c.shard_index, shards.c.backend, shards.c.key).where(
                shards.c.chunk_id == chunk, shards.c.shard_index.in_(bad)
            )
        )
        if not {r.shard_index for r in rows if (r.backend, r.key) == was[r.shard_index]}:
            return False
    t = now(conn)
    stmt = db.insert(repair_queue).values(
        chunk_id=chunk, reason=reason, bad_shards=bad, first_seen=t, last_seen=t, count=1
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[repair_queue.c.chunk_id],
        set_={
            "reason": reason,
            "bad_shards": bad,
            "last_seen": t,
            "count": repair_queue.c.count + 1,
        },
    )
    conn.execute(stmt)
    return True


def queued(
    conn: Connection, after: str | None, limit: int, due_at: float | None = None
) -> list[str]:
    """Chunks queued for repair, in id order from past `after`; with `due_at`, only those
    whose next attempt is due by then (not backing off, not claimed by a node)."""
    q = sa.select(repair_queue.c.chunk_id).order_by(repair_queue.c.chunk_id).limit(limit)
    if after is not None:
        q = q.where(repair_queue.c.chunk_id > after)
    if due_at is not None:
        q = q.where(_due(due_at))
    return list(conn.execute(q).scalars())


def queue_length(conn: Connection) -> int:
    """Chunks queued for repair (damaged, or short of shards): 0 on a whole store."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(repair_queue)).scalar_one())


def _due(at: float) -> sa.ColumnElement[bool]:
    return sa.or_(repair_queue.c.next_attempt.is_(None), repair_queue.c.next_attempt <= at)


def claim_repair(conn: Connection, chunk: str, until: float) -> bool:
    """Take a due queued chunk to repair it, keeping other nodes' upkeep off it until
    `until`; False if it is not due (another node has it, or it is backing off) or gone."""
    res = conn.execute(
        sa.update(repair_queue)
        .where(repair_queue.c.chunk_id == chunk, _due(now(conn)))
        .values(next_attempt=until)
    )
    return res.rowcount == 1


def release_repair(conn: Connection, chunk: str) -> None:
    """Make a claimed chunk due again (its repair did not happen for a reason of the moment)."""
    conn.execute(
        sa.update(repair_queue).where(repair_queue.c.chunk_id == chunk).values(next_attempt=None)
    )


def back_off_repair(
    conn: Connection, chunk: str, delay: Callable[[int], float]
) -> tuple[int, float] | None:
    """Count a failed attempt to rebuild the chunk and put the next `delay(attempts)` seconds
    off: (attempts, next attempt), or None if it is no longer queued."""
    attempts = conn.execute(
        sa.select(repair_queue.c.attempts).where(repair_queue.c.chunk_id == chunk).with_for_update()
    ).scalar_one_or_none()
    if attempts is None:
        return None
    attempts += 1
    at = now(conn) + delay(attempts)
    conn.execute(
        sa.update(repair_queue)
        .where(repair_queue.c.chunk_id == chunk)
        .values(attempts=attempts, next_attempt=at)
    )
    return attempts, at


def unqueue(conn: Connection, chunk: str, checked_at: float) -> bool:
    """The chunk needs no repair (its shards were all found intact, checking from
    `checked_at` on); False, and still queued, if a fault was seen since."""
    res = conn.execute(
        sa.delete(repair_queue).where(
            repair_queue.c.chunk_id == chunk, repair_queue.c.last_seen < checked_at
        )
    )
    return res.rowcount == 1


def ids_after(conn: Connection, after: str | None, limit: int) -> list[str]:
    """Stored chunk ids in order from past `after` (to walk the whole index in pages)."""
    q = sa.select(chunks.c.chunk_id).order_by(chunks.c.chunk_id).limit(limit)
    if after is not None:
        q = q.where(chunks.c.chunk_id > after)
    return list(conn.execute(q).scalars())


def reference_mismatches(conn: Connection) -> list[tuple[str, int, int]]:
    """Chunks whose refcount disagrees with the rows that reference them (for fsck/tests)."""
    refs = sa.union_all(
        sa.select(manifests.c.chunk_id),
        sa.select(upload_parts.c.chunk_id),
        sa.select(upload_pins.c.chunk_id),
    ).subquery()
    counted = (
        sa.select(refs.c.chunk_id, sa.func.count().label("n")).group_by(refs.c.chunk_id).subquery()
    )
    rows = conn.execute(
        sa.select(chunks.c.chunk_id, chunks.c.refcount, sa.func.coalesce(counted.c.n, 0))
        .select_from(chunks.outerjoin(counted, counted.c.chunk_id == chunks.c.chunk_id))
        .where(chunks.c.refcount != sa.func.coalesce(counted.c.n, 0))
    )
    return [(r[0], r[1], r[2]) for r in rows]
