"""Upload sessions: create, append (resumable), complete into a version, terminate, expire.

Every protocol (tus, the native chunk API, a local `put`) drives the same sessions, whose
whole state is in the metadata database, so any node can continue any upload (invariant 5).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edgestore.codec.hashing import ResumableSha256
from edgestore.engine import concat, staging
from edgestore.engine.core import EngineCore
from edgestore.engine.dedup import StoredChunk
from edgestore.engine.ingest import Appender
from edgestore.engine.keys import validate_bucket, validate_key, version_for
from edgestore.engine.lease import kept_alive
from edgestore.engine.pipeline import release_free_memory
from edgestore.engine.verify import Checksum, TrailingChecksum
from edgestore.engine.warm import WarmTails
from edgestore.errors import (
    InvalidInput,
    OffsetConflict,
    StorageUnavailable,
    TooLarge,
    UploadLocked,
    UploadNotFound,
    UploadStateError,
)
from edgestore.metadata import concat as concat_rows
from edgestore.metadata import idempotency as idempotency_rows
from edgestore.metadata import objects as object_rows
from edgestore.metadata import quotas, reclaim
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.clock import now
from edgestore.metadata.db import CLEANUP_LOCK_WAIT_MS
from edgestore.metadata.idempotency import IdempotencyKey
from edgestore.metadata.uploads import UploadRecord
from edgestore.types import Readable

log = logging.getLogger(__name__)

# A second request for an upload whose current writer has received nothing for this long
# takes over (the first one's client is gone); sooner, it is refused as locked.
TAKEOVER_IDLE_SECONDS = 1.0


def _of_kind(rec: UploadRecord, kinds: tuple[str, ...] | None) -> UploadRecord:
    if kinds is not None and rec.kind not in kinds:
        raise UploadNotFound(f"upload {rec.upload_id} not found")
    return rec


@dataclass
class _Active:
    appender: Appender
    done: threading.Event


class Uploads:
    """Upload sessions over the engine core; thread-safe."""

    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._warm = WarmTails(core.settings.upload_warm_bytes)
        self._closing: str | None = None

    @property
    def closing(self) -> str | None:
        """Why new appends are refused (the server is shutting down), or None."""
        return self._closing

    def stop_all(self, reason: str) -> None:
        """Refuse new appends and ask running ones to stop, keeping what they received."""
        self._closing = reason
        with self._lock:
            running = list(self._active.values())
        for active in running:
            active.appender.stop(reason)

    # --- lifecycle --------------------------------------------------------------------------

    def create(
        self,
        *,
        kind: str = "tus",
        bucket: str | None = None,
        key: str | None = None,
        length: int | None = None,
        content_type: str | None = None,
        filename: str | None = None,
        user_metadata: dict[str, Any] | None = None,
        is_partial: bool = False,
        expires_in: float | None = None,
        expected_sha256: str | None = None,
        idempotency: IdempotencyKey | None = None,
        body_length: int | None = None,
    ) -> UploadRecord:
        """A new upload; with `idempotency`, the live one that key created, if any (its
        quota was reserved then: a retried creation reserves nothing more). `body_length`:
        the bytes the creating request itself brings to an upload of deferred length, which
        must fit its bucket's room (nothing is reserved: its appends are checked)."""
        settings = self._core.settings
        if bucket is not None:
            validate_bucket(bucket)
        if key is not None:
            validate_key(key)
        if length is not None:
            if length < 0:
                raise InvalidInput(f"upload length {length} is negative")
            if length > settings.max_upload_size:
                raise TooLarge(
                    f"upload length {length} exceeds the maximum of {settings.max_upload_size}"
                )
        expiry = settings.upload_expiry_seconds if expires_in is None else expires_in
        # A partial upload is never an object of its own, and SHA-256 states cannot be
        # joined: its final's digest is computed from the stored chunks later
        # (maintenance/hashes.py), so hashing a partial's bytes would be wasted work.
        hashed = ResumableSha256.available() and not is_partial
        state = ResumableSha256().state() if hashed else None
        for _attempt in range(3):
            try:
                with self._core.db.write() as conn:
                    held = idempotency_rows.holder(conn, idempotency) if idempotency else None
                    if held is not None:
                        log.info("upload %s: creation repeated with its key", held.upload_id)
                        return held
                    counted = quotas.counted_in(bucket, is_partial)
                    adding = length if length is not None else body_length
                    if adding is not None and counted is not None:
                        quotas.check_bucket(conn, settings, counted, adding)  # before any byte
                    uid = upload_rows.create(
                        conn,
                        kind=kind,
                        bucket=bucket,
                        key=key,
                        length=length,
                        expires_at=now(conn) + expiry,
                        hash_state=state,
                        content_type=content_type,
                        filename=filename,
                        user_metadata=user_metadata,
                        is_partial=is_partial,
                        expected_sha256=expected_sha256,
                        idempotency=idempotency,
                    )
                    return upload_rows.get(conn, uid)
            except IntegrityError:
                if idempotency is None:
                    raise
                # A concurrent creation with the same key committed first: found next time.
        raise StorageUnavailable("an upload could not be created; retry the request")

    def get(self, upload_id: str, kinds: tuple[str, ...] | None = None) -> UploadRecord:
        """The upload; with `kinds`, one of another protocol is UploadNotFound (a tus URL
        never reaches a native session, and the reverse)."""
        with self._core.db.read() as conn:
            return _of_kind(upload_rows.get(conn, upload_id), kinds)

    def get_open(self, upload_id: str, kinds: tuple[str, ...] | None = None) -> UploadRecord:
        """The upload if it can take bytes; UploadGone if expired or terminated."""
        with self._core.db.read() as conn:
            return _of_kind(upload_rows.get_open(conn, upload_id), kinds)

    def final_length(self, rec: UploadRecord) -> int | None:
        """A final upload's length, known or, while it waits, computed (engine/concat.py)."""
        return concat.final_length(self._core, rec)

    def concatenate(
        self,
        partial_ids: list[str],
        *,
        bucket: str | None = None,
        key: str | None = None,
        content_type: str | None = None,
        filename: str | None = None,
        user_metadata: dict[str, Any] | None = None,
        partial_urls: list[str] | None = None,
    ) -> UploadRecord:
        """A final upload made of partial uploads, in order, no byte copied (engine/concat.py)."""
        return concat.concatenate(
            self._core,
            partial_ids,
            bucket=bucket,
            key=key,
            content_type=content_type,
            filename=filename,
            user_metadata=user_metadata,
            partial_urls=partial_urls,
        )

    def terminate(self, upload_id: str, *, lock_wait_ms: int | None = None) -> None:
        """Drop the upload and its references (a completed upload's object stays)."""
        self._stop_local_writer(upload_id, "upload terminated")
        self._warm.forget(upload_id)
        tail = None
        with self._core.db.write(lock_wait_ms=lock_wait_ms) as conn:
            # Locked before the finals waiting for it, as its completing append locks them.
            rec = upload_rows.get(conn, upload_id, for_update=True)
            if rec.state in (upload_rows.OPEN, upload_rows.COMPLETE):
                if rec.is_partial:
                    concat.abandon_waiting_finals(conn, upload_id)
                tail = upload_rows.release_data(conn, upload_id, upload_rows.TERMINATED)
        staging.drop(self._core.dirs, tail)

    def discard(self, upload_id: str) -> None:
        """Forget an upload entirely, as if never created: for a creation that failed before
        its client learnt the upload's URL (no one could resume or delete it)."""
        self._stop_local_writer(upload_id, "upload discarded")
        self._warm.forget(upload_id)
        with self._core.db.write() as conn:
            tail = upload_rows.release_data(conn, upload_id, upload_rows.TERMINATED)
            upload_rows.delete(conn, upload_id)
        staging.drop(self._core.dirs, tail)

    def declare_length(self, upload_id: str, length: int) -> UploadRecord:
        """Set a deferred Upload-Length once; it must cover the bytes already received."""
        with self._core.db.write() as conn:
            # Locked first, as an append locks it before it declares a length: the quota
            # check's bucket lock always comes after the row's (no deadlock between the two).
            rec = upload_rows.get_open(conn, upload_id, for_update=True)
            if rec.length is not None:
                if rec.length != length:
                    raise UploadStateError(f"upload {upload_id} already has length {rec.length}")
                return rec
            self._set_length(conn, rec, length)
            return upload_rows.get(conn, upload_id)

    def _set_length(self, conn: Connection, rec: UploadRecord, length: int) -> None:
        """Declare the length of an upload whose length was deferred, after checking it."""
        settings = self._core.settings
        if length < 0:
            raise InvalidInput(f"upload length {length} is negative")
        if length > settings.max_upload_size:
            raise TooLarge(
                f"upload length {length} exceeds the maximum of {settings.max_upload_size}"
            )
        if length < rec.offset:
            raise InvalidInput(f"length {length} is less than the {rec.offset} bytes received")
        counted = quotas.counted_in(rec.bucket, rec.is_partial)
        if counted is not None:  # the bucket's usage counts the bytes it holds already
            quotas.check_bucket(conn, settings, counted, length - rec.offset)
        upload_rows.set_length(conn, rec.upload_id, length)

    def _withdraw_length(self, upload_id: str, owner: str, offset: int, length: int) -> None:
        """Undo the length an append declared when the append kept nothing (a checksum
        mismatch, say): a refused request leaves the upload as it was."""
        try:
            with self._core.db.write() as conn:
                rec = upload_rows.get(conn, upload_id, for_update=True)
                if (
                    rec.state == upload_rows.OPEN
                    and rec.lock_owner == owner
                    and rec.offset == offset
                    and rec.length == length
                ):
                    upload_rows.clear_length(conn, upload_id)
        except Exception:
            log.exception("could not withdraw the length declared for upload %s", upload_id)

    # --- appending ----------------------------------------------------------------------------

    def append(
        self,
        upload_id: str,
        offset: int,
        blocks: Iterable[bytes] | Readable,
        *,
        final: bool = False,
        checksum: Checksum | TrailingChecksum | None = None,
        on_chunk: Callable[[StoredChunk], None] | None = None,
        interrupt: Callable[[str], None] | None = None,
        length: int | None = None,
    ) -> UploadRecord:
        """Append blocks (or a Readable's bytes) at `offset` (the durable offset).

        `length`: the upload's length, declared with this append if it was deferred (tus
        sends it in a PATCH); withdrawn again if the append fails without keeping a byte.

        `interrupt(reason)`: how to wake the block source when this append must stop (taken
        over, shutting down) while no bytes are arriving; without it, stopping waits for the
        next block.

        A writer of the same upload still running in this process (its client dropped and
        reconnected) is asked to stop and keep what it has; one in another process holds a
        lease of `upload_lock_seconds` that it renews while bytes flow.
        """
        try:
            return self._append(
                upload_id, offset, blocks, final, checksum, on_chunk, interrupt, length
            )
        finally:
            release_free_memory()  # the chunker's buffer and the chunks the append freed

    def _append(
        self,
        upload_id: str,
        offset: int,
        blocks: Iterable[bytes] | Readable,
        final: bool,
        checksum: Checksum | TrailingChecksum | None,
        on_chunk: Callable[[StoredChunk], None] | None,
        interrupt: Callable[[str], None] | None,
        length: int | None = None,
    ) -> UploadRecord:
        core = self._core
        if self._closing:
            raise StorageUnavailable(f"{self._closing}; resume this upload shortly")
        owner = uuid.uuid4().hex
        self._take_over(upload_id, "a newer request took over this upload")
        active: _Active | None = None
        declared = failed = False
        try:
            # Taking the write lease (and renewing and releasing it) are commits without their
            # own flush to disk: the append's checkpoint, a durable commit, flushes them with
            # it. Other processes see them at once all the same; a crash can only lose a lease
            # whose holder died with it, or revive one that expires by itself within
            # upload_lock_seconds. Two fewer flushes per request: with 5 MiB requests, taking
            # the lease went from 6-7 to 4-5 ms and releasing it from 2-3 to 2 (medians).
            with core.db.write(durable=False) as conn:
                # The lease first, then the upload read under it: on PostgreSQL each statement
                # sees what committed before it, so a read made before the lease could miss
                # another node's append committed (its lease released) in between, and this
                # request's bytes would be stored after that append's instead of refused.
                # Refused here, the transaction rolls back and no lease is left behind.
                upload_rows.acquire_lock(conn, upload_id, owner, core.settings.upload_lock_seconds)
                rec = upload_rows.get_open(conn, upload_id)
                if rec.state != upload_rows.OPEN:
                    raise UploadStateError(f"upload {upload_id} is already complete")
                if rec.concat_of is not None:
                    raise UploadStateError(f"upload {upload_id} is a final upload: not patchable")
                if offset != rec.offset:
                    raise OffsetConflict(
                        f"Upload-Offset {offset} does not match the upload's offset {rec.offset}",
                        expected=rec.offset,
                    )
                if length is not None and rec.length is None:
                    self._set_length(conn, rec, length)
                    declared = True
                    rec = upload_rows.get(conn, upload_id)
                # A deferred length is bounded by the bucket's quota as its bytes arrive.
                room = None
                counted = quotas.counted_in(rec.bucket, rec.is_partial)
                if rec.length is None and counted is not None:
                    room = quotas.room(conn, core.settings, counted)
            chunker = self._warm.take(upload_id, rec.tail)
            tail = b""
            damaged: list[str] = []
            if chunker is None and rec.tail is not None:
                tail = staging.load(core.dirs, rec.tail, damaged=damaged)
            appender = Appender(
                core.settings,
                core.db,
                core.pool,
                core.writer,
                core.dirs,
                rec,
                tail,
                owner,
                on_complete=self._complete,
                on_chunk=on_chunk,
                interrupt=interrupt,
                chunker=chunker,
                grow_tail=not damaged,  # a copy found damaged: the next tail in new files
                quota_room=room,
            )
            del tail  # the chunker holds its own copy; this one would sit out the whole append
            active = _Active(appender, threading.Event())
            with self._lock:
                self._active[upload_id] = active
            with kept_alive(core.db, rec, owner, core.settings.upload_lock_seconds):
                done = appender.run(blocks, final=final, checksum=checksum)
            if done.state == upload_rows.OPEN and done.tail is not None:
                self._warm.put(upload_id, done.tail, appender.chunker)
            return done
        except BaseException:
            failed = True
            if declared and length is not None:
                self._withdraw_length(upload_id, owner, offset, length)
            raise
        finally:
            if active is not None:
                with self._lock:
                    if self._active.get(upload_id) is active:
                        del self._active[upload_id]
            try:  # a lease: see above
                wait = CLEANUP_LOCK_WAIT_MS if failed else None
                with core.db.write(durable=False, lock_wait_ms=wait) as conn:
                    upload_rows.release_lock(conn, upload_id, owner)
            except Exception as exc:  # busy, say: the lease expires by itself
                log.warning("could not release the lock of upload %s: %s", upload_id, exc)
            if active is not None:
                active.done.set()  # only now: a request waiting to take over finds it free

    def _take_over(self, upload_id: str, reason: str) -> None:
        """If this process is writing the upload but its client went quiet (or its request
        was cut short), stop that writer and wait until it has kept what it received.

        A writer still receiving bytes keeps the upload: the newcomer gets UploadLocked.
        """
        with self._lock:
            active = self._active.get(upload_id)
        if active is None:
            return
        # A writer whose request was cut short is only keeping what arrived: wait for it (the
        # client reconnecting at once would otherwise get a stale offset, or 423).
        if not active.appender.source_ended:
            if active.appender.idle_seconds < TAKEOVER_IDLE_SECONDS:
                raise UploadLocked(f"upload {upload_id} is being written by another request")
            active.appender.stop(reason)
        if not active.done.wait(self._core.settings.upload_lock_seconds):
            raise UploadLocked(f"upload {upload_id} is still being written; retry shortly")

    def settle(self, upload_id: str) -> None:
        """Before reporting the upload's offset: stop this process's writer of it if its
        client went quiet (a dropped link), and wait until it has kept what it received, so
        the offset reported is the one the next append is accepted at. A writer still
        receiving bytes is left alone (an append would get UploadLocked)."""
        with contextlib.suppress(UploadLocked):
            self._take_over(upload_id, "an offset retrieval took over this upload")

    def _stop_local_writer(self, upload_id: str, reason: str) -> bool:
        with self._lock:
            active = self._active.get(upload_id)
        if active is None:
            return False
        active.appender.stop(reason)
        return True

    def _complete(
        self, conn: Connection, rec: UploadRecord, sha256: str | None, uncounted: Counter[str]
    ) -> None:
        """Turn a finished upload into an object version; a partial one stays complete, and
        completes the final uploads that were waiting only for it (ingest.CompletionHook)."""
        if rec.is_partial:
            upload_rows.mark_complete(conn, rec.upload_id, None)
            concat.complete_waiting_finals(self._core, conn, rec.upload_id, uncounted)
            return
        entries = upload_rows.parts(conn, rec.upload_id)
        states = upload_rows.part_states(conn, rec.upload_id) if sha256 is not None else None
        new = version_for(rec, entries, sha256, states)
        (version_id,) = object_rows.create_versions(
            self._core.db, conn, [new], take_refs=False, ref_change=uncounted
        )
        upload_rows.mark_complete(conn, rec.upload_id, version_id)

    # --- housekeeping -------------------------------------------------------------------------

    def expire_stale(self, local_grace: float) -> int:
        """Expire open uploads past their expiry, and local puts whose process died; drop
        the warm chunkers of uploads that went quiet."""
        self._warm.prune()
        self._core.db.transact(concat_rows.keep_waiting_finals_alive)  # retried if it deadlocks
        count = 0
        while True:
            with self._core.db.read() as conn:
                t = now(conn)  # the database's: a node's clock ahead must expire nothing early
                batch = reclaim.stale(conn, t, t - local_grace)
            if not batch:
                return count
            for uid in batch:
                with self._core.db.write() as conn:
                    if not reclaim.still_stale(conn, uid, t, t - local_grace):
                        continue  # taken up since it was listed
                    # Locked before the finals waiting for it, as its completing append does.
                    if upload_rows.get(conn, uid).is_partial:
                        concat.abandon_waiting_finals(conn, uid, upload_rows.EXPIRED)
                    tail = upload_rows.release_data(conn, uid, upload_rows.EXPIRED)
                staging.drop(self._core.dirs, tail)
                count += 1
