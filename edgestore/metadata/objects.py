"""Queries on objects, their versions and manifests (ordered chunk references)."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import totals
from edgestore.metadata.clock import now
from edgestore.metadata.db import Database
from edgestore.metadata.schema import manifests, object_versions, objects
from edgestore.types import ChunkId, ObjectId, VersionId


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One stored version of an object: what stat, list and read work from."""

    object_id: ObjectId
    version_id: VersionId
    bucket: str
    key: str
    version: int
    size: int
    sha256: str | None
    manifest_digest: str
    content_type: str | None
    filename: str | None
    created_at: float
    user_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def etag(self) -> str:
        """A strong validator that never changes for a version: its manifest digest.

        (Not the whole-file SHA-256: a concatenated upload learns that only later, and an ETag
        that changed would break If-Range and resumed downloads.)
        """
        return self.manifest_digest


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    seq: int
    chunk_id: ChunkId
    offset: int
    length: int


def manifest_digest(entries: Sequence[tuple[str, int]]) -> str:
    """A stable digest of an ordered list of (chunk id, length)."""
    h = hashlib.sha256()
    for cid, length in entries:
        h.update(f"{cid}:{length}\n".encode())
    return h.hexdigest()


_VERSION_COLUMNS = (
    objects.c.object_id,
    object_versions.c.version_id,
    objects.c.bucket,
    objects.c.key,
    object_versions.c.version,
    object_versions.c.size,
    object_versions.c.sha256,
    object_versions.c.manifest_digest,
    object_versions.c.content_type,
    object_versions.c.filename,
    object_versions.c.created_at,
    object_versions.c.user_metadata,
)


def _info(row: sa.Row) -> VersionInfo:
    return VersionInfo(
        object_id=ObjectId(row.object_id),
        version_id=VersionId(row.version_id),
        bucket=row.bucket,
        key=row.key,
        version=row.version,
        size=row.size,
        sha256=row.sha256,
        manifest_digest=row.manifest_digest,
        content_type=row.content_type,
        filename=row.filename,
        created_at=row.created_at,
        user_metadata=dict(row.user_metadata or {}),
    )


def _versions_query() -> sa.Select:
    return sa.select(*_VERSION_COLUMNS).select_from(
        objects.join(object_versions, object_versions.c.object_id == objects.c.object_id)
    )


# --- writing ------------------------------------------------------------------------------


