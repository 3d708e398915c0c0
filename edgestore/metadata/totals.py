"""Per-bucket totals of object versions (bytes, count), kept with every version written.

A quota check reads its bucket's row instead of summing every version (a million-version
bucket made each upload creation scan a million rows). Only metadata/objects.py changes them,
in the transaction that inserts or deletes the version.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.db import dialect_insert
from edgestore.metadata.schema import bucket_totals


@dataclass(frozen=True, slots=True)
class BucketTotal:
    bytes: int
    versions: int


def add(conn: Connection, bucket: str, size: int, versions: int) -> None:
    """Add `size` bytes and `versions` versions (negative: removed) to the bucket's totals.

    An increment of the row, never a read-then-write, so concurrent writers lose nothing; the
    row is made on first use. On PostgreSQL this locks the row until the transaction ends:
    callers take it last, after the chunk rows and the object's row, so its lock order is
    the same in every transaction (see objects.create_versions / delete_version)."""
    stmt = dialect_insert(conn.dialect.name, bucket_totals).values(
        bucket=bucket, bytes=size, versions=versions
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[bucket_totals.c.bucket],
            set_={
                "bytes": bucket_totals.c.bytes + stmt.excluded.bytes,
                "versions": bucket_totals.c.versions + stmt.excluded.versions,
            },
        )
    )


def of_bucket(conn: Connection, bucket: str) -> BucketTotal:
    """The bucket's totals (zero for a bucket that never held a version)."""
    row = conn.execute(
        sa.select(bucket_totals.c.bytes, bucket_totals.c.versions).where(
            bucket_totals.c.bucket == bucket
        )
    ).one_or_none()
    return BucketTotal(int(row.bytes), int(row.versions)) if row else BucketTotal(0, 0)


def of_store(conn: Connection) -> BucketTotal:
    """Every bucket's totals added up (one row per bucket, not per version)."""
    size, versions = conn.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(bucket_totals.c.bytes), 0),
            sa.func.coalesce(sa.func.sum(bucket_totals.c.versions), 0),
        )
    ).one()
    return BucketTotal(int(size), int(versions))


def mismatches(conn: Connection) -> dict[str, tuple[BucketTotal, BucketTotal]]:
    """Buckets whose totals differ from their versions: bucket -> (recorded, counted).

    A full scan, for tests and checks (never on a request's path): `edgestore check`'s."""
    from edgestore.metadata.consistency import bucket_drift  # which imports this module

    return {d.bucket: (d.recorded, d.counted) for d in bucket_drift(conn)}
