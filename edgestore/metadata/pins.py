"""Queries on native upload sessions: the chunks a session pins, and claiming a session.

A pin is a row in upload_pins plus one reference in chunks.refcount, written in the same
transaction, so gc never takes a chunk a session was told it need not send. Every change to a
session's pins first touches the session's row (`touch_open`): on PostgreSQL that row lock
orders pinning against finalize, so no pin is added after finalize released them; SQLite
serialises write transactions anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.errors import TooLarge
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.clock import now
from edgestore.metadata.schema import chunks, upload_pins, uploads
from edgestore.metadata.uploads import OPEN

KIND = "native"  # uploads.kind of a native session: the only kind that holds pins
_IN_BATCH = 500  # rows per IN (...) list or multi-row INSERT: under every parameter limit


def _batches(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _IN_BATCH):
        yield items[i : i + _IN_BATCH]


def touch_open(conn: Connection, upload_id: str, *, expiry: float | None = None) -> bool:
    """Mark activity on an open, unexpired native session and lock its row; False if it is
    not (an upload of another kind is not: nothing releases pins when a tus upload completes).

    `expiry` (seconds): progress pushes the session's expiry back to at least this far from
    now, as a tus upload's checkpoints do."""
    t = now(conn)
    values: dict[str, Any] = {"updated_at": t}
    if expiry is not None:
        until = t + expiry
        values["expires_at"] = sa.case(
            (uploads.c.expires_at < until, until), else_=uploads.c.expires_at
        )
    res = conn.execute(
        sa.update(uploads)
        .where(
            uploads.c.upload_id == upload_id,
            uploads.c.kind == KIND,
            uploads.c.state == OPEN,
            sa.or_(uploads.c.expires_at.is_(None), uploads.c.expires_at >= t),
        )
        .values(values)
    )
    return res.rowcount == 1


def pin(
    conn: Connection,
    upload_id: str,
    chunk_ids: Sequence[str],
    *,
    newly: list[str] | None = None,
    within: int | None = None,
) -> dict[str, int]:
    """Pin to the session those of `chunk_ids` that are stored; return them (pinned before or
    now) with their raw sizes. The caller has touched the session in this transaction.

    `newly`: extended with the ids pinned by this call (not pinned to the session before).
    `within`: TooLarge (nothing pinned) if the session would hold more distinct chunk bytes
    than that (its size: a file's distinct chunks never add up to more)."""
    stored: dict[str, int] = {}
    for batch in _batches(list(dict.fromkeys(chunk_ids))):
        # FOR KEY SHARE (PostgreSQL): gc's delete of a chunk found here waits for this
        # transaction, which then holds a reference; a delete already under way is waited for,
        # and its chunk is not returned (missing), rather than failing the pin's foreign key.
        found = conn.execute(
            sa.select(chunks.c.chunk_id, chunks.c.raw_size)
            .where(chunks.c.chunk_id.in_(batch))
            .with_for_update(read=True, key_share=True)
        )
        stored.update((r[0], r[1]) for r in found)
    if not stored:
        return stored
    held: set[str] = set()
    for batch in _batches(sorted(stored)):
        held.update(
            conn.execute(
                sa.select(upload_pins.c.chunk_id).where(
                    upload_pins.c.upload_id == upload_id, upload_pins.c.chunk_id.in_(batch)
                )
            ).scalars()
        )
    new = sorted(stored.keys() - held)
    if within is not None and new:
        ensure_room(conn, upload_id, sum(stored[c] for c in new), within)
    if newly is not None:
        newly.extend(new)
    for batch in _batches(new):
        rows = [{"upload_id": upload_id, "chunk_id": c} for c in batch]
        conn.execute(sa.insert(upload_pins), rows)
    chunk_index.add_refs(conn, Counter(new))
    return stored


def release(conn: Connection, upload_id: str) -> int:
    """Drop every pin of the session and its references; returns how many there were."""
    counts = remove(conn, upload_id)
    chunk_index.drop_refs(conn, counts)
    return sum(counts.values())


def remove(conn: Connection, upload_id: str) -> Counter[str]:
    """Delete every pin of the session, leaving their references counted: the caller drops
    them (the returned counts) in this transaction, in the one pass that changes its other
    counts (a finalize: its manifest's; chunks.change_refs)."""
    counts = Counter(
        conn.execute(
            sa.select(upload_pins.c.chunk_id).where(upload_pins.c.upload_id == upload_id)
        ).scalars()
    )
    conn.execute(sa.delete(upload_pins).where(upload_pins.c.upload_id == upload_id))
    return counts


def ensure_room(conn: Connection, upload_id: str, adding: int, within: int) -> None:
    """TooLarge if the session, pinning `adding` more bytes of chunks, would hold more than
    `within` (its size: else a session of one byte could hold any number of chunks)."""
    holding = pinned(conn, upload_id)[1] + adding
    if holding > within:
        raise TooLarge(
            f"upload session {upload_id} would hold {holding} bytes of chunks, more than the "
            f"{within} bytes it was created for"
        )


def holds(conn: Connection, upload_id: str, chunk_id: str) -> bool:
    """Whether the session pins this chunk already."""
    q = sa.select(upload_pins.c.chunk_id).where(
        upload_pins.c.upload_id == upload_id, upload_pins.c.chunk_id == chunk_id
    )
    return conn.execute(q).first() is not None


def pinned(conn: Connection, upload_id: str) -> tuple[int, int]:
    """(chunks, raw bytes) the session holds: what a resuming client need not send again."""
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(chunks.c.raw_size), 0))
        .select_from(upload_pins.join(chunks, chunks.c.chunk_id == upload_pins.c.chunk_id))
        .where(upload_pins.c.upload_id == upload_id)
    ).one()
    return int(row[0]), int(row[1])
