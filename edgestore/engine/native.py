"""Native dedup-aware upload sessions: the client chunks and hashes exactly as the store does,
asks which chunk ids are missing, sends only those (each verified before it is stored), then
commits the ordered manifest with the whole-file SHA-256.

A session is a row in `uploads` (kind 'native'); the chunks it holds are pinned (upload_pins,
counted in refcount), so a session survives restarts and any node can serve any of its
requests (invariant 5). Finalize verifies the whole-file SHA-256 before the version exists:
from an identical manifest whose digest the store already computed, else from the digest
this process ran while the chunks arrived (engine/wholefile.py), reading back through the
verifying reader only what that did not cover (see `finalize`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edgestore.engine.core import EngineCore
from edgestore.engine.dedup import StoredChunk
from edgestore.engine.keys import DEFAULT_BUCKET, validate_key, version_for
from edgestore.engine.uploads import Uploads
from edgestore.engine.wholefile import WholeFileHashes, read_back_sha256
from edgestore.errors import (
    InvalidInput,
    InvalidKey,
    MissingChunks,
    StorageUnavailable,
    TooLarge,
    UploadGone,
    UploadNotFound,
    UploadStateError,
    WholeFileMismatch,
)
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import objects as object_rows
from edgestore.metadata import pins
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.idempotency import IdempotencyKey
from edgestore.metadata.objects import VersionInfo
from edgestore.metadata.uploads import UploadRecord
from edgestore.types import ChunkerParams, ChunkId

log = logging.getLogger(__name__)

KIND = pins.KIND
MAX_MISSING_BATCH = 10_000  # chunk ids per "which are missing?" request
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_sha256(value: str, what: str = "chunk id") -> str:
    """A lower-case hex SHA-256, or InvalidInput naming `what` was malformed."""
    if not _SHA256_HEX.fullmatch(value):
        raise InvalidInput(f"{what} {value[:80]!r} is not 64 lower-case hex digits (a SHA-256)")
    return value


@dataclass(frozen=True, slots=True)
class ManifestChunk:
    """One entry of the manifest a client commits: a chunk id and its size in bytes."""

    chunk_id: str
    size: int


@dataclass(frozen=True, slots=True)
class SessionStatus:
    upload: UploadRecord
    pinned_chunks: int
    pinned_bytes: int
    version: VersionInfo | None


@dataclass(frozen=True, slots=True)
class Finalized:
    upload: UploadRecord
    version: VersionInfo
    # How the whole-file SHA-256 was checked: "streamed" (hashed while the chunks arrived),
    # "read-back" (some or all chunks read back at finalize), "known-manifest", or "already"
    # (a retried finalize of a session finalized before).
    verified_by: str


class NativeUploads:
    """Native upload sessions over the engine core; stateless, so any node serves any call."""

    def __init__(
        self, core: EngineCore, uploads: Uploads, wholefile: WholeFileHashes | None = None
    ) -> None:
        self._core = core
        self._uploads = uploads
        self._wholefile = wholefile

    # --- parameters and sessions ----------------------------------------------------------------

    def params(self) -> ChunkerParams:
        """The store's recorded chunker and hash: a client must cut exactly the same chunks."""
        p = self._core.params
        return ChunkerParams(
            min_size=int(p["chunk_min_size"]),
            avg_size=int(p["chunk_avg_size"]),
            max_size=int(p["chunk_max_size"]),
            algorithm=p["chunker"],
            hash=p["hash"],
        )

    def create(
        self,
        *,
        size: int,
        bucket: str | None = None,
        key: str | None = None,
        sha256: str | None = None,
        content_type: str | None = None,
        filename: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> UploadRecord:
        """Open a session for an object of `size` bytes (the key defaults to the file name);
        with `idempotency`, a repeat of the creation gets the session the first one made."""
        if sha256 is not None:
            check_sha256(sha256, "sha256")
        if key is None and filename:
            try:
                key = validate_key(filename)
            except InvalidKey:
                key = None  # the upload id names it, as for tus
        return self._uploads.create(
            kind=KIND,
            bucket=bucket or DEFAULT_BUCKET,
            key=key,
            length=size,
            content_type=content_type,
            filename=filename,
            user_metadata=metadata,
            expected_sha256=sha256,
            idempotency=idempotency,
        )

    def status(self, upload_id: str) -> SessionStatus:
        with self._core.db.read() as conn:
            rec = self._session(conn, upload_id)
            count, nbytes = pins.pinned(conn, upload_id)
            version = object_rows.get_version(conn, rec.version_id) if rec.version_id else None
        return SessionStatus(rec, count, nbytes, version)

    def max_manifest_entries(self, upload_id: str) -> int:
        """The most entries the session's manifest can have: the store's chunker cuts no chunk
        below its minimum size but a file's last (a bound on a finalize request's body)."""
        with self._core.db.read() as conn:
            rec = self._session(conn, upload_id)
        return self._entries_bound(rec.length)

    def _entries_bound(self, length: int | None) -> int:
        """Chunks the store's chunker can cut from `length` bytes, at most."""
        return (length or 0) // self.params().min_size + 1

    def abort(self, upload_id: str) -> None:
        """Drop an open session and its pins (a finalized session's object stays)."""
        with self._core.db.read() as conn:
            self._session(conn, upload_id)
        self._uploads.terminate(upload_id)
        if self._wholefile is not None:
            self._wholefile.forget(upload_id)

    # --- chunks ---------------------------------------------------------------------------------

    def missing(
        self,
        upload_id: str,
        chunk_ids: Sequence[str],
        *,
        offset: int | None = None,
        sizes: Sequence[int] | None = None,
        on_dedup: Callable[[int], None] | None = None,
    ) -> list[str]:
        """The ids the store lacks, in request order; the ones it has are pinned to the session
        in the same transaction, so gc cannot take them before finalize.

        `on_dedup(raw_size)`: called for each chunk pinned now (stored once for this session
        too: its client need never send it).

        With `offset` and `sizes`, `chunk_ids` is a run of the file's chunks in order (repeats
        included) starting at byte `offset`: this process then hashes the whole file as the
        chunks arrive, and finalize need not read them back.
        """
        if len(chunk_ids) > MAX_MISSING_BATCH:
            raise InvalidInput(
                f"{len(chunk_ids)} chunk ids in one request; ask about {MAX_MISSING_BATCH} at most"
            )
        for cid in chunk_ids:
            check_sha256(cid)
        if (offset is None) != (sizes is None):
            raise InvalidInput("offset and sizes come together (the chunks' place in the file)")
        if sizes is not None:
            limit = self.params().max_size
            if len(sizes) != len(chunk_ids):
                raise InvalidInput(f"{len(sizes)} sizes for {len(chunk_ids)} chunk ids")
            if any(not 0 < n <= limit for n in sizes):
                raise InvalidInput(f"chunk sizes run from 1 to {limit}")
        newly: list[str] = []
        with self._core.db.write() as conn:
            length = self._lock_open(conn, upload_id)
            if offset is not None and sizes is not None and length is not None:
                end = offset + sum(sizes)
                if end > length:
                    raise InvalidInput(
                        f"the announced chunks end at byte {end}, past the session's {length}"
                    )
            have = pins.pin(conn, upload_id, chunk_ids, newly=newly, within=length)
            # Stored but damaged (queued for repair): pinned, and asked for all the same, as
            # the client's bytes make it whole again (ChunkWriter).
            damaged = chunk_index.damaged(conn, list(have))
        _report_dedup(on_dedup, [c for c in newly if c not in damaged], have)
        whole = have.keys() - damaged
        if self._wholefile is not None and offset is not None and sizes is not None:
            entries = list(zip(chunk_ids, sizes, strict=True))
            # The order is kept in memory: no longer than the store's chunker can cut.
            most = self._entries_bound(length)
            self._wholefile.announce(upload_id, offset, entries, set(whole), max_entries=most)
        return [cid for cid in dict.fromkeys(chunk_ids) if cid not in whole]

    def pin_if_stored(
        self, upload_id: str, chunk_id: str, on_dedup: Callable[[int], None] | None = None
    ) -> int | None:
        """Pin an already stored chunk to the session and return its size; None (and nothing
        written) if it is not stored, or stored but damaged (its bytes repair it). Lets a PUT
        of a known chunk be answered unread. `on_dedup`: as for missing()."""
        check_sha256(chunk_id)
        with self._core.db.read() as conn:
            self._open_session(conn, upload_id)
            found = chunk_index.lookup(conn, ChunkId(chunk_id))
            if found is None or found.damaged:
                return None
        newly: list[str] = []
        with self._core.db.write() as conn:
            length = self._lock_open(conn, upload_id)
            have = pins.pin(conn, upload_id, [chunk_id], newly=newly, within=length)
        _report_dedup(on_dedup, newly, have)
        size = have.get(chunk_id)
        if size is not None and self._wholefile is not None:
            self._wholefile.arrived(upload_id, chunk_id, None)
        return size

    def put_chunk(self, upload_id: str, chunk_id: str, raw: bytes) -> StoredChunk:
        """Verify and store one chunk, then pin it to the session; idempotent.

        The bytes are hashed before anything is written: a body that does not hash to
        `chunk_id` raises ChunkHashMismatch and leaves no trace.
        """
        check_sha256(chunk_id)
        limit = self.params().max_size
        if not raw:
            raise InvalidInput("a chunk cannot be empty")
        if len(raw) > limit:
            raise TooLarge(f"chunk of {len(raw)} bytes exceeds the store's maximum of {limit}")
        with self._core.db.read() as conn:
            rec = self._open_session(conn, upload_id)  # 404 / 410 / 403 before any hashing
            # Nothing is stored past the session's size (checked again as it is pinned).
            if rec.length is not None and not pins.holds(conn, upload_id, chunk_id):
                pins.ensure_room(conn, upload_id, len(raw), rec.length)
        for _attempt in range(3):
            stored = self._core.writer.store(raw, expect=chunk_id)
            try:
                with self._core.db.write() as conn:
                    length = self._lock_open(conn, upload_id)
                    pinned = chunk_id in pins.pin(conn, upload_id, [chunk_id], within=length)
            except IntegrityError:
                continue  # gc took the unreferenced chunk between store and pin: store it again
            if pinned:
                if self._wholefile is not None:
                    self._wholefile.arrived(upload_id, chunk_id, raw)
                return stored
        raise StorageUnavailable(f"chunk {chunk_id} could not be pinned; retry the request")

    # --- finalize -------------------------------------------------------------------------------

    def finalize(
        self,
        upload_id: str,
        chunks: Sequence[ManifestChunk],
        sha256: str | None,
        on_dedup: Callable[[int], None] | None = None,
    ) -> Finalized:
        """Commit the ordered manifest as the next version of the session's bucket/key.

        Every chunk must be stored (else MissingChunks lists them, 409), every size must match,
        and the bytes must hash to the whole-file SHA-256 (else WholeFileMismatch, 422, and no
        version). The version is created with its references and the session's pins are
        released in one transaction. A retried finalize returns the same version.

        Whole-file check: chunk ids prove each chunk's bytes, but SHA-256 does not compose, so
        the digest of the concatenation needs every byte in order. If a version with the same
        manifest digest (same ids and lengths, so the same bytes) already has a server-computed
        SHA-256, that is compared and nothing is read: re-uploads cost no I/O. Otherwise the
        digest this process ran while the chunks arrived covers the manifest's prefix it
        agrees with, and only the rest is read back through the verifying reader (decoded
        ahead in parallel): for a 20 GB upload, finalize takes a moment instead of a re-read.
        """
        entries = self._entries(chunks)
        digest = object_rows.manifest_digest([(cid, n) for cid, _, n in entries])
        with self._core.db.read() as conn:
            rec = self._session(conn, upload_id)
        if rec.state == upload_rows.COMPLETE:
            return self._already(rec, digest, sha256)
        declared = self._declared_sha256(rec, sha256)
        total = sum(n for _, _, n in entries)
        if rec.length is not None and total != rec.length:
            raise InvalidInput(
                f"the manifest covers {total} bytes; the session was created for {rec.length}"
            )

        unique = list(dict.fromkeys(cid for cid, _, _ in entries))
        newly: list[str] = []
        try:
            with self._core.db.write() as conn:  # pin all: nothing is collected while we verify
                self._lock_open(conn, upload_id)
                sizes = pins.pin(conn, upload_id, unique, newly=newly)
                # Queued for repair since /missing said it was stored (maybe with too few
                # shards left to read): asked for, as /missing would, so the client's bytes
                # make it whole rather than a version being committed over it.
                damaged = chunk_index.damaged(conn, list(sizes))
        except UploadStateError:  # a concurrent finalize (a retry) completed it meanwhile
            return self._finalized_meanwhile(upload_id, digest, sha256)
        _report_dedup(on_dedup, newly, sizes)  # chunks stored before, never sent to this session
        missing = [cid for cid in unique if cid not in sizes or cid in damaged]
        if missing:
            raise MissingChunks(
                f"{len(missing)} of the manifest's {len(unique)} distinct chunks are not "
                "stored (or have lost shards); PUT them, then finalize again",
                chunk_ids=missing,
            )
        for cid, offset, n in entries:
            if sizes[cid] != n:
                raise InvalidInput(
                    f"chunk {cid} at offset {offset} is {sizes[cid]} bytes, the manifest says {n}"
                )

        with self._core.db.read() as conn:
            known = object_rows.sha256_of_manifest(conn, digest)
        prefix = None
        if self._wholefile is not None:
            if known:
                self._wholefile.forget(upload_id)
            else:
                prefix = self._wholefile.take(upload_id, [(cid, n) for cid, _, n in entries])
        if known:
            actual, how = known, "known-manifest"
        else:
            actual = read_back_sha256(self._core, entries, prefix, self._stop_if_closing)
            how = "streamed" if prefix is not None and prefix.count == len(entries) else "read-back"
            hashed = prefix.nbytes if prefix is not None else 0
            log.info(
                "upload %s: whole-file SHA-256 over %d bytes, %d hashed as they arrived, "
                "%d read back",
                upload_id,
                total,
                hashed,
                total - hashed,
            )
        if actual != declared:
            # The actual digest is not named: a caller may hold chunk ids but not the bytes,
            # and the digest is what stands between it and a copy of the object.
            log.info("upload %s: whole-file SHA-256 is %s, not %s", upload_id, actual, declared)
            raise WholeFileMismatch(
                f"the manifest's {total} bytes do not have SHA-256 {declared}; "
                "no version was created"
            )

        with self._core.db.write() as conn:
            if not pins.touch_open(conn, upload_id):
                claimed = None  # finalized (or expired) by someone else meanwhile
            else:
                # The pins go in the pass that takes the manifest's references: a chunk it
                # names once changes not at all, a pinned one it leaves out loses one.
                released = pins.remove(conn, upload_id)
                (claimed,) = object_rows.create_versions(
                    self._core.db,
                    conn,
                    [version_for(rec, entries, actual)],
                    take_refs=True,
                    ref_change={cid: -n for cid, n in released.items()},
                )
                upload_rows.mark_complete(conn, upload_id, claimed)
                version = object_rows.get_version(conn, claimed)
                done = upload_rows.get(conn, upload_id)
        if claimed is None:
            return self._finalized_meanwhile(upload_id, digest, sha256)
        assert version is not None
        return Finalized(done, version, how)

    # --- internals --------------------------------------------------------------------------

    def _session(self, conn: Connection, upload_id: str) -> UploadRecord:
        """The native session (404 if unknown or another kind, 410 if expired or aborted)."""
        rec = upload_rows.get_open(conn, upload_id)
        if rec.kind != KIND:
            raise UploadNotFound(f"upload {upload_id} is not a native upload session")
        return rec

    def _open_session(self, conn: Connection, upload_id: str) -> UploadRecord:
        rec = self._session(conn, upload_id)
        if rec.state != upload_rows.OPEN:
            raise UploadStateError(f"upload {upload_id} is already finalized")
        return rec

    def _lock_open(self, conn: Connection, upload_id: str) -> int | None:
        """Check the session takes chunks and lock its row for the rest of the transaction;
        returns its size (what its pins may add up to)."""
        expiry = self._core.settings.upload_expiry_seconds  # progress: expiry pushed back
        if not pins.touch_open(conn, upload_id, expiry=expiry):
            self._open_session(conn, upload_id)  # raises the precise error
            raise UploadGone(f"upload {upload_id} has expired")
        return upload_rows.get(conn, upload_id).length

    def _entries(self, chunks: Sequence[ManifestChunk]) -> list[tuple[str, int, int]]:
        """(chunk id, offset, length) for create_version; checks ids and sizes."""
        limit = self.params().max_size
        entries = []
        offset = 0
        for c in chunks:
            check_sha256(c.chunk_id)
            if not 0 < c.size <= limit:
                raise InvalidInput(
                    f"chunk {c.chunk_id} has size {c.size}; sizes run from 1 to {limit}"
                )
            entries.append((c.chunk_id, offset, c.size))
            offset += c.size
        return entries

    def _declared_sha256(self, rec: UploadRecord, sha256: str | None) -> str:
        if sha256 is not None:
            check_sha256(sha256, "sha256")
        if sha256 and rec.expected_sha256 and sha256 != rec.expected_sha256:
            raise WholeFileMismatch(
                f"finalize declares SHA-256 {sha256}, the session was created with "
                f"{rec.expected_sha256}; no version was created"
            )
        declared = sha256 or rec.expected_sha256
        if declared is None:
            raise InvalidInput("finalize needs the whole-file sha256 (or give it at creation)")
        return declared

    def _already(self, rec: UploadRecord, digest: str, sha256: str | None) -> Finalized:
        """A finalize of a finalized session: the same manifest gets the same version."""
        with self._core.db.read() as conn:
            version = object_rows.get_version(conn, rec.version_id) if rec.version_id else None
        if version is None:
            raise UploadStateError(f"upload {rec.upload_id} was finalized; its version is gone")
        if version.manifest_digest != digest or (sha256 and sha256 != version.sha256):
            raise UploadStateError(
                f"upload {rec.upload_id} was already finalized as {version.bucket}/{version.key} "
                f"version {version.version} with a different manifest"
            )
        return Finalized(rec, version, "already")

    def _finalized_meanwhile(self, upload_id: str, digest: str, sha256: str | None) -> Finalized:
        with self._core.db.read() as conn:
            rec = self._session(conn, upload_id)  # UploadGone if it expired instead
        return self._already(rec, digest, sha256)

    def _stop_if_closing(self) -> None:
        """A read-back can take minutes: one under way when the server shuts down stops at
        its next chunk (nothing is committed; the client finalizes again), rather than hold
        the server's exit."""
        closing = self._uploads.closing
        if closing:
            raise StorageUnavailable(f"{closing}; finalize again: no version was created")


def _report_dedup(
    on_dedup: Callable[[int], None] | None, newly: list[str], sizes: dict[str, int]
) -> None:
    if on_dedup is not None:
        for cid in newly:
            on_dedup(sizes[cid])
