"""Hashing a native upload's whole file while its chunks arrive, so finalize need not read
the object back.

SHA-256 does not compose, so the whole-file digest needs every byte in file order. The
client announces the file's chunk order with each "which are missing?" batch (offset and
sizes); this process then hashes chunks at the front of that order as they become
available: from the body of a PUT that was just verified (kept in memory, within a budget,
when it arrived ahead of its turn), else by reading the stored chunk back through the
verifying reader while the upload is still going. At finalize only what the front has not
reached is read back. Nothing here is trusted: finalize compares the announced order with
the manifest and uses the running digest only for the prefix where they agree.

The state is per process and best effort: a finalize served by another node, or after a
restart, reads back what this process did not hash. Reading back starts only once the
session has sent a chunk, so a pure re-upload (which finalize settles from the known
manifest) costs no I/O here.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgestore.engine.core import EngineCore
from edgestore.engine.pipeline import ContextThreadPool
from edgestore.errors import ChunkUnreadable
from edgestore.metadata import chunks as chunk_index

log = logging.getLogger(__name__)

IDLE_SECONDS = 3600.0  # a session silent this long loses its running digest (and buffers)
# A session silent this long gives up the bodies it holds when another needs the memory
# (finalized on another node, or abandoned): they are read back if it ever goes on.
PARKED_IDLE_SECONDS = 60.0
MAX_SESSIONS = 256  # running digests kept per process; the least recently used goes first
# Announced entries followed per process, all sessions together (~200 bytes each in memory:
# ~200 MB). Each session's order is bounded by its size, but not their sum: made-up ids
# cost a client nothing to announce. A session that would pass this is not followed.
MAX_FOLLOWED_ENTRIES = 1 << 20
READ_BACK_PAGE = 256  # chunk rows loaded at a time while verifying at finalize: bounded memory


@dataclass(eq=False)
class _Track:
    """One session's running digest. `lock` guards the announced state; `work` is held while
    a chunk is hashed, so `pos` and `sha` change only under it."""

    order: list[tuple[str, int]] = field(default_factory=list)  # (chunk id, size), announced
    pos: int = 0  # entries of `order` hashed so far
    sha: Any = field(default_factory=hashlib.sha256)
    stored: set[str] = field(default_factory=set)  # announced ids known to be stored
    parked: dict[str, bytes] = field(default_factory=dict)  # verified bodies ahead of pos
    sent_any: bool = False  # a chunk was PUT: from now on, read back what is not in memory
    closed: bool = False
    scheduled: bool = False
    counted: int = 0  # entries of `order` counted against MAX_FOLLOWED_ENTRIES
    lock: threading.Lock = field(default_factory=threading.Lock)
    work: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Prefix:
    """What this process hashed of a manifest: its first `count` entries, `nbytes` bytes."""

    sha: Any  # a hashlib sha256 object, positioned after those bytes
    count: int
    nbytes: int


class WholeFileHashes:
    """Running whole-file digests of this process's native sessions.

    Lock order: a track's `work`, then its `lock`, then the registry's lock.
    """

    def __init__(self, core: EngineCore, budget_bytes: int) -> None:
        self._core = core
        self.budget_bytes = budget_bytes  # memory for chunks ahead of their turn
        self._lock = threading.Lock()
        self._tracks: dict[str, _Track] = {}
        self._parked_bytes = 0
        self._followed = 0  # entries counted against MAX_FOLLOWED_ENTRIES
        self._worker = ContextThreadPool(1, thread_name_prefix="edgestore-wholefile")

    def close(self) -> None:
        with self._lock:
            tracks = list(self._tracks.values())
            self._tracks.clear()
        for track in tracks:
            self._close(track)
        self._worker.shutdown(wait=True, cancel_futures=True)

    @property
    def followed_entries(self) -> int:
        """Announced entries held in memory, all sessions together (bounded)."""
        return self._followed

    @property
    def parked_bytes(self) -> int:
        """Verified chunk bodies held in memory until their turn (bounded by the budget)."""
        return self._parked_bytes

    def progress(self, upload_id: str) -> int | None:
        """Bytes of the session's whole file hashed so far here; None if not followed."""
        with self._lock:
            track = self._tracks.get(upload_id)
        if track is None:
            return None
        with track.work:
            return sum(n for _, n in track.order[: track.pos])

    # --- what the API tells it ------------------------------------------------------------------

    def announce(
        self,
        upload_id: str,
        offset: int,
        entries: Sequence[tuple[str, int]],
        present: set[str],
        *,
        max_entries: int | None = None,
    ) -> None:
        """The chunks at `offset` onward, in file order; `present` are stored already.

        A batch at offset 0 starts the session's digest (or re-confirms it when a resumed
        client announces the same order again); a batch that disagrees with what was
        announced before drops the digest, and one that leaves a gap is not followed. An
        order longer than `max_entries`, or one taking the orders of all sessions past
        MAX_FOLLOWED_ENTRIES, drops the digest too: they are held in memory.
        """
        with self._lock:
            track = self._tracks.get(upload_id)
            if track is None:
                if offset != 0:
                    return
                track = self._tracks[upload_id] = _Track()
                stale = self._stale_locked()
            else:
                stale = []
        for old in stale:
            self._close(old)
        with track.lock:
            if track.closed:
                return
            start = _index_of(track.order, offset)
            if start is None:  # a gap, or an offset inside a chunk: not followed
                return
            grow = max(0, start + len(entries) - len(track.order))
            too_long = max_entries is not None and start + len(entries) > max_entries
            if too_long or not self._count(track, grow):
                self._unregister(upload_id, track)
                self._close_locked(track)
                return
            for i, entry in enumerate(entries):
                j = start + i
                if j == len(track.order):
                    track.order.append(entry)
                elif track.order[j] != entry:
                    self._unregister(upload_id, track)
                    self._close_locked(track)
                    return
            track.stored.update(present)
            track.used = time.monotonic()
        self._schedule(track)

    def arrived(self, upload_id: str, chunk_id: str, raw: bytes | None) -> None:
        """A chunk of the session is now stored; `raw` is its verified body if the request
        carried one (an already stored chunk is answered unread)."""
        with self._lock:
            track = self._tracks.get(upload_id)
        if track is None:
            return
        if raw is not None and self._parked_bytes + len(raw) > self.budget_bytes:
            self._reclaim_idle()
        with track.lock:
            if track.closed:
                return
            track.stored.add(chunk_id)
            track.used = time.monotonic()
            if raw is not None:
                track.sent_any = True
                ahead = (cid for cid, _ in track.order[track.pos :])
                if chunk_id not in track.parked and chunk_id in ahead and self._reserve(len(raw)):
                    track.parked[chunk_id] = raw
        self._schedule(track)

    def take(self, upload_id: str, manifest: Sequence[tuple[str, int]]) -> Prefix | None:
        """Stop following the session and return the digest of the manifest's longest prefix
        hashed here (hashing what is still held in memory first); None if there is none."""
        with self._lock:
            track = self._tracks.pop(upload_id, None)
        if track is None:
            return None
        with track.lock:
            track.closed = True  # the worker stops after the chunk it is hashing
        with track.work, track.lock:
            try:
                pos = track.pos
                if len(manifest) < pos or any(
                    track.order[i] != tuple(manifest[i]) for i in range(pos)
                ):
                    return None  # the manifest is not the order hashed
                count = pos
                while count < len(manifest) and count < len(track.order):
                    entry = track.order[count]
                    raw = track.parked.get(entry[0])
                    if raw is None or tuple(manifest[count]) != entry or len(raw) != entry[1]:
                        break
                    track.sha.update(raw)
                    count += 1
                return Prefix(track.sha, count, sum(n for _, n in manifest[:count]))
            finally:
                self._close_locked(track)

    def forget(self, upload_id: str) -> None:
        """The session ended without a finalize here (aborted, expired)."""
        with self._lock:
            track = self._tracks.pop(upload_id, None)
        if track is not None:
            self._close(track)

    # --- the worker -----------------------------------------------------------------------------

    def _schedule(self, track: _Track) -> None:
        with track.lock:
            if track.scheduled or track.closed:
                return
            track.scheduled = True
        try:
            self._worker.submit(self._advance, track)
        except RuntimeError:  # shutting down
            with track.lock:
                track.scheduled = False

    def _next(self, track: _Track) -> tuple[str, int, bytes | None] | None:
        """The chunk to hash next and its body if held; None (and unscheduled) if there is
        nothing to do until more arrives."""
        with track.lock:
            if not track.closed and track.pos < len(track.order):
                cid, size = track.order[track.pos]
                raw = track.parked.pop(cid, None)
                if raw is not None:
                    self._release(len(raw))
                    return cid, size, raw
                if cid in track.stored and track.sent_any:
                    return cid, size, None
            track.scheduled = False
            return None

    def _advance(self, track: _Track) -> None:
        """Hash from the front of the announced order for as long as chunks are at hand."""
        try:
            while True:
                with track.work:
                    step = self._next(track)
                    if step is None:
                        return
                    cid, size, raw = step
                    if raw is None:
                        raw = self._read_back(cid)
                    if raw is None or len(raw) != size:  # not stored after all, or a bad size
                        break
                    track.sha.update(raw)
                    track.pos += 1
        except Exception:
            log.exception("whole-file digest stopped; finalize will read the chunks back")
        self._close(track)  # reached only when following this session cannot go on

    def _read_back(self, cid: str) -> bytes | None:
        with self._core.db.read() as conn:
            rec = chunk_index.load(conn, [cid]).get(cid)
        return None if rec is None else self._core.reader.read(rec)

    # --- bookkeeping ----------------------------------------------------------------------------

    def _reserve(self, n: int) -> bool:
        with self._lock:
            if self._parked_bytes + n > self.budget_bytes:
                return False
            self._parked_bytes += n
            return True

    def _release(self, n: int) -> None:
        with self._lock:
            self._parked_bytes -= n

    def _count(self, track: _Track, n: int) -> bool:
        """Count `n` more entries of the track's order, if all sessions' stay in bounds."""
        with self._lock:
            if self._followed + n > MAX_FOLLOWED_ENTRIES:
                return False
            self._followed += n
        track.counted += n
        return True

    def _close(self, track: _Track) -> None:
        with track.lock:
            self._close_locked(track)

    def _close_locked(self, track: _Track) -> None:
        track.closed = True
        track.scheduled = False
        self._release(sum(len(b) for b in track.parked.values()))
        track.parked.clear()
        with self._lock:
            self._followed -= track.counted
        track.counted = 0

    def _reclaim_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [
                t for t in self._tracks.values() if t.parked and now - t.used > PARKED_IDLE_SECONDS
            ]
        for track in idle:
            with track.lock:
                self._release(sum(len(b) for b in track.parked.values()))
                track.parked.clear()

    def _unregister(self, upload_id: str, track: _Track) -> None:
        with self._lock:
            if self._tracks.get(upload_id) is track:
                del self._tracks[upload_id]

    def _stale_locked(self) -> list[_Track]:
        """Unregister sessions silent for IDLE_SECONDS, and the oldest beyond MAX_SESSIONS."""
        now = time.monotonic()
        stale = [u for u, t in self._tracks.items() if now - t.used > IDLE_SECONDS]
        excess = len(self._tracks) - len(stale) - MAX_SESSIONS
        if excess > 0:
            rest = [u for u in self._tracks if u not in stale]
            rest.sort(key=lambda u: self._tracks[u].used)
            stale += rest[:excess]
        return [self._tracks.pop(u) for u in stale]


