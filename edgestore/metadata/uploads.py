"""Queries on uploads in progress: sessions, their durable parts and staged tail, and locks.

An upload's durable offset is `committed_offset` (bytes in upload_parts) plus `tail_length`
(bytes after the last chunk boundary, staged in a small file the `tail_*` columns point at).
Both change only together, in one transaction, and only by the holder of the upload's lock
lease, so no two writers ever interleave.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edgestore.errors import (
    OffsetConflict,
    StorageUnavailable,
    UploadGone,
    UploadLocked,
    UploadNotFound,
)
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.clock import now
from edgestore.metadata.schema import upload_parts, upload_pins, uploads
from edgestore.types import UploadId

if TYPE_CHECKING:
    from edgestore.metadata.idempotency import IdempotencyKey

OPEN, COMPLETE, TERMINATED, EXPIRED = "open", "complete", "terminated", "expired"


@dataclass(frozen=True, slots=True)
class TailRef:
    """Where the staged tail of an upload lives: the same key on one or more backends."""

    key: str
    backends: tuple[str, ...]
    length: int
    checksum: str


@dataclass(frozen=True, slots=True)
class UploadRecord:
    upload_id: UploadId
    kind: str
    state: str
    bucket: str | None
    key: str | None
    length: int | None
    committed_offset: int
    tail_length: int
    next_seq: int
    hash_state: bytes | None
    expected_sha256: str | None
    content_type: str | None
    filename: str | None
    user_metadata: dict[str, Any]
    is_partial: bool
    concat_of: list[str] | None
    version_id: str | None
    created_at: float
    updated_at: float
    expires_at: float | None
    lock_owner: str | None = None
    lock_expires: float | None = None
    tail: TailRef | None = None
    concat_urls: list[str] | None = None  # a final's partials as its client named them

    @property
    def offset(self) -> int:
        """Durable bytes: what a HEAD reports and where the next append must start."""
        return self.committed_offset + self.tail_length


@dataclass(frozen=True, slots=True)
class NewPart:
    chunk_id: str
    offset: int
    length: int
    sha_state: bytes | None = None  # the whole-file SHA-256 state after this part, if known


@dataclass(slots=True)
class Checkpoint:
    """What one append transaction makes durable."""

    parts: list[NewPart] = field(default_factory=list)
    hash_state: bytes | None = None
    tail: TailRef | None = None  # None: no staged tail after these parts
    expiry: float | None = None  # progress pushes an upload's expiry back to this from now


def _tail_ref(row: sa.Row) -> TailRef | None:
    if not row.tail_key:
        return None
    backends = tuple(row.tail_backends or ())
    return TailRef(row.tail_key, backends, row.tail_length, row.tail_checksum)


def _record(row: sa.Row) -> UploadRecord:
    return UploadRecord(
        upload_id=UploadId(row.upload_id),
        kind=row.kind,
        state=row.state,
        bucket=row.bucket,
        key=row.key,
        length=row.length,
        committed_offset=row.committed_offset,
        tail_length=row.tail_length,
        next_seq=row.next_seq,
        hash_state=row.hash_state,
        expected_sha256=row.expected_sha256,
        content_type=row.content_type,
        filename=row.filename,
        user_metadata=dict(row.user_metadata or {}),
        is_partial=bool(row.is_partial),
        concat_of=list(row.concat_of) if row.concat_of is not None else None,
        version_id=row.version_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        lock_owner=row.lock_owner,
        lock_expires=row.lock_expires,
        tail=TailRef(
            row.tail_key, tuple(row.tail_backends or ()), row.tail_length, row.tail_checksum
        )
        if row.tail_key
        else None,
        concat_urls=list(row.concat_urls) if row.concat_urls is not None else None,
    )


def create(
    conn: Connection,
    *,
    kind: str,
    bucket: str | None,
    key: str | None,
    length: int | None,
    expires_at: float | None,
    hash_state: bytes | None,
    content_type: str | None = None,
    filename: str | None = None,
    user_metadata: dict[str, Any] | None = None,
    is_partial: bool = False,
    concat_of: list[str] | None = None,
    concat_urls: list[str] | None = None,
    concat_key: str | None = None,
    expected_sha256: str | None = None,
    committed_offset: int = 0,
    idempotency: IdempotencyKey | None = None,
) -> UploadId:
    uid = str(uuid.uuid4())
    t = now(conn)
    conn.execute(
        sa.insert(uploads).values(
            upload_id=uid,
            kind=kind,
            state=OPEN,
            bucket=bucket,
            key=key,
            length=length,
            committed_offset=committed_offset,
            tail_length=0,
            next_seq=0,
            hash_state=hash_state,
            expected_sha256=expected_sha256,
            content_type=content_type,
            filename=filename,
            user_metadata=user_metadata or {},
            is_partial=is_partial,
            concat_of=concat_of,
            concat_urls=concat_urls,
            concat_key=concat_key,
            idempotency_key=idempotency.scoped if idempotency else None,
            idempotency_request=idempotency.request if idempotency else None,
            created_at=t,
            updated_at=t,
            expires_at=expires_at,
        )
    )
    return UploadId(uid)


# Statements every request to an upload runs (reading its row, its write lease), built once:
# building one, with its cache key, cost as much CPU as running it (~0.25 ms each on SQLite).
# No lease is longer than upload_lock_seconds allows (300 s): one that runs out further ahead
# than this was written by a clock since set back (SQLite's, this machine's; PostgreSQL's is
# the server's) and is taken over rather than waited out for as long as the clock jumped.
LEASE_HORIZON = 300.0
_BY_ID = uploads.c.upload_id == sa.bindparam("uid")
_GET = sa.select(uploads).where(_BY_ID)
_GET_FOR_UPDATE = _GET.with_for_update()
_ACQUIRE = (
    sa.update(uploads)
    .where(
        _BY_ID,
        sa.or_(
            uploads.c.lock_owner.is_(None),
            uploads.c.lock_owner == sa.bindparam("owner"),
            uploads.c.lock_expires < sa.bindparam("t"),
            uploads.c.lock_expires > sa.bindparam("t") + LEASE_HORIZON,
        ),
    )
    .values(
        lock_owner=sa.bindparam("owner"),
        lock_expires=sa.bindparam("until"),
        lock_since=sa.case(
            (uploads.c.lock_owner == sa.bindparam("owner"), uploads.c.lock_since),
            else_=sa.bindparam("t"),
        ),
    )
)
_RENEW = (
    sa.update(uploads)
    .where(_BY_ID, uploads.c.lock_owner == sa.bindparam("owner"))
    .values(lock_expires=sa.bindparam("until"))
)
_UNLOCKED: dict[str, Any] = {"lock_owner": None, "lock_expires": None, "lock_since": None}
_RELEASE = (
    sa.update(uploads)
    .where(_BY_ID, uploads.c.lock_owner == sa.bindparam("owner"))
    .values(**_UNLOCKED)
)


def get(conn: Connection, upload_id: str, *, for_update: bool = False) -> UploadRecord:
    """The upload, or UploadNotFound. Expired and terminated uploads are returned as such.

    `for_update` locks the row until the transaction ends (PostgreSQL; SQLite's write
    transactions are serial anyway).
    """
    try:
        uuid.UUID(upload_id)
    except ValueError:
        raise UploadNotFound(f"upload {upload_id!r} not found") from None
    query = _GET_FOR_UPDATE if for_update else _GET
    row = conn.execute(query, {"uid": upload_id}).one_or_none()
    if row is None:
        raise UploadNotFound(f"upload {upload_id} not found")
    return _record(row)


def get_open(conn: Connection, upload_id: str, *, for_update: bool = False) -> UploadRecord:
    """The upload if it can still take bytes; UploadGone if expired or terminated."""
    rec = get(conn, upload_id, for_update=for_update)
    lapsed = rec.expires_at is not None and rec.expires_at < now(conn)
    # A finished partial upload lives on (for concatenation) only until its expiry.
    if rec.state in (TERMINATED, EXPIRED) or (
        lapsed and (rec.state == OPEN or (rec.state == COMPLETE and rec.is_partial))
    ):
        raise UploadGone(
            f"upload {upload_id} has {'expired' if rec.state != TERMINATED else 'been terminated'}"
        )
    return rec


def parts(conn: Connection, upload_id: str) -> list[tuple[str, int, int]]:
    """(chunk id, offset, length) of the upload's durable chunks, in order."""
    rows = conn.execute(
        sa.select(upload_parts.c.chunk_id, upload_parts.c.offset, upload_parts.c.length)
        .where(upload_parts.c.upload_id == upload_id)
        .order_by(upload_parts.c.seq)
    )
    return [(r[0], r[1], r[2]) for r in rows]


