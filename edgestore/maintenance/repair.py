"""Scrub and repair: find chunks whose shards are missing or corrupt, and make them whole.

A read takes only the shards it needs (data shards first), so a lost parity shard, or every
shard of a chunk nobody reads, goes unseen until too many are gone. `scrub` reads every shard
of every chunk, checks each against its own checksum (no decoding), and queues the damaged
chunks for repair, as a read around a bad shard does.

`repair` works through that queue. A chunk whose shards are all intact again (a data dir
that was offline is back), and which still decodes to its SHA-256, leaves it. One with at
least k intact shards is rebuilt from them, verified against its SHA-256, and stored again as
a new generation of shards, placed over the data dirs that are writable now: the same path an
upload of its bytes takes (ChunkWriter, chunks.replace); the old generation's files go with
gc's orphan sweep. One with fewer stays queued: only an upload of the same bytes can bring
it back, and the report names it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgestore.engine import Engine
from edgestore.errors import StorageError
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.chunks import ChunkRecord
from edgestore.metadata.db import now
from edgestore.types import Layout

log = logging.getLogger(__name__)

BATCH = 200

Progress = Callable[[str, int], None]


def _noop(_stage: str, _count: int) -> None:
    pass


@dataclass
class ScrubReport:
    chunks_checked: int = 0
    shard_files_checked: int = 0
    bytes_checked: int = 0
    chunks_damaged: int = 0
    bad_shards: int = 0
    seconds: float = 0.0


@dataclass
class RepairReport:
    queued: int = 0  # chunks looked at
    repaired: int = 0  # stored again from their intact shards
    intact: int = 0  # every shard intact after all: taken off the queue
    unrecoverable: list[str] = field(default_factory=list)  # fewer than k intact shards
    errors: int = 0  # could not be stored again now (e.g. no writable data dir); still queued
    bytes_rewritten: int = 0
    seconds: float = 0.0


@dataclass
class ScrubCursor:
    """Where a background scrub goes on next round; `passes` counts finished passes."""

    after: str | None = None
    passes: int = 0


def scrub(
    engine: Engine,
    *,
    cursor: ScrubCursor | None = None,
    budget: int | None = None,
    progress: Progress = _noop,
) -> ScrubReport:
    """Check every shard of every chunk; queue the damaged chunks for repair.

    With `cursor` and `budget`: go on from the cursor and stop once about `budget` shard
    bytes are checked (the server's upkeep, a slice per round); past the last chunk the
    cursor goes back to the start."""
    report = ScrubReport()
    started = time.monotonic()
    after = cursor.after if cursor is not None else None
    while budget is None or report.bytes_checked < budget:
        with engine.core.db.read() as conn:
            ids = chunk_index.ids_after(conn, after, BATCH)
            records = chunk_index.load(conn, ids)
        if not ids:
            after = None
            if cursor is not None:
                cursor.passes += 1
                log.info("scrub: pass %d over the store done", cursor.passes)
            break
        for cid in ids:
            if budget is not None and report.bytes_checked >= budget:
                break
            after = cid
            rec = records.get(cid)
            if rec is None or rec.layout == Layout.INLINE:
                continue  # collected meanwhile, or kept in the database
            faults = engine.core.reader.check(rec)
            report.chunks_checked += 1
            report.shard_files_checked += len(rec.shards)
            report.bytes_checked += rec.shard_size * len(rec.shards)
            # Counted only if queued: faults of a chunk collected, or stored again (its old
            # files swept), since its record was loaded are no damage.
            if faults and _queue(
                engine,
                rec,
                [f.shard_index for f in faults],
                "; ".join(f"shard {f.shard_index}: {f.reason}" for f in faults),
            ):
                report.chunks_damaged += 1
                report.bad_shards += len(faults)
            progress("chunks", report.chunks_checked)
    if cursor is not None:
        cursor.after = after
    report.seconds = time.monotonic() - started
    return report


def _queue(engine: Engine, rec: ChunkRecord, bad: list[int], reason: str) -> bool:
    """Queue the chunk for repair; False if its record is out of date (see queue_repair)."""
    db = engine.core.db
    with db.write() as conn:
        queued = chunk_index.queue_repair(
            db, conn, rec.chunk_id, f"scrub: {reason}", bad, rec.generation
        )
    if queued:
        log.warning("scrub: chunk %s is damaged: %s", rec.chunk_id, reason)
    return queued


@dataclass
class RepairCursor:
    """Where the next round goes on: past the chunks the last one looked at, so a chunk
    that cannot be repaired is not read again first every round, ahead of the rest."""

    after: str | None = None


def repair(
    engine: Engine,
    *,
    limit: int | None = None,
    cursor: RepairCursor | None = None,
    progress: Progress = _noop,
) -> RepairReport:
    """Repair queued chunks: all of them, or up to `limit` from `cursor` on (which it moves;
    back to the start once past the last)."""
    report = RepairReport()
    started = time.monotonic()
    after = cursor.after if cursor is not None else None
    while limit is None or report.queued < limit:
        want = BATCH if limit is None else min(BATCH, limit - report.queued)
        with engine.core.db.read() as conn:
            ids = chunk_index.queued(conn, after, want)
        if cursor is not None:
            cursor.after = ids[-1] if len(ids) == want else None
        if not ids:
            break
        after = ids[-1]
        for cid in ids:
            report.queued += 1
            _repair_one(engine, cid, report)
            progress("chunks", report.queued)
        if len(ids) < want:
            break
    report.seconds = time.monotonic() - started
    return report


def _repair_one(engine: Engine, cid: str, report: RepairReport) -> None:
    core = engine.core
    with core.db.read() as conn:
        rec = chunk_index.load(conn, [cid]).get(cid)
    if rec is None:
        return  # collected by gc meanwhile (which drops its queue entry)
    checked_at = now()
    faults = core.reader.check(rec)
    try:
        # From any k intact shards, verified against its id. Also when every shard passes
        # its own checksum: a chunk queued because it decoded to other bytes (or inline
        # bytes that rotted) is not whole, and leaving the queue would make the next upload
        # of its bytes a plain dedup hit instead of what restores it.
        raw = core.reader.read(rec)
    except StorageError as exc:
        with core.db.read() as conn:
            if chunk_index.lookup(conn, rec.chunk_id) is None:
                return  # collected by gc while it was read: nothing was lost
        report.unrecoverable.append(cid)
        log.error("repair: chunk %s cannot be rebuilt: %s", cid, exc)
        return
    if not faults:
        with core.db.write() as conn:
            removed = chunk_index.unqueue(conn, cid, checked_at)
        if not removed:  # a read found a fault since the check began (the next round's), or
            return  # another node took it off the queue
        report.intact += 1
        log.info("repair: chunk %s has every shard intact; taken off the queue", cid)
        return
    try:
        stored = core.writer.store(raw, expect=cid)  # queued: stored again, not a dedup hit
    except StorageError as exc:
        report.errors += 1
        log.error("repair: chunk %s could not be stored again: %s", cid, exc)
        return
    if stored.stored_size:
        report.repaired += 1
        report.bytes_rewritten += stored.stored_size
        log.warning(
            "repair: chunk %s stored again (it had %d bad shard(s): %s)",
            cid,
            len(faults),
            "; ".join(f"#{f.shard_index}: {f.reason}" for f in faults),
        )