def object_id_for(db: Database, conn: Connection, bucket: str, key: str) -> str:
    """The object's id, creating the object on first use (race-safe)."""
    oid = str(uuid.uuid4())
    conn.execute(
        db.insert(objects)
        .values(object_id=oid, bucket=bucket, key=key, created_at=now(conn))
        .on_conflict_do_nothing(index_elements=[objects.c.bucket, objects.c.key])
    )
    return conn.execute(
        sa.select(objects.c.object_id).where(objects.c.bucket == bucket, objects.c.key == key)
    ).scalar_one()


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version to create: bucket/key's next, from (chunk id, offset, length) entries.

    `sha_states`: the whole-file SHA-256 state after each entry, where the stream was hashed
    as it arrived (engine/prefix.py follows them)."""

    bucket: str
    key: str
    entries: Sequence[tuple[str, int, int]]
    sha256: str | None
    content_type: str | None
    filename: str | None
    user_metadata: dict[str, Any]
    sha_states: Sequence[bytes | None] | None = None

    @property
    def size(self) -> int:
        return sum(length for _, _, length in self.entries)


def create_version(
    db: Database,
    conn: Connection,
    *,
    bucket: str,
    key: str,
    entries: Sequence[tuple[str, int, int]],
    sha256: str | None,
    content_type: str | None,
    filename: str | None,
    user_metadata: dict[str, Any],
    take_refs: bool,
    sha_states: Sequence[bytes | None] | None = None,
    ref_change: Mapping[str, int] | None = None,
) -> VersionId:
    """Create the next version of bucket/key (see NewVersion and create_versions)."""
    new = NewVersion(
        bucket, key, entries, sha256, content_type, filename, user_metadata, sha_states
    )
    return create_versions(db, conn, [new], take_refs=take_refs, ref_change=ref_change)[0]


def create_versions(
    db: Database,
    conn: Connection,
    versions: Sequence[NewVersion],
    *,
    take_refs: bool,
    ref_change: Mapping[str, int] | None = None,
) -> list[VersionId]:
    """Create versions (the finals one partial upload completes: several), in order of
    `versions` for the same key; their ids, in that order.

    With `take_refs` the chunks' reference counts are raised here; without, the caller is
    handing over references it already holds (an upload's parts becoming a manifest).
    `ref_change`: other changes to counts the same transaction makes (a native session's
    pins released: negative), made in the same pass.

    Rows are locked in the order every writer keeps (docs/architecture.md, Lock order): the
    chunk rows in one pass, then the object rows by bucket and key, then the bucket totals
    rows, by bucket, last. Runs inside the caller's transaction. Numbers only grow: one that
    was deleted is never given out again (`objects.last_version`), while the object exists;
    after its last version is deleted, the object goes, and a new one under the same key (a
    new object id) starts again from 1.
    """
    delta: Counter[str] = Counter(ref_change or {})
    if take_refs:
        for new in versions:
            delta.update(cid for cid, _, _ in new.entries)
    chunk_index.change_refs(conn, delta)
    made: dict[int, VersionId] = {}
    for i in sorted(range(len(versions)), key=lambda i: (versions[i].bucket, versions[i].key)):
        made[i] = _insert_version(db, conn, versions[i])
    added: dict[str, tuple[int, int]] = {}
    for new in versions:
        size, count = added.get(new.bucket, (0, 0))
        added[new.bucket] = (size + new.size, count + 1)
    for bucket in sorted(added):
        totals.add(conn, bucket, *added[bucket])
    return [made[i] for i in range(len(versions))]


def _insert_version(db: Database, conn: Connection, new: NewVersion) -> VersionId:
    """The version's rows: its number from the object's row (locked), the version, its
    manifest."""
    vid = str(uuid.uuid4())
    entries = new.entries
    digest = manifest_digest([(cid, length) for cid, _, length in entries])
    for _attempt in range(20):
        oid = object_id_for(db, conn, new.bucket, new.key)
        # The object's row, locked (PostgreSQL; SQLite has one writer): writers of one object
        # take numbers one after another, and a delete of its last version waits for this
        # one (delete_version locks the row too). The highest existing number counts too,
        # for a version written by a node that does not know the counter yet.
        last = conn.execute(
            sa.select(objects.c.last_version).where(objects.c.object_id == oid).with_for_update()
        ).scalar_one_or_none()
        if last is None:
            continue  # its last version was deleted, and the object with it: make it anew
        highest = conn.execute(
            sa.select(sa.func.max(object_versions.c.version)).where(
                object_versions.c.object_id == oid
            )
        ).scalar_one_or_none()
        number = max(last, highest or 0) + 1
        conn.execute(
            sa.update(objects).where(objects.c.object_id == oid).values(last_version=number)
        )
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(object_versions).values(
                        version_id=vid,
                        object_id=oid,
                        version=number,
                        size=new.size,
                        sha256=new.sha256,
                        manifest_digest=digest,
                        content_type=new.content_type,
                        filename=new.filename,
                        user_metadata=new.user_metadata,
                        state="committed",
                        created_at=now(conn),
                    )
                )
            break
        except IntegrityError:
            continue  # another writer took this number; take the next
    else:
        raise RuntimeError(f"could not allocate a version number for {new.bucket}/{new.key}")
    if entries:
        states = new.sha_states if new.sha_states is not None else [None] * len(entries)
        conn.execute(
            sa.insert(manifests),
            [
                {
                    "version_id": vid,
                    "seq": i,
                    "chunk_id": cid,
                    "offset": off,
                    "length": length,
                    "sha_state": state,
                }
                for i, ((cid, off, length), state) in enumerate(zip(entries, states, strict=True))
            ],
        )
    return VersionId(vid)


def set_sha256(conn: Connection, version_id: str, sha256: str) -> None:
    conn.execute(
        sa.update(object_versions)
        .where(object_versions.c.version_id == version_id)
        .values(sha256=sha256)
    )


def delete_version(conn: Connection, version_id: str) -> bool:
    """Delete a version and drop its chunk references; the object goes with its last version."""
    # Locked (PostgreSQL): a concurrent delete of the same version waits here, then finds it
    # gone, instead of reading the manifest rows the first one is deleting and dropping their
    # references a second time.
    row = conn.execute(
        sa.select(object_versions.c.object_id, object_versions.c.size)
        .where(object_versions.c.version_id == version_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        return False
    counts = Counter(
        conn.execute(
            sa.select(manifests.c.chunk_id).where(manifests.c.version_id == version_id)
        ).scalars()
    )
    conn.execute(sa.delete(manifests).where(manifests.c.version_id == version_id))
    conn.execute(sa.delete(object_versions).where(object_versions.c.version_id == version_id))
    chunk_index.drop_refs(conn, counts)
    # Locked (PostgreSQL) before counting: a version of this object being committed now
    # holds a key-share lock on the row until it commits, and is counted after; without
    # it, the delete below would wait for that commit and then cascade to the new version
    # (its manifest gone with it, its references never dropped).
    bucket = conn.execute(
        sa.select(objects.c.bucket).where(objects.c.object_id == row.object_id).with_for_update()
    ).scalar_one()
    left = conn.execute(
        sa.select(sa.func.count())
        .select_from(object_versions)
        .where(object_versions.c.object_id == row.object_id)
    ).scalar_one()
    if left == 0:
        conn.execute(sa.delete(objects).where(objects.c.object_id == row.object_id))
    totals.add(conn, bucket, -row.size, -1)  # last, as in create_versions
    return True


# --- reading ------------------------------------------------------------------------------


def get_version(conn: Connection, version_id: str) -> VersionInfo | None:
    row = conn.execute(
        _versions_query().where(object_versions.c.version_id == version_id)
    ).one_or_none()
    return _info(row) if row else None


def find_version(
    conn: Connection,
    *,
    bucket: str | None = None,
    key: str | None = None,
    object_id: str | None = None,
    version: int | None = None,
) -> VersionInfo | None:
    """A version by bucket/key or object id; the latest unless `version` is given."""
    q = _versions_query()
    if object_id is not None:
        q = q.where(objects.c.object_id == object_id)
    else:
        q = q.where(objects.c.bucket == bucket, objects.c.key == key)
    if version is not None:
        q = q.where(object_versions.c.version == version)
    row = conn.execute(q.order_by(object_versions.c.version.desc()).limit(1)).one_or_none()
    return _info(row) if row else None


def list_latest(
    conn: Connection, *, bucket: str | None, prefix: str, after: str | None, limit: int
) -> list[VersionInfo]:
    """Latest version of each object whose key starts with prefix, ordered by bucket, key.

    A page walks the objects' (bucket, key) index from the cursor and looks up each one's
    latest version by (object_id, version): its cost is the page's, not the store's (a
    GROUP BY over every version made each page of a large store take seconds).
    """
    other = object_versions.alias("other")
    newest = (
        sa.select(sa.func.max(other.c.version))
        .where(other.c.object_id == objects.c.object_id)
        .scalar_subquery()
    )
    q = _versions_query().where(object_versions.c.version == newest)
    if bucket is not None:
        q = q.where(objects.c.bucket == bucket)
    if prefix:
        # substr, not LIKE: SQLite's LIKE ignores ASCII case, and no escaping is needed.
        q = q.where(sa.func.substr(objects.c.key, 1, len(prefix)) == prefix)
        if bucket is not None:
            # Every key with this prefix sorts at or after it: where the index walk starts.
            q = q.where(objects.c.key >= prefix)
    if after is not None:
        after_bucket, after_key = split_cursor(after, bucket)
        if bucket is not None:
            q = q.where(objects.c.key > after_key)
        else:  # a row comparison, which both databases answer from the (bucket, key) index
            q = q.where(sa.tuple_(objects.c.bucket, objects.c.key) > (after_bucket, after_key))
    q = q.order_by(objects.c.bucket, objects.c.key).limit(limit)
    return [_info(r) for r in conn.execute(q)]


def cursor(info: VersionInfo, bucket: str | None) -> str:
    """Where a listing continues after `info`: the key, or bucket/key across buckets."""
    return info.key if bucket is not None else f"{info.bucket}/{info.key}"


def split_cursor(after: str, bucket: str | None) -> tuple[str, str]:
    if bucket is not None:
        return bucket, after
    b, _, k = after.partition("/")  # bucket names contain no '/'
    return b, k


def list_versions(
    conn: Connection, object_id: str, *, after: int | None = None, limit: int | None = None
) -> list[VersionInfo]:
    """An object's versions, newest first: the first `limit` of those after (older than)
    version `after`, found through the (object_id, version) key."""
    q = _versions_query().where(objects.c.object_id == object_id)
    if after is not None:
        q = q.where(object_versions.c.version < after)
    q = q.order_by(object_versions.c.version.desc()).limit(limit)
    return [_info(r) for r in conn.execute(q)]


def manifest(
    conn: Connection,
    version_id: str,
    start: int = 0,
    end: int | None = None,
    limit: int | None = None,
) -> Iterator[ManifestEntry]:
    """Manifest entries overlapping [start, end), in order; the first `limit` of them.

    A page must be limited here, not by stopping early: PostgreSQL's driver receives the
    whole result of a query before the first row is read.
    """
    q = sa.select(manifests).where(manifests.c.version_id == version_id)
    if start:
        q = q.where(manifests.c.offset + manifests.c.length > start)
    if end is not None:
        q = q.where(manifests.c.offset < end)
    for r in conn.execute(q.order_by(manifests.c.seq).limit(limit)):
        yield ManifestEntry(r.seq, ChunkId(r.chunk_id), r.offset, r.length)


def manifest_length(conn: Connection, version_id: str) -> int:
    """How many entries a version's manifest has, counted by the database."""
    return conn.execute(
        sa.select(sa.func.count()).where(manifests.c.version_id == version_id)
    ).scalar_one()


def without_sha256(
    conn: Connection, limit: int = 10, after: str | None = None
) -> list[VersionInfo]:
    """Versions whose whole-file SHA-256 is not known yet (concatenations), by version id,
    from the first one past `after`."""
    q = _versions_query().where(object_versions.c.sha256.is_(None))
    if after is not None:
        q = q.where(object_versions.c.version_id > after)
    return [_info(r) for r in conn.execute(q.order_by(object_versions.c.version_id).limit(limit))]


def sha256_of_manifest(conn: Connection, digest: str) -> str | None:
    """The whole-file SHA-256 of any version with this manifest digest, if one is known.

    The same ordered chunk ids and lengths are the same bytes, so they have the same digest;
    every stored sha256 was computed by the server. (No index on manifest_digest yet: a scan.)
    """
    return conn.execute(
        sa.select(object_versions.c.sha256)
        .where(object_versions.c.manifest_digest == digest, object_versions.c.sha256.isnot(None))
        .limit(1)
    ).scalar_one_or_none()
