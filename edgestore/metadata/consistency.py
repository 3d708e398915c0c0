"""Queries that compare the metadata's derived counters and references with the rows they
derive from (`edgestore check`), and recount them under the writers' own locks.

Every comparison is one statement, so it sees one snapshot: a write in flight (its rows and
its counter change commit together) is never taken for drift. Scans go a page of chunk ids
at a time, or stream, so memory stays bounded on a store of millions of chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata import totals
from edgestore.metadata.clock import now
from edgestore.metadata.schema import (
    bucket_totals,
    chunks,
    manifests,
    object_versions,
    objects,
    shards,
    upload_parts,
    upload_pins,
)
from edgestore.types import Layout

# Rows fetched at a time from a streamed scan (a server-side cursor on PostgreSQL).
STREAM_ROWS = 1000


@dataclass(frozen=True, slots=True)
class ChunkState:
    """A chunk row beside what references it and what it needs to be read."""

    chunk_id: str
    refcount: int
    referenced: int  # manifest, upload part and pin rows naming it
    layout: str
    ec_k: int
    ec_m: int
    shard_rows: int  # shard rows with an index below k+m (distinct: the primary key)
    inline_missing: bool  # an inline chunk without its bytes

    @property
    def readable(self) -> bool:
        if self.layout == Layout.INLINE:
            return not self.inline_missing
        return self.shard_rows >= self.ec_k

    @property
    def fully_sharded(self) -> bool:
        return self.layout == Layout.INLINE or self.shard_rows >= self.ec_k + self.ec_m


def count_chunks(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one())


def _count_where(table: sa.Table, chunk_id: sa.ColumnElement[str]) -> sa.ScalarSelect[int]:
    """Rows of `table` naming the chunk: a lookup in its chunk_id index."""
    return (
        sa.select(sa.func.count())
        .select_from(table)
        .where(table.c.chunk_id == chunk_id)
        .scalar_subquery()
    )


def chunk_page(conn: Connection, after: str | None, limit: int) -> list[ChunkState]:
    """The next `limit` chunks by id after `after`, each with its references and shard rows
    counted in the same statement (one snapshot).

    Manifests, upload parts and shards are counted by index lookups per chunk; upload_pins
    has no chunk_id index (it is keyed by upload), so its rows are grouped once per page,
    over the page's id range."""
    first = sa.select(chunks.c.chunk_id).order_by(chunks.c.chunk_id).limit(limit)
    if after is not None:
        first = first.where(chunks.c.chunk_id > after)
    last = conn.execute(sa.select(sa.func.max(first.subquery().c.chunk_id))).scalar_one()
    if last is None:
        return []
    in_page = chunks.c.chunk_id <= last
    pins_in_page = upload_pins.c.chunk_id <= last
    if after is not None:
        in_page = sa.and_(chunks.c.chunk_id > after, in_page)
        pins_in_page = sa.and_(upload_pins.c.chunk_id > after, pins_in_page)
    pinned = (
        sa.select(upload_pins.c.chunk_id, sa.func.count().label("n"))
        .where(pins_in_page)
        .group_by(upload_pins.c.chunk_id)
        .subquery()
    )
    shard_rows = (
        sa.select(sa.func.count())
        .select_from(shards)
        .where(
            shards.c.chunk_id == chunks.c.chunk_id,
            shards.c.shard_index < chunks.c.ec_k + chunks.c.ec_m,
        )
        .scalar_subquery()
    )
    referenced = (
        _count_where(manifests, chunks.c.chunk_id)
        + _count_where(upload_parts, chunks.c.chunk_id)
        + sa.func.coalesce(pinned.c.n, 0)
    )
    rows = conn.execute(
        sa.select(
            chunks.c.chunk_id,
            chunks.c.refcount,
            referenced.label("referenced"),
            chunks.c.layout,
            chunks.c.ec_k,
            chunks.c.ec_m,
            shard_rows.label("shard_rows"),
            chunks.c.inline_data.is_(None).label("inline_missing"),
        )
        .select_from(chunks.outerjoin(pinned, pinned.c.chunk_id == chunks.c.chunk_id))
        .where(in_page)
        .order_by(chunks.c.chunk_id)
    )
    return [
        ChunkState(
            r.chunk_id,
            int(r.refcount),
            int(r.referenced),
            r.layout,
            int(r.ec_k),
            int(r.ec_m),
            int(r.shard_rows),
            bool(r.inline_missing),
        )
        for r in rows
    ]


