"""Bucket quotas: the logical bytes a bucket holds, checked before an upload takes a byte.

A bucket's usage is the size of every version of its objects (what clients see, before dedup
and compression) plus the declared length of every open upload headed for it: an upload
reserves its room when it is created, so parallel uploads cannot jointly overshoot by more
than the ones racing through the same instant. An upload whose length is deferred counts the
bytes it holds, and each append to it may take only the room left when it starts (`room`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.config import Settings
from edgestore.errors import QuotaExceeded
from edgestore.metadata.schema import object_versions, objects, uploads

DEFAULT_BUCKET = "default"  # as engine.keys.DEFAULT_BUCKET: uploads naming none land there
# Namespace of the per-bucket advisory locks (PostgreSQL) that serialise quota checks.
_PG_QUOTA_LOCK = 0x7175_6F74  # "quot"


def quota_of(settings: Settings, bucket: str) -> int:
    """The bucket's quota in bytes; 0 means none."""
    return settings.bucket_quotas.get(bucket, settings.bucket_quota_bytes)


def bucket_usage(conn: Connection, bucket: str) -> int:
    stored = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(object_versions.c.size), 0))
        .select_from(object_versions.join(objects))
        .where(objects.c.bucket == bucket)
    ).scalar_one()
    target = uploads.c.bucket == bucket
    if bucket == DEFAULT_BUCKET:
        target = sa.or_(target, uploads.c.bucket.is_(None))
    # A deferred length: the bytes the upload holds.
    held = sa.func.coalesce(uploads.c.length, uploads.c.committed_offset + uploads.c.tail_length)
    reserved = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(held), 0)).where(
            uploads.c.state == "open",
            sa.not_(uploads.c.is_partial),
            target,
        )
    ).scalar_one()
    return int(stored) + int(reserved)


def room(conn: Connection, settings: Settings, bucket: str | None) -> int | None:
    """Bytes the bucket may still take (0 when full); None when it has no quota."""
    bucket = bucket or DEFAULT_BUCKET
    quota = quota_of(settings, bucket)
    if not quota:
        return None
    return max(0, quota - bucket_usage(conn, bucket))


def check_bucket(conn: Connection, settings: Settings, bucket: str | None, adding: int) -> None:
    """Raise QuotaExceeded if `adding` more bytes would take the bucket past its quota."""
    bucket = bucket or DEFAULT_BUCKET
    quota = quota_of(settings, bucket)
    if not quota:
        return
    if conn.dialect.name == "postgresql":
        # Check-then-reserve must not interleave with another transaction's: under READ
        # COMMITTED both would read the usage before either reservation commits and both be
        # accepted. The lock is held until this transaction (which reserves) ends. SQLite's
        # write transactions are serial already.
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:ns, hashtext(:bucket))"),
            {"ns": _PG_QUOTA_LOCK, "bucket": bucket},
        )
    used = bucket_usage(conn, bucket)
    if used + adding > quota:
        raise QuotaExceeded(
            f"bucket {bucket!r} is over its quota: {adding} more bytes on top of the {used} it "
            f"holds or has reserved exceed its {quota} bytes; delete versions or raise "
            "bucket_quota_bytes / bucket_quotas",
            bucket=bucket,
            used=used,
            quota=quota,
        )
