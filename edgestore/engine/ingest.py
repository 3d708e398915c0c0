"""Appending bytes to an upload: chunk, store in parallel, make durable in order.

One `Appender` runs one append (a tus PATCH, a local put) on the calling thread: it cuts the
incoming blocks into chunks, hands each to the CPU pool (hash, dedup, zstd, EC, shards), feeds
the whole-file SHA-256 on a serial lane, and commits finished chunks in stream order, so the
durable offset only ever covers bytes whose chunks and rows are on disk (invariant 1).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Connection

from edgestore.buffers import Buffer
from edgestore.chunking import StreamChunker
from edgestore.codec.hashing import ResumableSha256
from edgestore.config import Settings
from edgestore.engine import staging
from edgestore.engine.dedup import ChunkWriter, StoredChunk
from edgestore.engine.pipeline import CpuPool, SerialLane
from edgestore.engine.prefix import RunningDigest
from edgestore.engine.verify import Checksum, TrailingChecksum, Verifier
from edgestore.errors import (
    QuotaExceeded,
    TooLarge,
    TransferInterrupted,
    UploadLocked,
)
from edgestore.metadata import quotas
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.db import Database
from edgestore.metadata.uploads import Checkpoint, NewPart, TailRef, UploadRecord
from edgestore.storage.datadirs import DataDirs
from edgestore.types import Readable

log = logging.getLogger(__name__)

COMMIT_EVERY_PARTS = 8
COMMIT_EVERY_SECONDS = 1.0
# Chunks an append holds (each keeps its buffer alive) before it waits for the oldest. The
# whole-file hash lane may run that far behind: when the thread that cuts chunks waited on
# the lane for every stored chunk, neither kept a core busy (a re-ingest of 1 GiB of text
# used 1.66 cores at 1,100 MB/s; 1.84 cores at 1,250 MB/s with the lane this far apart).
MAX_HELD_CHUNKS = 3


class CompletionHook(Protocol):
    """Runs inside the transaction that commits an upload's last bytes; it only writes rows
    (the transaction may run again, see Database.transact). `uncounted`: references of the
    last parts it counts itself (a partial upload's, with the finals' it completes)."""

    def __call__(
        self, conn: Connection, upload: UploadRecord, sha256: str | None, uncounted: Counter[str]
    ) -> None: ...


@dataclass(slots=True)
class _InFlight:
    offset: int
    length: int
    stored: Future[StoredChunk]
    hash_state: Future[bytes] | None

    def done(self) -> bool:
        return self.stored.done() and (self.hash_state is None or self.hash_state.done())


class Appender:
    """Runs one append to an open upload whose write lease `owner` holds."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        pool: CpuPool,
        writer: ChunkWriter,
        dirs: DataDirs,
        upload: UploadRecord,
        tail: bytes,
        owner: str,
        *,
        on_complete: CompletionHook,
        on_chunk: Callable[[StoredChunk], None] | None = None,
        interrupt: Callable[[str], None] | None = None,
        chunker: StreamChunker | None = None,
        grow_tail: bool = True,
        quota_room: int | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._pool = pool
        self._writer = writer
        self._dirs = dirs
        self._upload = upload
        self._owner = owner
        self._on_complete = on_complete
        self._on_chunk = on_chunk
        self._interrupt = interrupt
        self._lease = settings.upload_lock_seconds
        # `chunker`: the one the previous append left, its buffer holding `upload.tail`.
        # Chunks are views of its buffer (lent, not copied out) until they are stored.
        self._chunker = chunker or StreamChunker(settings.chunker, tail, lend=True)
        # `grow_tail`: whether the staged tail's files may be grown in place (not when one
        # of its copies was found damaged as it was read back).
        self._grow_tail = grow_tail
        # `quota_room`: the bytes the bucket's quota leaves an upload of deferred length.
        self._quota_limit = None if quota_room is None else upload.offset + quota_room
        self._digest = (
            RunningDigest(db, upload.upload_id, upload.next_seq, upload.hash_state)
            if upload.hash_state is not None
            else None
        )
        self._lane = SerialLane("edgestore-hash") if self._digest else None
        self._inflight: deque[_InFlight] = deque()
        self._ready: list[NewPart] = []
        self._next_offset = upload.committed_offset
        # Where this append begins: checkpoints during run() move self._upload.offset on.
        self._run_offset = upload.offset
        self._stop_reason: str | None = None
        # Set once its request's body was cut short: the append only keeps what arrived now,
        # and a request taking the upload over waits for that instead of being refused.
        self.source_ended = False
        self.last_activity = time.monotonic()
        self._last_commit = self._last_renew = time.monotonic()

    # --- control ------------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Ask a running append to end, keeping what arrived; wakes an idle source too."""
        self._stop_reason = reason
        if self._interrupt is not None:
            self._interrupt(reason)

    @property
    def upload(self) -> UploadRecord:
        return self._upload

    @property
    def chunker(self) -> StreamChunker:
        """After a successful run, its buffered bytes are the staged tail `upload.tail`."""
        return self._chunker

    @property
    def idle_seconds(self) -> float:
        """Time since the last block arrived: a dropped connection goes quiet."""
        return time.monotonic() - self.last_activity

    # --- the append -------------------------------------------------------------------------

    def run(
        self,
        blocks: Iterable[bytes] | Readable,
        *,
        final: bool = False,
        checksum: Checksum | TrailingChecksum | None = None,
    ) -> UploadRecord:
        """Append blocks (or what a Readable holds); return the upload as now durable.

        `final`: the stream is the upload's end (length deferred or unknown). Without a
        checksum, progress is committed as chunks complete; with one, nothing of this append
        is kept unless the checksum matches. If the source raises TransferInterrupted, what
        arrived is kept (without a checksum) and the interruption is re-raised; unless every
        byte of the upload had arrived: then it completes, and the append returns.
        """
        up = self._upload
        verify = Verifier(checksum) if checksum is not None else None
        # A deferred length is bounded by the largest upload the server accepts.
        limit = up.length if up.length is not None else self._settings.max_upload_size
        if self._quota_limit is not None:
            limit = min(limit, self._quota_limit)
        received = 0
        interrupted: TransferInterrupted | None = None
        try:
            try:
                if isinstance(blocks, Readable):
                    received = self._pull(blocks, limit, verify)
                else:
                    for block in blocks:
                        self._arrived(received + len(block), limit)
                        received += len(block)
                        if verify is not None:
                            verify.update(block)
                        self._feed(block)
                        self._progress(checked=verify is not None)
            except TransferInterrupted as exc:
                self.source_ended = True
                self._drain()
                if verify is not None:
                    raise
                if not self._holds_all(up.length):
                    self._commit(tail=self._chunker.tail_view())
                    raise
                # Every byte of the upload is in: it completes below, whatever cut the
                # request short. Kept as a tail instead, its offset would equal its length,
                # which tus clients take as done: they send nothing more, and no object
                # would ever be made of it.
                interrupted = exc
            if verify is not None:
                verify.check(received)
            complete = (
                final
                or interrupted is not None
                or (up.length is not None and up.offset + received == up.length)
            )
            # The stream's end cuts everything; an append's end cuts what is settled, so less
            # is staged as the tail (and staged again by the next append).
            pop = self._chunker.pop_last if complete else self._chunker.pop_settled
            while (chunk := pop()) is not None:
                self._submit(chunk)
            tail = None if complete else self._chunker.tail_view()
            pending = self._stage_early(tail)  # written while the last chunks are stored
            try:
                self._drain()
            except BaseException:
                if pending is not None:
                    pending.cancel()
                raise
            self._upload = self._commit(tail=tail, complete=complete, pending=pending)
            return self._upload
        finally:
            self._abandon()

    # --- internals ----------------------------------------------------------------------------

    def _arrived(self, received: int, limit: int) -> None:
        """Bytes arrived, `received` in all so far: stop if asked to, refuse past `limit`."""
        self.last_activity = time.monotonic()
        at = self._run_offset + received
        if self._quota_limit is not None and at > self._quota_limit:
            bucket = self._upload.bucket or quotas.DEFAULT_BUCKET
            raise QuotaExceeded(
                f"bucket {bucket!r} is over its quota: upload {self._upload.upload_id} (length "
                f"deferred) may hold {self._quota_limit} bytes; this request goes beyond it",
                bucket=bucket,
            )
        if at > limit:  # first: an interrupted append keeps what arrived
            raise TooLarge(
                f"upload {self._upload.upload_id} may hold {limit} bytes; this request goes "
                f"beyond it (offset {self._run_offset}, +{received} bytes)"
            )
        if self._stop_reason:
            raise TransferInterrupted(self._stop_reason)

    def _holds_all(self, length: int | None) -> bool:
        """Every byte of an upload of `length` bytes is cut into chunks or in the chunker
        (the bytes of a block being read when the append was stopped included)."""
        return length is not None and self._next_offset + self._chunker.tail_length == length

    def _progress(self, *, checked: bool) -> None:
        """After each block: collect stored chunks, checkpoint (unless a checksum must
        match first), keep the lease."""
        self._harvest(wait=False)
        if not checked:
            self._maybe_commit()
        self._maybe_renew()

    def _pull(self, source: Readable, limit: int, verify: Verifier | None) -> int:
        """Read the source straight into the chunker's buffer until it ends; bytes read.

        At most one byte past `limit` is ever read: enough to refuse the append."""
        received = 0
        while True:
            room = limit - self._run_offset - received + 1
            piece = self._chunker.fill(source.readinto, room)
            if not piece:
                return received
            self._arrived(received + len(piece), limit)
            received += len(piece)
            if verify is not None:
                verify.update(piece)
            piece.release()
            self._cut_ready()
            self._progress(checked=verify is not None)

    def _feed(self, block: bytes) -> None:
        """Chunk one block, submitting each chunk as soon as it is cut (one copy at a time:
        a chunk waiting for a pipeline slot is the only one materialised)."""
        view = memoryview(block)
        while view:
            view = view[self._chunker.push(view) :]
            self._cut_ready()

    def _cut_ready(self) -> None:
        while self._chunker.ready():
            self._writer.reserve()
            try:
                chunk = self._chunker.pop()
                assert chunk is not None
            except BaseException:
                self._writer.release()
                raise
            self._submit(chunk, reserved=True)

    def _submit(self, chunk: Buffer, *, reserved: bool = False) -> None:
        stored = self._writer.submit(chunk, reserved=reserved)
        hashed = None
        if self._lane is not None and self._digest is not None:
            hashed = self._lane.submit(self._digest.step, chunk, stored)
        self._inflight.append(_InFlight(self._next_offset, len(chunk), stored, hashed))
        self._next_offset += len(chunk)

    def _harvest(self, *, wait: bool) -> None:
        """Move finished chunks at the head of the queue (all of them with wait) to ready.

        A chunk is finished once stored and through the whole-file hash. Waiting for the hash
        lane only past MAX_HELD_CHUNKS keeps the lane's work apart from the cutting thread's.
        """
        while self._inflight and (
            wait or len(self._inflight) > MAX_HELD_CHUNKS or self._inflight[0].done()
        ):
            item = self._inflight.popleft()
            stored = item.stored.result()
            state = item.hash_state.result() if item.hash_state is not None else None
            self._ready.append(NewPart(stored.chunk_id, item.offset, item.length, state))
            if self._on_chunk is not None:
                self._on_chunk(stored)

    def _drain(self) -> None:
        self._harvest(wait=True)

    def _abandon(self) -> None:
        """Let queued work finish (its chunks are harmless garbage) and stop the lane."""
        for item in self._inflight:
            if not item.stored.cancel():
                try:
                    item.stored.result()
                except Exception:
                    pass
        self._inflight.clear()
        if self._lane is not None:
            self._lane.close()

    def _maybe_commit(self) -> None:
        # A checkpoint within the append stages no tail: it waits until its parts reach the
        # offset already acknowledged. The staged tail may hold chunk boundaries (an
        # interrupted append stages what it had, uncut), so the first chunks can end before
        # it; committing them alone would move the offset back and drop the tail's files.
        if not self._ready or self._ready[-1].offset + self._ready[-1].length < self._upload.offset:
            return
        if len(self._ready) >= COMMIT_EVERY_PARTS or (
            self._ready and time.monotonic() - self._last_commit >= COMMIT_EVERY_SECONDS
        ):
            self._upload = self._commit(tail=None)

    def _check_quota(self, conn: Connection, grown: int) -> None:
        """Each append of deferred length took the room its bucket had when it began; two at
        once took the same room. Checked again as bytes commit, the later one is refused."""
        bucket = quotas.counted_in(self._upload.bucket, self._upload.is_partial)
        if grown > 0:
            quotas.check_bucket(conn, self._settings, bucket, grown)

    def _maybe_renew(self) -> None:
        if time.monotonic() - self._last_renew < self._lease / 3:
            return
        with self._db.write(durable=False) as conn:  # a lease: see Uploads._append
            if not upload_rows.renew_lock(conn, self._upload.upload_id, self._owner, self._lease):
                raise UploadLocked(
                    f"upload {self._upload.upload_id} was taken over by another request"
                )
        self._last_renew = time.monotonic()

    def _stage_early(self, tail: memoryview | None) -> staging.PendingTail | None:
        """Start writing the tail an append ends with, unless it is the one already staged
        (nothing arrived since). The tail starts where the last submitted chunk ends."""
        if not tail or self._tail_unchanged(len(tail)):
            return None
        return staging.PendingTail(
            self._dirs,
            self._writer.io,
            self._upload.upload_id,
            self._next_offset,
            tail,
            grows=self._upload.tail if self._grow_tail and self._nothing_cut() else None,
        )

    def _nothing_cut(self) -> bool:
        """No chunk was cut since the staged tail was written: the buffered bytes still
        start with it."""
        return not self._ready and self._next_offset == self._upload.committed_offset

    def _tail_unchanged(self, length: int) -> bool:
        old = self._upload.tail
        return old is not None and self._nothing_cut() and old.length == length

    def _commit(
        self,
        *,
        tail: memoryview | None,
        complete: bool = False,
        pending: staging.PendingTail | None = None,
    ) -> UploadRecord:
        """One transaction: ready parts, the new tail, the hash state (and completion).

        A tail is staged (written durably to its own file) before the transaction that points
        at it; the tail it replaces is removed only after that transaction commits. `pending`:
        the tail's writes, already started (else they start here; every submitted chunk is
        among the ready parts by now, so the tail starts where _stage_early expects).
        """
        parts = list(self._ready)
        up = self._upload
        old = up.tail
        if pending is None:
            pending = self._stage_early(tail)
        unchanged = old if tail else None  # a tail that needs no new writes is the staged one
        new = pending.finish() if pending is not None else unchanged
        cp = Checkpoint(
            parts=parts,
            tail=new,
            expiry=self._settings.upload_expiry_seconds,
        )
        if self._ready and self._ready[-1].sha_state is not None:
            cp.hash_state = self._ready[-1].sha_state
        committing = False

        # A partial upload's completion counts its last parts' references with its finals':
        # every count a transaction changes, in one pass (chunks.change_refs).
        defer = complete and up.is_partial
        uncounted = Counter(p.chunk_id for p in parts) if defer else Counter[str]()

        def work(conn: Connection) -> UploadRecord:
            nonlocal committing
            committing = False  # (an earlier run may have failed in its COMMIT)
            rec = upload_rows.checkpoint(
                conn,
                up.upload_id,
                self._owner,
                expected_committed=up.committed_offset,
                cp=cp,
                lease=self._lease,
                count_refs=not defer,
                check_growth=self._check_quota if self._quota_limit is not None else None,
            )
            if complete:
                state = cp.hash_state or rec.hash_state
                sha = ResumableSha256(state).hexdigest() if state is not None else None
                self._on_complete(conn, rec, sha, uncounted)
                rec = upload_rows.get(conn, up.upload_id)
            committing = True
            return rec

        try:
            # Run again if failed to break a deadlock: it only writes rows, and the
            # tail's files are written already.
            rec = self._db.transact(work)
        except BaseException:
            # An error from the COMMIT itself (a dropped connection) leaves it unknown
            # whether the row now names the new tail: its files stay then (gc removes them
            # if no row does), as deleting them could leave the upload's offset over bytes
            # that are gone.
            if new is not None and not _same_file(new, old) and not committing:
                staging.drop(self._dirs, new)  # a grown tail's file still holds the old one
            raise
        if old is not None and not _same_file(new, old):
            staging.drop(self._dirs, old)
        self._ready.clear()
        self._last_commit = self._last_renew = time.monotonic()
        return rec


def _same_file(a: TailRef | None, b: TailRef | None) -> bool:
    return a is not None and b is not None and a.key == b.key