def part_states(conn: Connection, upload_id: str) -> list[bytes | None]:
    """The whole-file SHA-256 state after each of the upload's parts, in order (see
    NewPart.sha_state)."""
    rows = conn.execute(
        sa.select(upload_parts.c.sha_state)
        .where(upload_parts.c.upload_id == upload_id)
        .order_by(upload_parts.c.seq)
    )
    return [r[0] for r in rows]


# --- locks (leases) -------------------------------------------------------------------------


def acquire_lock(conn: Connection, upload_id: str, owner: str, lease: float) -> None:
    """Take the upload's write lease, or raise UploadLocked while someone else holds it."""
    t = now(conn)
    res = conn.execute(_ACQUIRE, {"uid": upload_id, "owner": owner, "t": t, "until": t + lease})
    if res.rowcount != 1:
        get(conn, upload_id)  # UploadNotFound if it does not exist at all
        raise UploadLocked(f"upload {upload_id} is being written by another request")


def renew_lock(conn: Connection, upload_id: str, owner: str, lease: float) -> bool:
    until = now(conn) + lease
    res = conn.execute(_RENEW, {"uid": upload_id, "owner": owner, "until": until})
    return res.rowcount == 1


def release_lock(conn: Connection, upload_id: str, owner: str) -> None:
    conn.execute(_RELEASE, {"uid": upload_id, "owner": owner})


