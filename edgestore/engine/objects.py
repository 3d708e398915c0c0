"""Objects and versions: stat, list, read (whole or a range, with read-ahead), delete, usage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from edgestore.engine.core import EngineCore
from edgestore.engine.keys import validate_bucket, validate_key
from edgestore.errors import (
    ChunkCorrupt,
    ChunkUnreadable,
    InvalidInput,
    InvalidRange,
    ObjectNotFound,
)
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import objects as object_rows
from edgestore.metadata import stats
from edgestore.metadata.chunks import ChunkRecord
from edgestore.metadata.objects import ManifestEntry, VersionInfo
from edgestore.metadata.stats import StoreUsage

MANIFEST_PAGE = 256  # manifest rows loaded at a time: bounded memory for any object size
MAX_VERSION = 2**31 - 1  # the column is 32-bit: PostgreSQL refuses a larger number outright


@dataclass(frozen=True, slots=True)
class ObjectSelector:
    """Names a version: bucket/key or object id, latest unless `version` is set."""

    bucket: str | None = None
    key: str | None = None
    object_id: str | None = None
    version: int | None = None

    def describe(self) -> str:
        what = self.object_id or f"{self.bucket}/{self.key}"
        return what + (f" version {self.version}" if self.version is not None else "")


def is_object_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


class Objects:
    def __init__(self, core: EngineCore) -> None:
        self._core = core

    def stat(self, sel: ObjectSelector) -> VersionInfo:
        """The version `sel` names, or ObjectNotFound."""
        if sel.object_id is None:
            validate_bucket(sel.bucket or "")
            validate_key(sel.key or "")
        elif not is_object_id(sel.object_id):
            raise ObjectNotFound(f"no object with id {sel.object_id!r}")
        if sel.version is not None and not 1 <= sel.version <= MAX_VERSION:
            raise ObjectNotFound(f"object {sel.describe()} not found: versions count from 1")
        with self._core.db.read() as conn:
            info = object_rows.find_version(
                conn,
                bucket=sel.bucket,
                key=sel.key,
                object_id=None if sel.object_id is None else sel.object_id.lower(),
                version=sel.version,
            )
            if info is None:
                raise ObjectNotFound(f"object {sel.describe()} not found")
            return info

    def by_version_id(self, version_id: str) -> VersionInfo:
        with self._core.db.read() as conn:
            info = object_rows.get_version(conn, version_id)
        if info is None:
            raise ObjectNotFound(f"object version {version_id} not found")
        return info

    def list(
        self,
        *,
        bucket: str | None = None,
        prefix: str = "",
        after: str | None = None,
        limit: int = 1000,
    ) -> list[VersionInfo]:
        """Latest versions by bucket and key, from the first one past the cursor `after`."""
        if bucket is not None:
            validate_bucket(bucket)
        if limit < 1:
            raise InvalidInput(f"invalid limit {limit}: list at least 1 object")
        with self._core.db.read() as conn:
            return object_rows.list_latest(
                conn, bucket=bucket, prefix=prefix, after=after, limit=limit
            )

    def versions(
        self, object_id: str, *, after: int | None = None, limit: int | None = None
    ) -> list[VersionInfo]:
        """An object's versions, newest first: every one, or the first `limit` past the
        cursor `after` (a version number: the ones below it). ObjectNotFound when there is
        no such object. Ids are stored in lower case (a UUID's capitals name the same one)."""
        if limit is not None and limit < 1:
            raise InvalidInput(f"invalid limit {limit}: list at least 1 version")
        oid = object_id.lower()
        with self._core.db.read() as conn:
            found = object_rows.list_versions(conn, oid, after=after, limit=limit)
            # An empty page past the last version is no error; an unknown object is.
            if found or (after is not None and object_rows.find_version(conn, object_id=oid)):
                return found
        raise ObjectNotFound(f"no object with id {object_id}")

    def delete(self, info: VersionInfo) -> None:
        """Delete one version; its chunks lose a reference in the same transaction."""
        if not self._core.db.transact(
            lambda conn: object_rows.delete_version(conn, info.version_id)
        ):
            raise ObjectNotFound(f"object version {info.version_id} not found")

    def usage(self) -> StoreUsage:
        with self._core.db.read() as conn:
            return stats.usage(conn)

    def chunk_count(self, info: VersionInfo) -> int:
        """The entries of a version's manifest, not loaded: millions for a huge object."""
        with self._core.db.read() as conn:
            return object_rows.manifest_length(conn, info.version_id)

    def manifest(self, info: VersionInfo) -> list[ManifestEntry]:
        with self._core.db.read() as conn:
            return list(object_rows.manifest(conn, info.version_id))

    # --- reading ----------------------------------------------------------------------------

    def read(
        self, info: VersionInfo, start: int = 0, end: int | None = None
    ) -> Iterator[bytes | memoryview]:
        """The bytes [start, end) of a version, each chunk verified before it is yielded.

        The next `read_ahead_chunks` chunks are fetched and decoded in parallel while the
        caller consumes the current one.
        """
        stop = info.size if end is None else min(end, info.size)
        if start < 0 or start > stop:
            raise InvalidRange(f"range {start}-{end} is outside the object", size=info.size)
        if start >= stop:
            return iter(())
        return self._stream(info, start, stop)

    def _stream(self, info: VersionInfo, start: int, stop: int) -> Iterator[bytes | memoryview]:
        core = self._core
        window = max(1, core.settings.read_ahead_chunks)

        def fetch(item: tuple[ManifestEntry, ChunkRecord]) -> tuple[ManifestEntry, bytes]:
            entry, rec = item
            return entry, core.reader.read(rec)

        try:
            for entry, raw in core.pool.map_ordered(
                fetch, self._entries(info, start, stop), window, core.read_budget
            ):
                lo = max(start - entry.offset, 0)
                hi = min(stop - entry.offset, len(raw))
                if lo == 0 and hi == len(raw):
                    yield raw
                elif hi > lo:
                    yield memoryview(raw)[lo:hi]
        except (ChunkUnreadable, ChunkCorrupt) as exc:
            what = f"object {info.bucket}/{info.key} version {info.version} (id {info.object_id})"
            # A version deleted mid-read loses its manifest rows at once, and after the grace
            # period gc takes its chunks: that is not lost data, and must not read like it.
            with core.db.read() as conn:
                gone = object_rows.get_version(conn, info.version_id) is None
            if gone:
                raise ObjectNotFound(f"{what} was deleted while it was being read") from exc
            raise type(exc)(f"{what} cannot be read: {exc.message}") from exc

    def _entries(
        self, info: VersionInfo, start: int, stop: int
    ) -> Iterator[tuple[ManifestEntry, ChunkRecord]]:
        """Manifest entries overlapping [start, stop) with their chunk records, page by page."""
        db = self._core.db
        pos = start
        while pos < stop:
            with db.read() as conn:
                page = list(object_rows.manifest(conn, info.version_id, pos, stop, MANIFEST_PAGE))
                records = chunk_index.load(conn, [e.chunk_id for e in page])
            if not page:
                raise ChunkUnreadable(f"manifest of {info.version_id} ends before byte {pos}")
            stale = [r.chunk_id for r in records.values() if r.read_is_stale]
            if stale:  # skipped while another writer holds the lock: reads never wait
                db.try_write(lambda conn, ids=stale: chunk_index.note_read(conn, ids))
            for entry in page:
                rec = records.get(entry.chunk_id)
                if rec is None:
                    raise ChunkUnreadable(f"chunk {entry.chunk_id} is missing from the index")
                yield entry, rec
            pos = page[-1].offset + page[-1].length
