"""Garbage collection: reclaim expired uploads, unreferenced chunks and orphan shard files.

Plans in small batches, deletes rows before files (a row never points at a missing shard),
and spares anything younger than the grace period, and any chunk an upload being written
may hold, so it is safe beside running uploads whatever the grace.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from edgestore.engine import Engine, staging
from edgestore.engine.pipeline import ContextThreadPool
from edgestore.errors import StorageError
from edgestore.maintenance import restore_guard
from edgestore.metadata import garbage, reclaim
from edgestore.metadata.clock import now
from edgestore.storage.backend import BlobInfo
from edgestore.storage.local import TMP_SUFFIX
from edgestore.storage.placement import parse_shard_key
from edgestore.types import ShardRef

log = logging.getLogger(__name__)

# Unreferenced chunks listed, and deleted, per write transaction. One per chunk (a commit
# each) freed 68 chunks/s on SQLite, 140 on PostgreSQL: a deleted 10 TB backup set (~2.5M
# chunks) took 5-10 hours. A batch of 100, with puts going on (bench/gc_scale.py gc-put,
# 100k chunks): 1,400/s on SQLite, 630 on PostgreSQL (1,500 idle). 200 frees as many on
# SQLite and holds its one writer's lock twice as long, which puts wait for (p99 410 ms, not
# 230); on PostgreSQL it is ~35% faster idle, at p99 157 ms for puts, not 97.
BATCH = 100
# Threads deleting a batch's shard files, one per data dir (a chunk's 6+3 shards are on 9).
DELETE_THREADS = 9
# Files younger than this are never orphans, whatever the grace: a chunk's shards and a staged
# tail are written before the row that names them commits (the row is the commit point), so
# a file seconds old and unknown to the index is most likely one being written right now.
# A file's age is measured on the database's clock and on this node's (which stamped it,
# for a local data dir), whichever says younger: a node whose clock is ahead, or jumped
# forward, must not take the file another request is about to commit for an old one.
ORPHAN_MIN_AGE = 600.0
# An append holds the chunks it stored or found stored, unreferenced, until its checkpoint
# (the whole request, with Upload-Checksum): chunks unreferenced since the oldest write lease
# was taken are spared. A lease lapsed less than LEASE_LAPSE ago counts, as its writer may
# only be waiting for a stalled client (it renews as bytes arrive); a crashed writer's
# chunks wait that much longer. Leases, chunk rows and the cutoffs here are all times by
# the database's clock (metadata/clock.py); CLOCK_SKEW is slack for the few milliseconds a
# node's reading of it may be off.
LEASE_LAPSE = 3600.0
CLOCK_SKEW = 60.0


@dataclass
class GcReport:
    uploads_expired: int = 0
    chunks_deleted: int = 0
    shard_files_deleted: int = 0
    bytes_freed: int = 0
    orphan_files_deleted: int = 0
    orphan_bytes: int = 0
    errors: int = 0
    seconds: float = 0.0
    epoch: int = 0  # the store epoch this run advanced to (maintenance/restore_guard.py)


Progress = Callable[[str, int], None]


def _noop(_stage: str, _count: int) -> None:
    pass


def collect(
    engine: Engine,
    *,
    grace: float | None = None,
    orphans: bool = True,
    progress: Progress = _noop,
    accept_restored: bool = False,
) -> GcReport:
    """Run one collection; `grace` (seconds) defaults to the configured gc_grace_seconds.

    `orphans=False` skips listing the data dirs for orphan files (the costly part), which
    spares files younger than ORPHAN_MIN_AGE even when `grace` is shorter. Raises
    MetadataBehind, deleting nothing, when the database is an older backup restored
    (restore_guard): its orphans and unreferenced chunks may be what a newer one names.
    `accept_restored` takes the database as it is and collects.
    """
    grace = engine.settings.gc_grace_seconds if grace is None else grace
    started = time.monotonic()
    report = GcReport(epoch=restore_guard.advance(engine, accept_restored=accept_restored))
    report.uploads_expired = engine.uploads.expire_stale(local_grace=grace)
    progress("uploads", report.uploads_expired)
    _collect_chunks(engine, _chunks_before(engine, grace), report, progress)
    if orphans:
        _collect_orphans(engine, _files_before(engine, grace), report, progress)
    report.seconds = time.monotonic() - started
    return report


def _chunks_before(engine: Engine, grace: float) -> float:
    """Chunks unreferenced since before this are garbage: past the grace, and older than
    any write lease (an append taken up later holds only chunks it stores or finds later).
    """
    with engine.core.db.read() as conn:
        t = now(conn)
        held_since = reclaim.oldest_lease(conn, t - LEASE_LAPSE)
    if held_since is None:
        return t - grace
    return min(t - grace, held_since - CLOCK_SKEW)


def _files_before(engine: Engine, grace: float) -> float:
    """Files modified before this may be orphans (see ORPHAN_MIN_AGE)."""
    with engine.core.db.read() as conn:
        t = min(now(conn), time.time())
    return t - max(grace, ORPHAN_MIN_AGE)


def _collect_chunks(engine: Engine, before: float, report: GcReport, progress: Progress) -> None:
    """Delete unreferenced chunks a batch per transaction, then their files (a crash between
    leaves orphan files, which the sweep takes; never a row naming a missing file).

    Candidates are paged in chunk id order, so a batch gc could delete none of (every chunk
    held or referenced again) is passed, not the end of the run. A batch's files go on a
    thread per data dir while the next batch's rows are deleted: one batch in flight."""
    db = engine.core.db
    after: str | None = None
    pending: list[Future[_Freed]] = []
    with ContextThreadPool(DELETE_THREADS, thread_name_prefix="edgestore-gc") as pool:
        try:
            while True:
                with db.read() as conn:
                    batch = garbage.unreferenced(conn, before, BATCH, after=after)
                if not batch:
                    return
                after = batch[-1]
                with db.write() as conn:  # referenced again meanwhile, or held: kept
                    deleted = garbage.delete_unreferenced(conn, batch, before)
                _settle(pending, report)
                if deleted:
                    report.chunks_deleted += len(deleted)
                    pending = _delete_shard_files(engine, pool, deleted.values())
                # After every page, one it deleted none of too: the server's upkeep stops a
                # run here when it shuts down, however many held pages are left to pass.
                progress("chunks", report.chunks_deleted)
        finally:
            _settle(pending, report)