# --- appending --------------------------------------------------------------------------------


def checkpoint(
    conn: Connection,
    upload_id: str,
    owner: str,
    *,
    expected_committed: int,
    cp: Checkpoint,
    lease: float,
    count_refs: bool = True,
    check_growth: Callable[[Connection, int], None] | None = None,
) -> UploadRecord:
    """Make parts (and the new tail) durable, atomically; the caller must hold the lease.

    Without `count_refs` the parts' references are left for the caller to count later in
    the transaction, in the one pass it changes counts in (a partial upload's last parts,
    with the references of the finals it completes: chunks.change_refs). `check_growth`:
    called with the bytes the upload grows by, once its row is locked and before any chunk
    row is (the lock order), to refuse them (a deferred length's quota)."""
    # Locked (PostgreSQL): a terminate or expiry (release_data) committing after this read
    # would otherwise go unseen, and its released parts be followed by ours (leaked) or, on
    # completion, the version be made of ours alone.
    rec = get(conn, upload_id, for_update=True)
    if rec.lock_owner != owner:
        raise UploadLocked(f"upload {upload_id} was taken over by another request")
    if rec.state != OPEN:
        raise UploadGone(f"upload {upload_id} is {rec.state}")
    if rec.committed_offset != expected_committed:
        raise OffsetConflict(
            f"upload {upload_id} moved to {rec.offset} under us", expected=rec.offset
        )
    offset, seq = rec.committed_offset, rec.next_seq
    rows = []
    for p in cp.parts:
        if p.offset != offset:
            raise AssertionError(f"part at {p.offset} does not follow {offset}")
        rows.append(
            {
                "upload_id": upload_id,
                "seq": seq,
                "chunk_id": p.chunk_id,
                "offset": p.offset,
                "length": p.length,
                "sha_state": p.sha_state,
            }
        )
        offset += p.length
        seq += 1
    if check_growth is not None:
        check_growth(conn, offset + (cp.tail.length if cp.tail is not None else 0) - rec.offset)
    if rows:
        # gc took chunks this writer held unreferenced (its lease lapsed long ago: a client
        # stalled for an hour) if a count or a part's foreign key finds a chunk row missing:
        # the bytes past the offset are to be sent again.
        stored = not count_refs or chunk_index.add_refs(conn, Counter(p.chunk_id for p in cp.parts))
        if stored:
            try:
                conn.execute(_INSERT_PARTS, rows)
            except IntegrityError:
                stored = False
        if not stored:
            raise StorageUnavailable(
                f"chunks of this request to upload {upload_id} were collected before they "
                f"could be recorded (its write lease had lapsed); resume from offset "
                f"{rec.offset}"
            )
    t = now(conn)
    values: dict[str, Any] = {
        "committed_offset": offset,
        "next_seq": seq,
        **_tail_values(cp.tail),
        "updated_at": t,
        "lock_expires": t + lease,
    }
    if cp.hash_state is not None:
        values["hash_state"] = cp.hash_state
    if cp.expiry is not None and rec.expires_at is not None:
        values["expires_at"] = max(rec.expires_at, t + cp.expiry)
    conn.execute(_update_by_id(frozenset(values)), {"uid": upload_id, **values})
    return get(conn, upload_id)


