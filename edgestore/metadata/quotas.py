"""Bucket quotas: the logical bytes a bucket holds, checked before an upload takes a byte.

A bucket's usage is the size of every version of its objects (what clients see, before dedup
and compression; a running total, metadata/totals.py) plus the declared length of every open
upload headed for it: an upload reserves its room when it is created, so parallel uploads
cannot jointly overshoot by more than the ones racing through the same instant. An upload
whose length is deferred counts the bytes it holds, and each append to it may take only the
room left when it starts (`room`). Partial uploads (tus concatenation) count in the bucket
they were created for, as long as they hold bytes, until a final upload takes them over
(`_partials_held`).
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.config import Settings
from edgestore.errors import QuotaExceeded
from edgestore.metadata import totals
from edgestore.metadata.schema import uploads

DEFAULT_BUCKET = "default"  # as engine.keys.DEFAULT_BUCKET: uploads naming none land there
# Namespace of the per-bucket advisory locks (PostgreSQL) that serialise quota checks.
_PG_QUOTA_LOCK = 0x7175_6F74  # "quot"
# A final upload is created after its partials, but maybe on a node whose clock is behind:
# finals are looked for this far before the oldest partial (a miss would count it twice).
_CLOCK_SKEW = 3600.0

# What an open upload counts: its declared length, else (deferred) the bytes it holds.
_HELD = sa.func.coalesce(uploads.c.length, uploads.c.committed_offset + uploads.c.tail_length)


def quota_of(settings: Settings, bucket: str) -> int:
    """The bucket's quota in bytes; 0 means none."""
    return settings.bucket_quotas.get(bucket, settings.bucket_quota_bytes)


def counted_in(bucket: str | None, is_partial: bool) -> str | None:
    """The bucket whose quota an upload counts in; None for a partial created for no bucket
    (see _partials_held)."""
    if is_partial:
        return bucket
    return bucket or DEFAULT_BUCKET


def bucket_usage(conn: Connection, bucket: str, replacing: Collection[str] = ()) -> int:
    """The bucket's logical bytes: versions, open uploads' reservations and partials' bytes.

    `replacing`: partial uploads whose bytes a final being checked takes over (not counted)."""
    stored = totals.of_bucket(conn, bucket).bytes  # one row, not a sum over every version
    target = uploads.c.bucket == bucket
    if bucket == DEFAULT_BUCKET:
        target = sa.or_(target, uploads.c.bucket.is_(None))
    reserved = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(_HELD), 0)).where(
            uploads.c.state == "open",
            sa.not_(uploads.c.is_partial),
            target,
        )
    ).scalar_one()
    return stored + int(reserved) + _partials_held(conn, bucket, replacing)


def _partials_held(conn: Connection, bucket: str, replacing: Collection[str]) -> int:
    """What the partial uploads created for `bucket` count: each one's declared length while
    open (deferred: the bytes it holds), its bytes once complete, until it is released.

    Not counted: a partial a final upload has taken over, one that made its version (counted
    as such; deleting the version frees its room) or that waits with a known length
    (reserving it as a whole). A final waiting for partials of unknown length reserves nothing,
    so those go on counting (and are bounded as their bytes arrive). A partial created for no
    bucket (only a key limited to none does that, which may write anywhere) counts nowhere.
    """
    rows = conn.execute(
        sa.select(uploads.c.upload_id, uploads.c.state, _HELD.label("held"), uploads.c.created_at)
        .where(
            uploads.c.is_partial,
            uploads.c.bucket == bucket,
            uploads.c.state.in_(("open", "complete")),
        )
        .order_by(uploads.c.created_at)
    ).all()
    if not rows:
        return 0
    covered = set(replacing)
    finals = conn.execute(
        sa.select(uploads.c.concat_of).where(
            uploads.c.concat_of.is_not(None),
            uploads.c.created_at >= rows[0].created_at - _CLOCK_SKEW,
            sa.or_(
                sa.and_(uploads.c.state == "open", uploads.c.length.is_not(None)),
                uploads.c.version_id.is_not(None),
            ),
        )
    )
    for (concat_of,) in finals:
        covered.update(concat_of or ())
    return sum(int(r.held) for r in rows if r.upload_id not in covered)


def room(conn: Connection, settings: Settings, bucket: str | None) -> int | None:
    """Bytes the bucket may still take (0 when full); None when it has no quota."""
    bucket = bucket or DEFAULT_BUCKET
    quota = quota_of(settings, bucket)
    if not quota:
        return None
    return max(0, quota - bucket_usage(conn, bucket))


def check_bucket(
    conn: Connection,
    settings: Settings,
    bucket: str | None,
    adding: int,
    *,
    replacing: Collection[str] = (),
) -> None:
    """Raise QuotaExceeded if `adding` more bytes would take the bucket past its quota.

    `replacing`: the partial uploads a final upload of `adding` bytes is made of, whose bytes
    it takes over (they are not counted on top of it)."""
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
    used = bucket_usage(conn, bucket, replacing)
    if used + adding > quota:
        raise QuotaExceeded(
            f"bucket {bucket!r} is over its quota: {adding} more bytes on top of the {used} it "
            f"holds or has reserved exceed its {quota} bytes; delete versions or raise "
            "bucket_quota_bytes / bucket_quotas",
            bucket=bucket,
            used=used,
            quota=quota,
        )