def read_back_sha256(
    core: EngineCore,
    entries: Sequence[tuple[str, int, int]],
    prefix: Prefix | None,
    check: Callable[[], None],
) -> str:
    """SHA-256 of a manifest's (chunk id, offset, size) bytes, each chunk rebuilt and
    verified by the reader, decoded ahead in parallel; `prefix` is a digest of the first
    entries already computed (those are skipped). `check()` runs before each chunk: it
    raises to stop a read-back that must not hold up a shutdown."""
    digest = prefix.sha if prefix is not None else hashlib.sha256()
    if prefix is not None:
        entries = entries[prefix.count :]

    def records() -> Iterator[chunk_index.ChunkRecord]:
        for i in range(0, len(entries), READ_BACK_PAGE):
            page = [cid for cid, _, _ in entries[i : i + READ_BACK_PAGE]]
            with core.db.read() as conn:
                found = chunk_index.load(conn, page)
            for cid in page:
                check()
                rec = found.get(cid)
                if rec is None:  # pinned, so only an index fault gets here
                    raise ChunkUnreadable(f"chunk {cid} is missing from the index")
                yield rec

    window = max(1, core.settings.read_ahead_chunks)
    for raw in core.pool.map_ordered(core.reader.read, records(), window):
        digest.update(raw)
    return digest.hexdigest()


def _index_of(order: Sequence[tuple[str, int]], offset: int) -> int | None:
    """The index of the entry that starts at `offset` (len(order) at the end), or None."""
    at = 0
    for i, (_, n) in enumerate(order):
        if at == offset:
            return i
        at += n
    return len(order) if at == offset else None
