"""Scrub and repair: find chunks whose shards are missing or corrupt, and make them whole.

A read takes only the shards it needs (data shards first), so a lost parity shard, or every
shard of a chunk nobody reads, goes unseen until too many are gone. `scrub` reads every shard
of every chunk, checks each against its own checksum (no decoding), and queues the damaged
chunks for repair, as a read around a bad shard does.

The server's upkeep scrubs a slice per round (`scrub_round`) from a cursor kept in the
database under a lease: nodes sharing the store take turns, one at a time, and a restart goes
on where the last slice stopped.

`repair` works through that queue. A chunk whose shards are all intact again (a data dir
that was offline is back), and which still decodes to its SHA-256, leaves it. One with at
least k intact shards is rebuilt from the shards its check read and verified against its
SHA-256; then only its bad shards are written again, in place (see inplace.py): each to its
own data dir under its own name (a replaced disk carries the same name), or where that dir
is full, to another with room (and, by hand, where it is down: `edgestore repair` rebuilds
around a disk gone for good), under the chunk's generation, the other shards untouched. Only
where the rebuilt shards would not match the intact ones (another encoder) is it stored
again as a whole, as a new generation placed over the writable data dirs (ChunkWriter,
chunks.replace), the old generation's files left to gc's orphan sweep. A shard rebuilt on a
dir holding another of the chunk's keeps the chunk queued: once its shards are all intact
and a dir holding none of them can take one, it is spread again (spread.py), else it backs
off. One with fewer than k stays queued: only an upload of the same bytes can bring it back
(or a data dir that comes back), and the report names it; the upkeep tries it again after a
backoff, not every round.
While a data dir is down, or none has room for a chunk, the upkeep reads no queued chunk: it
checks the data dirs before each round, says so once, and goes on the first round they take
writes (it does not move a dir's shards elsewhere while that dir may come back).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgestore.codec import shardfile
from edgestore.engine import Engine
from edgestore.engine.read import ShardFault
from edgestore.errors import StorageError, StorageFull
from edgestore.maintenance import inplace, spread
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import cursors
from edgestore.metadata.chunks import ChunkRecord
from edgestore.metadata.clock import now
from edgestore.storage.datadirs import check_room
from edgestore.types import Layout

log = logging.getLogger(__name__)

BATCH = 200
SCRUB_JOB = "scrub"
# A node scrubbing a slice holds the scrub this long past its last renewal, and renews (and
# saves its position) at most this often: a node that dies mid-slice blocks the others for
# at most the lease, and a restart checks at most RENEW seconds of chunks again.
SCRUB_LEASE_SECONDS = 120.0
SCRUB_RENEW_SECONDS = 10.0
# A queued chunk with fewer than k intact shards: the upkeep tries it again after an hour,
# then twice as long each time, at most a day apart (a data dir that was offline may come
# back; an upload of its bytes heals it at once, whatever the backoff).
RETRY_FIRST_SECONDS = 3600.0
RETRY_MAX_SECONDS = 86400.0
# How long the upkeep of one node keeps a chunk it is repairing from the others'.
REPAIR_CLAIM_SECONDS = 600.0

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
    repaired: int = 0  # made whole from their intact shards (in place, or stored again)
    intact: int = 0  # every shard intact after all: taken off the queue
    unrecoverable: list[str] = field(default_factory=list)  # fewer than k intact shards
    errors: int = 0  # could not be written now (e.g. no writable data dir); still queued
    bytes_rewritten: int = 0  # shard file bytes written by repairs, headers included
    spread: int = 0  # intact, with shards doubled up on a dir: moved to dirs holding none
    crowded: int = 0  # still doubled up: no dir holding none of its shards can take one yet
    seconds: float = 0.0
    paused: str | None = None  # the upkeep's round stopped: new shards cannot be stored (why)


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
    keep_on: Callable[[], bool] = lambda: True,
) -> ScrubReport:
    """Check every shard of every chunk; queue the damaged chunks for repair.

    With `cursor` and `budget`: go on from the cursor and stop once about `budget` shard
    bytes are checked (the server's upkeep, a slice per round); past the last chunk the
    cursor goes back to the start. The cursor moves with every chunk checked; `keep_on` is
    asked after each, and the scrub stops when it says no."""
    report = ScrubReport()
    started = time.monotonic()
    after = cursor.after if cursor is not None else None
    while budget is None or report.bytes_checked < budget:
        with engine.core.db.read() as conn:
            ids = chunk_index.ids_after(conn, after, BATCH)
            records = chunk_index.load(conn, ids)
        if not ids:
            if cursor is not None:
                cursor.after = None
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
            # Counted only if queued: faults of a chunk collected, stored again (its old
            # files swept) or with those shards rebuilt elsewhere since its record was
            # loaded are no damage.
            if faults and _queue(engine, rec, faults):
                report.chunks_damaged += 1
                report.bad_shards += len(faults)
            if cursor is not None:
                cursor.after = cid
            progress("chunks", report.chunks_checked)
            if not keep_on():
                report.seconds = time.monotonic() - started
                return report
    report.seconds = time.monotonic() - started
    return report


def scrub_round(
    engine: Engine, *, owner: str, budget: int, hold: float, progress: Progress = _noop
) -> ScrubReport | None:
    """One slice of the store's background scrub, shared by the nodes of the store; None
    (nothing read) while another node holds it.

    Goes on from where the last slice stopped, on any node and before any restart, and
    records where it stops, also when it is interrupted (then it gives the scrub up, so
    another node goes on at once). After a finished slice `owner` holds it `hold` seconds
    more: the same node takes the next slice, the others stay out while it lives."""
    db = engine.core.db
    with db.write(durable=False) as conn:  # losing it costs a few chunks checked again
        held = cursors.take(db, conn, SCRUB_JOB, owner, SCRUB_LEASE_SECONDS)
    if held is None:
        return None
    cursor = ScrubCursor(held.position, held.passes)
    renewed = time.monotonic()
    lost = False

    def keep_on() -> bool:
        nonlocal renewed, lost
        if time.monotonic() - renewed < SCRUB_RENEW_SECONDS:
            return True
        renewed = time.monotonic()
        if _save(engine, owner, cursor, SCRUB_LEASE_SECONDS):
            return True
        log.info("scrub: another node took the scrub over (this one was too slow); stopping")
        lost = True
        return False

    try:
        report = scrub(engine, cursor=cursor, budget=budget, progress=progress, keep_on=keep_on)
    except BaseException:
        try:
            _save(engine, owner, cursor, None)
        except Exception:
            log.exception("scrub: could not record where the slice stopped")
        raise
    if not lost:
        _save(engine, owner, cursor, hold)
    return report


def _save(engine: Engine, owner: str, cursor: ScrubCursor, hold: float | None) -> bool:
    position = cursors.JobCursor(cursor.after, cursor.passes)
    return cursors.advance(engine.core.db, SCRUB_JOB, owner, position, hold)


def leave_scrub(engine: Engine, owner: str) -> None:
    """Give the background scrub up if `owner` holds it (a server shutting down)."""
    cursors.leave(engine.core.db, SCRUB_JOB, owner)


def _queue(engine: Engine, rec: ChunkRecord, faults: list[ShardFault]) -> bool:
    """Queue the chunk for repair; False if its record is out of date (see queue_repair)."""
    db = engine.core.db
    reason = "; ".join(f"shard {f.shard_index}: {f.reason}" for f in faults)
    bad = [f.shard_index for f in faults]
    with db.write() as conn:
        queued = chunk_index.queue_repair(
            db, conn, rec.chunk_id, f"scrub: {reason}", bad, rec.generation, rec.shards
        )
    if queued:
        own = engine.core.reader.dir_faults.per_chunk(faults)  # a dir down: said once
        (log.warning if own else log.debug)("scrub: chunk %s is damaged: %s", rec.chunk_id, reason)
    return queued


@dataclass
class RepairCursor:
    """Where the next round goes on: past the chunks the last one looked at, so a chunk
    that cannot be repaired is not read again first every round, ahead of the rest.
    `paused`: why new shards cannot be stored, from the round that found it until one is
    stored or the data dirs pass the check again; the log says it once, not every round."""

    after: str | None = None
    paused: str | None = None
    paused_by_check: bool = False  # found by cannot_store (else by a store that failed)


class _Outcome(enum.Enum):
    STORED = "stored"  # rebuilt and stored again
    DONE = "done"  # intact, unrecoverable (backing off) or gone
    AGAIN = "again"  # a fault seen while it was checked: due again now
    NO_ROOM = "no room"  # the store cannot take its new shards now: due again now


def repair(
    engine: Engine,
    *,
    limit: int | None = None,
    cursor: RepairCursor | None = None,
    due_only: bool = False,
    progress: Progress = _noop,
) -> RepairReport:
    """Repair queued chunks: all of them, or up to `limit` from `cursor` on (which it moves;
    back to the start once past the last).

    `due_only` (the server's upkeep): skip chunks backing off after a failed rebuild and
    those another node is repairing, and claim each before repairing it. Without it (by
    hand) every queued chunk is tried. A chunk that cannot be rebuilt backs off either way.

    A failure to store new shards is the store's, not the chunk's: with `due_only` the data
    dirs are checked before the first chunk is read, and the round stops (`paused`) while
    they cannot take writes, or at the first chunk that could not be stored; the chunks stay
    due, to be repaired the first round the dirs take writes again."""
    report = RepairReport()
    started = time.monotonic()
    after = cursor.after if cursor is not None else None
    gate = cursor if cursor is not None else RepairCursor()
    db = engine.core.db
    checked = False
    while limit is None or report.queued < limit:
        want = BATCH if limit is None else min(BATCH, limit - report.queued)
        with db.read() as conn:
            ids = chunk_index.queued(conn, after, want, due_at=now(conn) if due_only else None)
        if due_only and ids and not checked:
            checked = True
            if (blocked := cannot_store(engine)) is not None:
                report.paused = _pause(gate, blocked, by_check=True)
                break  # the cursor stays where it was
            if gate.paused is not None and gate.paused_by_check:
                _resume(gate)
        for cid in ids:
            if due_only:
                with db.write(durable=False) as conn:  # lost in a crash: it is due again
                    if not chunk_index.claim_repair(conn, cid, now(conn) + REPAIR_CLAIM_SECONDS):
                        after = cid
                        continue  # another node took it since the query
            report.queued += 1
            outcome, detail = _repair_one(engine, cid, report, quiet=due_only)
            if outcome in (_Outcome.AGAIN, _Outcome.NO_ROOM) and due_only:
                with db.write(durable=False) as conn:
                    chunk_index.release_repair(conn, cid)
            progress("chunks", report.queued)
            if outcome is _Outcome.NO_ROOM and due_only:
                # The others would fail the same way: the round ends, this one first next.
                report.paused = _pause(gate, detail, by_check=False)
                break
            if outcome is _Outcome.STORED and gate.paused is not None:
                _resume(gate)
            after = cid
        if cursor is not None:
            cursor.after = after if report.paused is not None or len(ids) == want else None
        if report.paused is not None or len(ids) < want:
            break
    report.seconds = time.monotonic() - started
    return report


def cannot_store(engine: Engine) -> str | None:
    """Why the upkeep cannot repair now, or None: a data dir unusable since start, missing,
    without its marker or not writable (it may come back: its shards are not moved
    elsewhere meanwhile), or no data dir with a chunk's room free. Cheap: a stat and a
    marker read per data dir.

    One full dir is no reason: a repair writes only the bad shards, each to its own dir
    where it has room (a replaced disk), else to another; a chunk that must be stored again
    as a whole and finds no room pauses the round then."""
    dirs = engine.core.dirs
    full: list[str] = []
    try:
        dirs.writable_names()
        for backend in dirs.backends.values():
            try:
                check_room(backend, engine.core.settings.chunk_max_size)
            except StorageFull as exc:
                full.append(str(exc))
    except StorageError as exc:
        return str(exc)
    if full and len(full) == len(dirs.backends):
        return "; ".join(full)
    return None


def _pause(gate: RepairCursor, reason: str, *, by_check: bool) -> str:
    """Note that repairs wait for the store: an error when they start to, not every round
    (a reason that changes meanwhile is only noted)."""
    if gate.paused is None:
        log.error(
            "repair: paused, new shards cannot be stored: %s; queued chunks wait (nothing is "
            "read for them) and are repaired the first upkeep round the data dirs take writes",
            reason,
        )
    elif gate.paused != reason:
        log.info("repair: still paused: %s", reason)
    gate.paused, gate.paused_by_check = reason, by_check
    return reason


def _resume(gate: RepairCursor) -> None:
    log.warning("repair: new shards can be stored again (%s no longer); resuming", gate.paused)
    gate.paused = None


def retry_delay(attempts: int) -> float:
    """How long the upkeep waits before trying a chunk again after `attempts` failed ones."""
    return min(RETRY_FIRST_SECONDS * 2.0 ** min(attempts - 1, 32), RETRY_MAX_SECONDS)


def _repair_one(
    engine: Engine, cid: str, report: RepairReport, *, quiet: bool
) -> tuple[_Outcome, str]:
    """Repair one queued chunk: what came of it, and why it could not be stored again (a
    failure of the store, NO_ROOM, which `quiet` leaves to the caller to log)."""
    core = engine.core
    with core.db.read() as conn:
        rec = chunk_index.load(conn, [cid]).get(cid)
        checked_at = now(conn)
    if rec is None:
        return _Outcome.DONE, ""  # collected by gc meanwhile (which drops its queue entry)
    try:
        # Every shard read and checked once, and the chunk rebuilt from the intact ones,
        # verified against its id. Also when every shard passes its own checksum: a chunk
        # queued because it decoded to other bytes (or inline bytes that rotted) is not
        # whole, and leaving the queue would make the next upload of its bytes a plain
        # dedup hit instead of what restores it.
        found = core.reader.examine(rec)
    except StorageError as exc:
        with core.db.read() as conn:
            found_now = chunk_index.lookup(conn, rec.chunk_id)
        if found_now is None or found_now.generation != rec.generation:
            return _Outcome.DONE, ""  # collected or stored again while it was read: not lost
        with core.db.write() as conn:
            backoff = chunk_index.back_off_repair(conn, cid, retry_delay)
            t = now(conn)
        report.unrecoverable.append(cid)
        if backoff is None:
            log.error("repair: chunk %s cannot be rebuilt: %s", cid, exc)
        else:
            attempts, at = backoff
            log.error(
                "repair: chunk %s cannot be rebuilt (attempt %d; the server tries again in "
                "%.0f h; an upload of its bytes restores it): %s",
                cid,
                attempts,
                (at - t) / 3600,
                exc,
            )
        return _Outcome.DONE, ""
    faults = found.faults
    if not faults and (moved := spread.spread(engine, rec, found, checked_at, retry_delay)):
        report.spread += bool(moved.moved)
        report.crowded += moved.left is not None
        report.bytes_rewritten += moved.bytes_written
        return (_Outcome.STORED if moved.moved else _Outcome.DONE), ""
    if not faults:
        with core.db.write() as conn:
            removed = chunk_index.unqueue(conn, cid, checked_at)
        if not removed:  # a read found a fault since the check began (the next round's), or
            return _Outcome.AGAIN, ""  # another node took it off the queue
        report.intact += 1
        log.info("repair: chunk %s has every shard intact; taken off the queue", cid)
        return _Outcome.DONE, ""
    bad = "; ".join(f"#{f.shard_index}: {f.reason}" for f in faults)
    try:
        # The upkeep leaves the shards of a dir that is down where they are (it may come
        # back); by hand, they are rebuilt on the other dirs.
        rebuilt = inplace.rebuild(engine, rec, found, checked_at, around_down=not quiet)
        if rebuilt is None:  # the rebuilt shards would not match the intact ones
            stored = core.writer.store(found.raw, expect=cid)  # queued: not a dedup hit
    except StorageError as exc:
        report.errors += 1
        if not quiet:
            log.error("repair: chunk %s could not be repaired now: %s", cid, exc)
        return _Outcome.NO_ROOM, str(exc)
    if rebuilt is not None:
        if not rebuilt.current:
            return _Outcome.DONE, ""  # collected or stored again meanwhile: not lost
        report.repaired += 1
        report.bytes_rewritten += rebuilt.bytes_written
        where = ", ".join(
            f"#{r.shard_index} on {r.backend}"
            + (
                f" (moved from {rebuilt.moved_from[r.shard_index]})"
                if r.shard_index in rebuilt.moved_from
                else ""
            )
            for r in rebuilt.refs
        )
        log.warning(
            "repair: chunk %s: rebuilt %d of %d shards in place: %s (it had: %s)%s",
            cid,
            len(rebuilt.refs),
            rec.ec_k + rec.ec_m,
            where,
            bad,
            "" if rebuilt.unqueued else "; a fault seen since keeps it queued",
        )
        return _Outcome.STORED, ""
    if stored.stored_size:  # (0: another writer stored it again first)
        report.repaired += 1
        report.bytes_rewritten += _shard_file_bytes(engine, cid)
        log.warning("repair: chunk %s stored again as a whole (it had: %s)", cid, bad)
    return _Outcome.STORED, ""


def _shard_file_bytes(engine: Engine, cid: str) -> int:
    """The bytes of the chunk's shard files, headers included (what a store again wrote;
    its StoredChunk counts the payloads only), as bytes_rewritten counts them in place."""
    with engine.core.db.read() as conn:
        rec = chunk_index.load(conn, [cid]).get(cid)
    return 0 if rec is None else sum(shardfile.HEADER_SIZE + ref.size for ref in rec.shards)