def recount_refs(conn: Connection, chunk_ids: Sequence[str]) -> list[tuple[str, int, int]]:
    """Set the chunks' refcounts to the rows that reference them: (chunk id, was, now) of
    those changed. Runs in a write transaction of its own.

    Safe beside writers: the chunk rows are locked first (PostgreSQL: in id order, as
    chunks.change_refs locks them; SQLite: the write transaction holds the database's
    lock), and writers change a chunk's references and its count in one transaction. One
    that changed the count before the lock has committed before the references are counted
    (they include its rows); one that changes it after adds to or takes from the recounted
    value (whose count did not include its uncommitted rows). A chunk now unreferenced
    starts its grace period; a referenced one leaves it.

    The lock is FOR NO KEY UPDATE, the one a count's UPDATE takes, not FOR UPDATE: a row
    naming a chunk takes a key-share lock on its row through the foreign key, in the order
    it is written (an upload's parts handed over to a manifest: no count changes), and FOR
    UPDATE waited for those while that writer waited for the rows locked already (a
    deadlock). A move of references that leaves the counts alone commits its rows at once,
    which the one counting statement sees all or none of."""
    locked = {
        r.chunk_id: int(r.refcount)
        for r in conn.execute(
            sa.select(chunks.c.chunk_id, chunks.c.refcount)
            .where(chunks.c.chunk_id.in_(list(chunk_ids)))
            .order_by(chunks.c.chunk_id)
            .with_for_update(key_share=True)
        )
    }
    if not locked:
        return []
    ids = sorted(locked)
    refs = sa.union_all(
        sa.select(manifests.c.chunk_id).where(manifests.c.chunk_id.in_(ids)),
        sa.select(upload_parts.c.chunk_id).where(upload_parts.c.chunk_id.in_(ids)),
        sa.select(upload_pins.c.chunk_id).where(upload_pins.c.chunk_id.in_(ids)),
    ).subquery()
    counted: dict[str, int] = {
        r[0]: int(r[1])
        for r in conn.execute(sa.select(refs.c.chunk_id, sa.func.count()).group_by(refs.c.chunk_id))
    }
    changed = [(c, locked[c], counted.get(c, 0)) for c in ids if locked[c] != counted.get(c, 0)]
    if changed:
        t = now(conn)
        n = sa.bindparam("n", type_=sa.BigInteger)
        conn.execute(
            sa.update(chunks)
            .where(chunks.c.chunk_id == sa.bindparam("cid"))
            .values(
                refcount=n,
                zero_since=sa.case((n > 0, None), else_=sa.func.coalesce(chunks.c.zero_since, t)),
            ),
            [{"cid": c, "n": counted_now} for c, _, counted_now in changed],
        )
    return changed


@dataclass(frozen=True, slots=True)
class BucketDrift:
    bucket: str
    recorded: totals.BucketTotal
    counted: totals.BucketTotal


def bucket_drift(conn: Connection) -> Iterator[BucketDrift]:
    """Buckets whose totals differ from their versions, in one statement (one snapshot):
    a bucket with versions and no totals row, or a row and no versions, included."""
    counted = (
        sa.select(
            objects.c.bucket,
            sa.func.sum(object_versions.c.size).label("bytes"),
            sa.func.count().label("versions"),
        )
        .select_from(object_versions.join(objects))
        .group_by(objects.c.bucket)
        .cte("counted")
    )
    recorded = sa.select(
        bucket_totals.c.bucket,
        bucket_totals.c.bytes,
        bucket_totals.c.versions,
        sa.func.coalesce(counted.c.bytes, 0).label("c_bytes"),
        sa.func.coalesce(counted.c.versions, 0).label("c_versions"),
    ).select_from(bucket_totals.outerjoin(counted, counted.c.bucket == bucket_totals.c.bucket))
    unrecorded = sa.select(
        counted.c.bucket,
        sa.literal(0).label("bytes"),
        sa.literal(0).label("versions"),
        counted.c.bytes,
        counted.c.versions,
    ).where(~sa.exists().where(bucket_totals.c.bucket == counted.c.bucket))
    both = sa.union_all(recorded, unrecorded).subquery()
    for r in conn.execute(
        sa.select(both).where(
            sa.or_(both.c.bytes != both.c.c_bytes, both.c.versions != both.c.c_versions)
        )
    ):
        yield BucketDrift(
            r[0],
            totals.BucketTotal(int(r[1]), int(r[2])),
            totals.BucketTotal(int(r[3]), int(r[4])),
        )