_INSERT_PARTS = sa.insert(upload_parts)


@functools.cache
def _update_by_id(columns: frozenset[str]) -> sa.Update:
    """UPDATE uploads SET each column to the parameter of its name, for one upload (the few
    column sets checkpoints use, each built once)."""
    return sa.update(uploads).where(_BY_ID).values({c: sa.bindparam(c) for c in columns})


def _tail_values(tail: TailRef | None) -> dict[str, Any]:
    if tail is None:
        return {"tail_length": 0, "tail_key": None, "tail_backends": None, "tail_checksum": None}
    return {
        "tail_length": tail.length,
        "tail_key": tail.key,
        "tail_backends": list(tail.backends),
        "tail_checksum": tail.checksum,
    }


def set_length(conn: Connection, upload_id: str, length: int) -> None:
    conn.execute(
        sa.update(uploads)
        .where(uploads.c.upload_id == upload_id, uploads.c.length.is_(None))
        .values(length=length, updated_at=now(conn))
    )


def clear_length(conn: Connection, upload_id: str) -> None:
    """Make the upload's length deferred again (a declaration whose request was refused)."""
    conn.execute(
        sa.update(uploads)
        .where(uploads.c.upload_id == upload_id)
        .values(length=None, updated_at=now(conn))
    )


def mark_complete(conn: Connection, upload_id: str, version_id: str | None) -> None:
    """The upload is done; its parts were handed over to a version (or kept, if partial)."""
    if version_id is not None:
        conn.execute(sa.delete(upload_parts).where(upload_parts.c.upload_id == upload_id))
    conn.execute(
        sa.update(uploads)
        .where(uploads.c.upload_id == upload_id)
        .values(
            state=COMPLETE,
            version_id=version_id,
            **_tail_values(None),
            hash_state=None,
            **_UNLOCKED,
            updated_at=now(conn),
        )
    )


def release_data(conn: Connection, upload_id: str, state: str) -> TailRef | None:
    """Drop everything the upload holds (parts, pins, tail) and mark it terminated/expired;
    its Idempotency-Key goes with it (a later creation with the key opens a new session).

    Returns the staged tail whose file the caller removes once this transaction commits.
    """
    # The row locked first (PostgreSQL), so a concurrent pin or checkpoint of this upload
    # waits for us (and then finds it released) instead of slipping in between, and the tail
    # read is the one this drops (read before the lock, a checkpoint could replace it).
    old_tail = get(conn, upload_id, for_update=True).tail
    conn.execute(
        sa.update(uploads)
        .where(uploads.c.upload_id == upload_id)
        .values(
            state=state,
            committed_offset=0,
            **_tail_values(None),
            hash_state=None,
            **_UNLOCKED,
            idempotency_key=None,
            idempotency_request=None,
            updated_at=now(conn),
        )
    )
    counts = Counter(
        conn.execute(
            sa.select(upload_parts.c.chunk_id).where(upload_parts.c.upload_id == upload_id)
        ).scalars()
    )
    counts.update(
        conn.execute(
            sa.select(upload_pins.c.chunk_id).where(upload_pins.c.upload_id == upload_id)
        ).scalars()
    )
    conn.execute(sa.delete(upload_parts).where(upload_parts.c.upload_id == upload_id))
    conn.execute(sa.delete(upload_pins).where(upload_pins.c.upload_id == upload_id))
    chunk_index.drop_refs(conn, counts)
    return old_tail


def delete(conn: Connection, upload_id: str) -> None:
    """Remove an upload's row (after release_data): for uploads no client ever heard of."""
    conn.execute(sa.delete(uploads).where(uploads.c.upload_id == upload_id))
