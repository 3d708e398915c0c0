"""Fill in whole-file SHA-256s that could not be computed while uploading.

A tus final upload is assembled from partials' manifests without reading a byte, and SHA-256
states cannot be joined, so its digest is computed afterwards by reading the object back
(which also verifies every chunk). Until then its ETag is the manifest digest.

The server's upkeep does it a few versions per round (`fill_round`) from a cursor kept in
the database under a lease, as the scrub does: nodes sharing the store take turns, so no two
read the same version back at once, and a restart goes on where the last round stopped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgestore.engine import Engine
from edgestore.errors import ObjectNotFound, StorageError
from edgestore.metadata import cursors
from edgestore.metadata import objects as object_rows

log = logging.getLogger(__name__)

DIGEST_JOB = "sha256"
# A node reading versions back holds the job this long past its last renewal, and renews
# (and saves its position) at most this often, between chunks: a node that dies mid-read
# keeps the others out for at most the lease.
DIGEST_LEASE_SECONDS = 120.0
DIGEST_RENEW_SECONDS = 10.0


@dataclass
class DigestCursor:
    """Where the next round goes on: past the versions the last one tried. A version that
    cannot be read keeps no digest; taken first every round, it would hold up every version
    after it (and be read again each time). `passes` counts rounds that reached the end;
    `filled`, the digests filled through it (also by a round that stopped midway)."""

    after: str | None = None
    passes: int = 0
    filled: int = 0


class _LeaseLost(Exception):
    """Another node took the job over: this one stops at once."""


def fill_missing_sha256(
    engine: Engine,
    limit: int = 10,
    cursor: DigestCursor | None = None,
    check: Callable[[], None] | None = None,
) -> int:
    """Compute up to `limit` missing digests; returns how many were filled.

    `cursor`: carried from round to round, so they take turns (from the start again once
    past the last); it moves past each version as it is done, so a round stopped midway
    goes on from the version it was reading. `check`: called between chunks; raises to
    stop (server shutdown, lease lost)."""
    db = engine.core.db
    with db.read() as conn:
        todo = object_rows.without_sha256(conn, limit, cursor.after if cursor else None)
    done = 0
    for info in todo:
        h = hashlib.sha256()
        try:
            for piece in engine.objects.read(info):
                h.update(piece)
                if check is not None:
                    check()
        except ObjectNotFound:  # deleted while it was read: no digest to fill in
            pass
        except StorageError as exc:
            log.warning("cannot hash %s/%s v%d: %s", info.bucket, info.key, info.version, exc)
        else:
            with db.write() as conn:
                object_rows.set_sha256(conn, info.version_id, h.hexdigest())
            done += 1
            if cursor is not None:
                cursor.filled += 1
        if cursor is not None:
            cursor.after = str(info.version_id)
    if cursor is not None and len(todo) < limit:
        cursor.after = None
        cursor.passes += 1
    return done


def fill_round(
    engine: Engine,
    *,
    owner: str,
    hold: float,
    limit: int = 10,
    check: Callable[[], None] | None = None,
) -> int | None:
    """One round of the store's digest filling, shared by its nodes: how many digests were
    filled, or None (nothing read) while another node holds the job.

    Goes on from where the last round stopped, on any node and before any restart, and
    records where it stops, also when `check` raises (then it gives the job up, so another
    node goes on at once). After the round `owner` holds it `hold` seconds more."""
    db = engine.core.db
    with db.write(durable=False) as conn:  # losing it costs a version read again
        held = cursors.take(db, conn, DIGEST_JOB, owner, DIGEST_LEASE_SECONDS)
    if held is None:
        return None
    cursor = DigestCursor(held.position, held.passes)
    renewed = time.monotonic()

    def keep_on() -> None:
        nonlocal renewed
        if check is not None:
            check()
        if time.monotonic() - renewed < DIGEST_RENEW_SECONDS:
            return
        renewed = time.monotonic()
        if not _save(engine, owner, cursor, DIGEST_LEASE_SECONDS):
            raise _LeaseLost

    try:
        fill_missing_sha256(engine, limit, cursor, keep_on)
    except _LeaseLost:
        log.info("digests: another node took the job over (this one was too slow); stopping")
        return cursor.filled
    except BaseException:
        try:
            _save(engine, owner, cursor, None)
        except Exception:
            log.exception("digests: could not record where the round stopped")
        raise
    _save(engine, owner, cursor, hold)
    return cursor.filled


def _save(engine: Engine, owner: str, cursor: DigestCursor, hold: float | None) -> bool:
    position = cursors.JobCursor(cursor.after, cursor.passes)
    return cursors.advance(engine.core.db, DIGEST_JOB, owner, position, hold)


def leave(engine: Engine, owner: str) -> None:
    """Give the digest filling up if `owner` holds it (a server shutting down)."""
    cursors.leave(engine.core.db, DIGEST_JOB, owner)