def count_buckets(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count(sa.distinct(objects.c.bucket)))).scalar_one())


def recount_bucket(conn: Connection, bucket: str) -> BucketDrift | None:
    """Set the bucket's totals to the sum over its versions (in a write transaction of its
    own); the drift corrected, or None if there was none.

    Safe beside writers, as recount_refs: the row is taken first with the writers' own
    increment (totals.add of nothing: it makes the row if missing and, on PostgreSQL, locks
    it; SQLite's write transaction holds the database), and a writer's add is the last
    statement of the transaction that inserts or deletes its version. One that added before
    the lock has committed before the versions are summed; one that adds after adds to the
    recounted sum, which did not include its uncommitted version."""
    totals.add(conn, bucket, 0, 0)
    recorded = totals.of_bucket(conn, bucket)
    size, versions = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(object_versions.c.size), 0), sa.func.count())
        .select_from(object_versions.join(objects))
        .where(objects.c.bucket == bucket)
    ).one()
    counted = totals.BucketTotal(int(size), int(versions))
    if counted == recorded:
        return None
    conn.execute(
        sa.update(bucket_totals)
        .where(bucket_totals.c.bucket == bucket)
        .values(bytes=counted.bytes, versions=counted.versions)
    )
    return BucketDrift(bucket, recorded, counted)


def _stream(conn: Connection, query: sa.Select) -> Iterator[sa.Row]:
    """Rows of a scan as they come (a server-side cursor on PostgreSQL, whose driver would
    otherwise receive the whole result before the first row)."""
    yield from conn.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(query)


def manifests_without_chunk(conn: Connection) -> Iterator[tuple[str, str, int, int, str]]:
    """Manifest entries naming a chunk row that does not exist: (bucket, key, version, seq,
    chunk id). The bytes are gone: nothing here can bring them back."""
    query = (
        sa.select(
            objects.c.bucket,
            objects.c.key,
            object_versions.c.version,
            manifests.c.seq,
            manifests.c.chunk_id,
        )
        .select_from(
            manifests.join(object_versions)
            .join(objects)
            .outerjoin(chunks, chunks.c.chunk_id == manifests.c.chunk_id)
        )
        .where(chunks.c.chunk_id.is_(None))
    )
    for r in _stream(conn, query):
        yield r[0], r[1], int(r[2]), int(r[3]), r[4]


def upload_refs_without_chunk(conn: Connection) -> Iterator[tuple[str, str, str]]:
    """Upload parts and pins naming a chunk row that does not exist: (upload id, "part N"
    or "pin", chunk id)."""
    parts = (
        sa.select(upload_parts.c.upload_id, upload_parts.c.seq, upload_parts.c.chunk_id)
        .select_from(upload_parts.outerjoin(chunks, chunks.c.chunk_id == upload_parts.c.chunk_id))
        .where(chunks.c.chunk_id.is_(None))
    )
    for r in _stream(conn, parts):
        yield r[0], f"part {r[1]}", r[2]
    pins = (
        sa.select(upload_pins.c.upload_id, upload_pins.c.chunk_id)
        .select_from(upload_pins.outerjoin(chunks, chunks.c.chunk_id == upload_pins.c.chunk_id))
        .where(chunks.c.chunk_id.is_(None))
    )
    for r in _stream(conn, pins):
        yield r[0], "pin", r[1]


def versions_not_adding_up(conn: Connection) -> Iterator[tuple[str, str, int, int, int]]:
    """Versions whose manifest entries do not add up to their size (a read would return
    other bytes than stated): (bucket, key, version, size, sum of entry lengths)."""
    summed = (
        sa.select(
            manifests.c.version_id,
            sa.func.sum(manifests.c.length).label("length"),
        )
        .group_by(manifests.c.version_id)
        .subquery()
    )
    length = sa.func.coalesce(summed.c.length, 0)
    query = (
        sa.select(
            objects.c.bucket,
            objects.c.key,
            object_versions.c.version,
            object_versions.c.size,
            length,
        )
        .select_from(
            object_versions.join(objects).outerjoin(
                summed, summed.c.version_id == object_versions.c.version_id
            )
        )
        .where(object_versions.c.size != length)
    )
    for r in _stream(conn, query):
        yield r[0], r[1], int(r[2]), int(r[3]), int(r[4])
