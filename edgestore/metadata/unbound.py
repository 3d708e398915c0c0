"""Partial uploads an older release wrote without a bucket (listed by migration 0013).

Any key could touch a partial then; since, a bucket-limited key touches only partials of its
bucket. So that a key's paused parallel upload survives the upgrade, the first bucket-limited
key to touch such a partial binds it to its bucket, as a partial created today would be, and
keys of other buckets are refused it from then on. Only a request let through binds it:
`is_unbound` while checking, `claim` once every check has passed.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.schema import unbound_partials, uploads


def is_unbound(conn: Connection, upload_id: str) -> bool:
    """Whether `upload_id` is a partial of an older release still waiting for a bucket."""
    found = conn.execute(
        sa.select(unbound_partials.c.upload_id).where(unbound_partials.c.upload_id == upload_id)
    ).first()
    return found is not None


def claim(conn: Connection, upload_id: str, bucket: str) -> bool:
    """Bind the unbound partial `upload_id` to `bucket`; False if it is not one (any more).

    Taking its row out first makes the claim once-only: of two keys racing, one binds it."""
    taken = conn.execute(
        sa.delete(unbound_partials).where(unbound_partials.c.upload_id == upload_id)
    ).rowcount
    if not taken:
        return False
    bound = conn.execute(
        sa.update(uploads)
        .where(uploads.c.upload_id == upload_id, uploads.c.bucket.is_(None), uploads.c.is_partial)
        .values(bucket=bucket)
    ).rowcount
    return bool(bound)