@dataclass
class _Freed:
    """What deleting some shard files did."""

    files: int = 0
    bytes: int = 0
    errors: int = 0


def _delete_shard_files(
    engine: Engine, pool: Executor, deleted: Iterable[list[ShardRef]]
) -> list[Future[_Freed]]:
    """Start deleting the files of deleted chunks, a task per data dir (each on its own disk,
    at best). One after the other they were the slow part once the foreign-key lookups were
    indexed: bench/gc_scale.py gc, 30k chunks over 9 dirs, median 19.2 -> 12.5 s on SQLite,
    20.7 -> 9.5 s on PostgreSQL."""
    by_dir: dict[str, list[ShardRef]] = defaultdict(list)
    for refs in deleted:
        for ref in refs:
            by_dir[ref.backend].append(ref)
    return [pool.submit(_delete_in_dir, engine, name, refs) for name, refs in by_dir.items()]


def _delete_in_dir(engine: Engine, name: str, refs: list[ShardRef]) -> _Freed:
    freed = _Freed()
    backend = engine.core.dirs.backends.get(name)
    for ref in refs:
        try:
            if backend is None:
                raise StorageError(f"data dir {name} unavailable")
            backend.delete(ref.key)
            freed.files += 1
            freed.bytes += ref.size
        except StorageError as exc:  # left as an orphan for a later run
            freed.errors += 1
            log.warning("gc: could not delete shard %s: %s", ref.key, exc)
    return freed


def _settle(pending: list[Future[_Freed]], report: GcReport) -> None:
    """Wait for the deletions started, and count what they did (each once: taken off)."""
    while pending:
        freed = pending.pop().result()
        report.shard_files_deleted += freed.files
        report.bytes_freed += freed.bytes
        report.errors += freed.errors


def _collect_orphans(engine: Engine, before: float, report: GcReport, progress: Progress) -> None:
    """Shard files no row points at (a crash between write and commit), staged tails no
    upload points at any more, and stale temporary files.

    A data dir is swept one fan-out dir at a time (list it, look its files up, delete the
    orphans): memory is bounded by one dir's files, not the data dir's millions."""
    db, dirs = engine.core.db, engine.core.dirs
    with db.read() as conn:
        live_tails = reclaim.tail_keys(conn)
    for name, backend in dirs.backends.items():
        if name in dirs.unavailable:
            continue
        try:
            # Still the disk this name was opened on: under another one (remounted, swapped)
            # every shard would look unknown, and be deleted. Checked before each group's
            # deletions, as a sweep of a large dir takes a while.
            for group in backend.list_groups():
                backend.check()
                _sweep(engine, name, group, before, live_tails, report, progress)
        except StorageError as exc:  # (deletions count their own errors)
            report.errors += 1
            log.warning("gc: cannot list data dir %s: %s", name, exc)


def _sweep(
    engine: Engine,
    name: str,
    group: list[BlobInfo],
    before: float,
    live_tails: set[str],
    report: GcReport,
    progress: Progress,
) -> None:
    """Delete the orphans among one group of a data dir's files."""
    old = [blob for blob in group if blob.mtime < before]
    if not old:
        return
    progress("orphans", report.orphan_files_deleted)  # (a caller may stop here)
    shard_files = {
        b.key
        for b in old
        if not b.key.startswith(staging.PREFIX)
        and not b.key.endswith(TMP_SUFFIX)
        and parse_shard_key(b.key) is not None
    }
    with engine.core.db.read() as conn:
        known = garbage.known_shard_keys(conn, name, list(shard_files))
    backend = engine.core.dirs.backends[name]
    for blob in old:
        if blob.key.startswith(staging.PREFIX):
            orphan = blob.key not in live_tails
        else:
            orphan = blob.key.endswith(TMP_SUFFIX) or (
                blob.key in shard_files and blob.key not in known
            )
        if not orphan:
            continue
        try:
            backend.delete(blob.key)
        except StorageError as exc:
            report.errors += 1
            log.warning("gc: could not delete orphan %s: %s", blob.key, exc)
            continue
        report.orphan_files_deleted += 1
        report.orphan_bytes += blob.size
        progress("orphans", report.orphan_files_deleted)
