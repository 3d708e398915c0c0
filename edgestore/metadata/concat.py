"""Queries on tus concatenation: final uploads made of partial uploads' parts, end to end.

A final upload waits, open and holding no bytes of its own, until its last partial completes;
the transaction that completes it makes the final into an object version (engine/concat.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.errors import UploadNotFound
from edgestore.metadata.clock import now
from edgestore.metadata.schema import upload_parts, uploads
from edgestore.metadata.uploads import COMPLETE, OPEN, get


def request_key(
    partial_ids: list[str],
    *,
    bucket: str | None,
    key: str | None,
    content_type: str | None,
    filename: str | None,
    user_metadata: dict[str, Any] | None,
) -> str:
    """A digest of everything a final upload's POST asks for: two requests with the same
    digest would make the same version (tus creation is not idempotent; this makes a retried
    final find the first one instead of making a second version)."""
    request = [partial_ids, bucket, key, content_type, filename, user_metadata or {}]
    encoded = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


def finals_by_request(conn: Connection, digest: str) -> list[str]:
    """Final uploads created with this request digest, newest first."""
    rows = conn.execute(
        sa.select(uploads.c.upload_id)
        .where(uploads.c.concat_key == digest)
        .order_by(uploads.c.created_at.desc())
    )
    return [r.upload_id for r in rows]


def _waiting_finals(*columns: sa.ColumnElement[object]) -> sa.Select:
    """Open final uploads (concatenation-unfinished) that still wait for partials."""
    return sa.select(uploads.c.upload_id, uploads.c.concat_of, *columns).where(
        uploads.c.state == OPEN,
        uploads.c.is_partial.is_(False),
        uploads.c.committed_offset == 0,  # a waiting final holds no bytes of its own
        uploads.c.tail_length == 0,
    )


def pending_finals(conn: Connection, partial_id: str) -> list[str]:
    """Open final uploads (concatenation-unfinished) waiting for this partial upload, in one
    order: the transactions that lock them (partials completing, terminated) never cross."""
    rows = conn.execute(_waiting_finals())
    return sorted(r.upload_id for r in rows if partial_id in (r.concat_of or ()))


def keep_waiting_finals_alive(conn: Connection) -> None:
    """Before expiry: a final upload waiting for its partials lives as long as a partial still
    receiving bytes (their appends push only their own expiry back), and the finished
    partials it is made of live as long as it does (expiring one would release its parts: the
    final could never complete, while its Upload-Expires said it could)."""
    rows = conn.execute(_waiting_finals(uploads.c.expires_at))
    for r in rows.all():
        if not r.concat_of or r.expires_at is None:
            continue
        try:
            partials = [get(conn, pid) for pid in r.concat_of]
        except UploadNotFound:
            continue
        if any(p.state not in (OPEN, COMPLETE) for p in partials):
            continue  # it can never complete: let it expire
        until = max([r.expires_at] + [p.expires_at or 0.0 for p in partials if p.state == OPEN])
        # Partials before their final, in id order: the order in which a partial's last
        # append (completing the final) and its termination (ending it) lock them.
        for p in sorted(partials, key=lambda p: p.upload_id):
            if p.state == COMPLETE and p.expires_at is not None and p.expires_at < until:
                _push_expiry(conn, p.upload_id, until)
        if until > r.expires_at:
            _push_expiry(conn, r.upload_id, until)


def _push_expiry(conn: Connection, upload_id: str, until: float) -> None:
    conn.execute(
        sa.update(uploads)
        .where(uploads.c.upload_id == upload_id, uploads.c.expires_at < until)
        .values(expires_at=until)
    )


def all_complete(conn: Connection, upload_ids: list[str]) -> bool:
    """Whether every one of these uploads is complete, in one statement (a final of many
    partials is checked as each of them completes)."""
    wanted = sorted(set(upload_ids))
    done = conn.execute(
        sa.select(sa.func.count())
        .select_from(uploads)
        .where(uploads.c.upload_id.in_(wanted), uploads.c.state == COMPLETE)
    ).scalar_one()
    return done == len(wanted)


def complete_parts(
    conn: Connection, upload_ids: list[str]
) -> dict[str, tuple[int, list[tuple[str, int, int]]]] | None:
    """Each upload's size and (chunk id, offset, length) parts, in order; None unless every
    one of them is complete. One statement, so one snapshot even under PostgreSQL's READ
    COMMITTED: an upload released meanwhile is seen complete with its parts, or not at all."""
    rows = conn.execute(
        sa.select(
            uploads.c.upload_id,
            uploads.c.state,
            uploads.c.committed_offset,
            uploads.c.tail_length,
            upload_parts.c.chunk_id,
            upload_parts.c.offset,
            upload_parts.c.length,
        )
        .select_from(
            uploads.outerjoin(upload_parts, upload_parts.c.upload_id == uploads.c.upload_id)
        )
        .where(uploads.c.upload_id.in_(sorted(set(upload_ids))))
        .order_by(uploads.c.upload_id, upload_parts.c.seq)
    )
    found: dict[str, tuple[int, list[tuple[str, int, int]]]] = {}
    for r in rows:
        if r.state != COMPLETE:
            return None
        _, entries = found.setdefault(r.upload_id, (r.committed_offset + r.tail_length, []))
        if r.chunk_id is not None:
            entries.append((r.chunk_id, r.offset, r.length))
    return found if len(found) == len(set(upload_ids)) else None


def set_concatenated(conn: Connection, upload_id: str, total: int) -> None:
    """A final upload's length and offset once all its partials are in."""
    conn.execute(
        sa.update(uploads)
        .where(uploads.c.upload_id == upload_id)
        .values(length=total, committed_offset=total, updated_at=now(conn))
    )
