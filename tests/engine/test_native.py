"""Native sessions in the engine: pins keep chunks from gc, expiry releases them, a chunk is
verified before a byte of it is written, and finalize verifies the whole file."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.engine.native import ManifestChunk, NativeUploads
from edgestore.errors import (
    ChunkHashMismatch,
    ChunkUnreadable,
    MissingChunks,
    StorageUnavailable,
    UploadGone,
    UploadNotFound,
    WholeFileMismatch,
)
from edgestore.maintenance import gc
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, repair_queue, shards, upload_pins, uploads
from tests.helpers import KiB, random_bytes, read_all
from tests.native import SMALL_PARAMS, chunks_of


def _native(engine: Engine) -> NativeUploads:
    return engine.native


def _count(engine: Engine, table: sa.Table) -> int:
    with engine.core.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def _consistent(engine: Engine) -> None:
    with engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_params_are_recorded_ones(small_engine: Engine) -> None:
    assert _native(small_engine).params() == SMALL_PARAMS


def test_writer_checks_the_claimed_id_before_writing(small_engine: Engine) -> None:
    data = random_bytes(100 * KiB, seed=1)
    files = sum(1 for b in small_engine.core.dirs.backends.values() for _ in b.list())
    with pytest.raises(ChunkHashMismatch):
        small_engine.core.writer.store(data, expect=hashlib.sha256(b"other").hexdigest())
    assert _count(small_engine, chunks) == 0
    assert sum(1 for b in small_engine.core.dirs.backends.values() for _ in b.list()) == files
    stored = small_engine.core.writer.store(data, expect=hashlib.sha256(data).hexdigest())
    assert stored.is_new


def test_pinned_chunks_survive_gc_until_the_session_expires(small_engine: Engine) -> None:
    native = _native(small_engine)
    data = random_bytes(300 * KiB, seed=2)
    parts = chunks_of(data)
    rec = native.create(size=len(data), key="pinned")
    for cid, c in parts:
        native.put_chunk(rec.upload_id, cid, c)
    assert gc.collect(small_engine, grace=0).chunks_deleted == 0  # pinned: kept
    assert _count(small_engine, chunks) == len({c for c, _ in parts})
    _consistent(small_engine)

    with small_engine.core.db.write() as conn:  # time passes
        conn.execute(sa.update(uploads).values(expires_at=0))
    with pytest.raises(UploadGone):
        native.missing(rec.upload_id, [parts[0][0]])
    report = gc.collect(small_engine, grace=0)
    assert report.uploads_expired == 1
    assert _count(small_engine, upload_pins) == 0
    assert _count(small_engine, chunks) == 0
    _consistent(small_engine)


def test_finalize_verifies_and_hands_pins_to_the_version(small_engine: Engine) -> None:
    native = _native(small_engine)
    data = random_bytes(500 * KiB, seed=3)
    parts = chunks_of(data)
    manifest = [ManifestChunk(cid, len(c)) for cid, c in parts]
    rec = native.create(size=len(data), key="fin")
    assert native.missing(rec.upload_id, [cid for cid, _ in parts]) == [cid for cid, _ in parts]
    for cid, c in parts[:-1]:
        native.put_chunk(rec.upload_id, cid, c)
    with pytest.raises(MissingChunks) as missing:
        native.finalize(rec.upload_id, manifest, hashlib.sha256(data).hexdigest())
    assert missing.value.chunk_ids == [parts[-1][0]]
    native.put_chunk(rec.upload_id, *parts[-1])
    with pytest.raises(WholeFileMismatch):
        native.finalize(rec.upload_id, manifest, hashlib.sha256(b"no").hexdigest())
    done = native.finalize(rec.upload_id, manifest, hashlib.sha256(data).hexdigest())
    assert done.verified_by == "read-back"
    assert read_all(small_engine, done.version) == data
    assert _count(small_engine, upload_pins) == 0
    _consistent(small_engine)
    assert gc.collect(small_engine, grace=0).chunks_deleted == 0  # the version holds them


def test_other_kinds_of_upload_are_not_native_sessions(small_engine: Engine) -> None:
    rec = small_engine.uploads.create(kind="tus", length=10)
    with pytest.raises(UploadNotFound):
        _native(small_engine).status(rec.upload_id)


def test_a_session_receiving_chunks_has_its_expiry_pushed_back(small_engine: Engine) -> None:
    """A tus upload's progress pushes its expiry back (uploads expire when *untouched* for
    upload_expiry_seconds); a native session receiving chunks kept the expiry it was created
    with, so a long upload (or one resumed days later) expired while still sending."""
    import time

    native = _native(small_engine)
    data = random_bytes(300 * KiB, seed=31)
    parts = chunks_of(data)
    rec = native.create(size=len(data), key="long")
    native.put_chunk(rec.upload_id, *parts[0])
    soon = time.time() + 2  # days have passed: the session is about to lapse
    with small_engine.core.db.write() as conn:
        conn.execute(
            sa.update(uploads).where(uploads.c.upload_id == rec.upload_id).values(expires_at=soon)
        )
    native.put_chunk(rec.upload_id, *parts[1])  # ...and it is still receiving chunks
    assert native.missing(rec.upload_id, [parts[2][0]]) == [parts[2][0]]
    week = small_engine.settings.upload_expiry_seconds
    assert small_engine.uploads.get(rec.upload_id).expires_at > time.time() + week - 60


def test_announcements_are_bounded_by_the_session(small_engine: Engine) -> None:
    """The running whole-file digest keeps the announced order in memory: an announcement
    past the session's size is refused, and one of more chunks than the store's chunker can
    cut from that size is not followed (else one session's list grows without end)."""
    from edgestore.errors import InvalidInput

    native = _native(small_engine)
    wholefile = small_engine.native._wholefile
    assert wholefile is not None
    data = random_bytes(100 * KiB, seed=32)
    parts = chunks_of(data)
    ids, sizes = [cid for cid, _ in parts], [len(c) for _, c in parts]
    rec = native.create(size=len(data))
    with pytest.raises(InvalidInput, match="past"):
        native.missing(rec.upload_id, ids, offset=1, sizes=sizes)
    native.missing(rec.upload_id, ids, offset=0, sizes=sizes)  # the honest order: followed
    assert wholefile.progress(rec.upload_id) is not None

    tiny = native.create(size=len(data))
    many = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    native.missing(tiny.upload_id, many, offset=0, sizes=[1] * len(many))
    assert wholefile.progress(tiny.upload_id) is None  # 1000 chunks from 100 KiB: not followed


def test_a_damaged_chunk_is_asked_for_and_its_bytes_repair_it(small_engine: Engine) -> None:
    """A stored chunk queued for repair is pinned but reported missing, and a PUT of it is
    not answered unread: the client's bytes store it again."""
    native = _native(small_engine)
    data = random_bytes(300 * KiB, seed=4)
    v1 = small_engine.put([data], key="first")
    damaged = small_engine.objects.manifest(v1)[0].chunk_id
    with small_engine.core.db.read() as conn:
        row = conn.execute(
            sa.select(shards.c.backend, shards.c.key).where(shards.c.chunk_id == damaged)
        ).first()
    assert row is not None
    (small_engine.core.dirs.backends[row.backend].root / row.key).unlink()
    read_all(small_engine, v1)  # read around the lost shard, and queued for repair
    assert _count(small_engine, repair_queue) == 1
    parts = chunks_of(data)
    rec = native.create(size=len(data), key="again")
    assert native.missing(rec.upload_id, [cid for cid, _ in parts]) == [damaged]
    assert native.pin_if_stored(rec.upload_id, damaged) is None
    stored = native.put_chunk(rec.upload_id, damaged, dict(parts)[damaged])
    assert stored.stored_size > 0 and _count(small_engine, repair_queue) == 0
    manifest = [ManifestChunk(cid, len(c)) for cid, c in parts]
    done = native.finalize(rec.upload_id, manifest, hashlib.sha256(data).hexdigest())
    assert read_all(small_engine, done.version) == data == read_all(small_engine, v1)
    assert _count(small_engine, repair_queue) == 0
    _consistent(small_engine)


def test_a_shutdown_stops_a_finalize_reading_its_chunks_back(small_engine: Engine) -> None:
    """A SIGTERM cuts streaming appends at once, but a finalize reading its chunks back (all
    of a big file whose chunks the store already held: minutes) ran on, and the server's
    exit waited for it long past its grace period. It stops at its next chunk, commits
    nothing, and a finalize again (on a node that runs) completes."""
    native = _native(small_engine)
    data = random_bytes(2 * 1024 * KiB, seed=6)
    parts = chunks_of(data)
    manifest = [ManifestChunk(cid, len(c)) for cid, c in parts]
    digest = hashlib.sha256(data).hexdigest()
    earlier = native.create(size=len(data), key="sent-before")
    for cid, c in parts:
        native.put_chunk(earlier.upload_id, cid, c)
    rec = native.create(size=len(data), key="all-deduplicated")
    pinned: list[int] = []

    def on_dedup(size: int) -> None:  # called as finalize pins them, before the read-back
        pinned.append(size)
        if len(pinned) == 1:
            small_engine.uploads.stop_all("server is shutting down")

    with pytest.raises(StorageUnavailable, match="server is shutting down"):
        native.finalize(rec.upload_id, manifest, digest, on_dedup=on_dedup)
    assert len(pinned) == len(parts) > 8
    assert native.status(rec.upload_id).version is None
    with Engine.open(small_engine.core.settings) as restarted:
        done = restarted.native.finalize(rec.upload_id, manifest, digest)
        assert done.verified_by == "read-back" and read_all(restarted, done.version) == data


def test_a_chunk_damaged_before_finalize_is_asked_for(small_engine: Engine) -> None:
    """A chunk pinned by /missing while whole, found with too few shards before finalize (a
    disk lost during a long upload): finalize asks for it (409) like /missing would, rather
    than commit a version that cannot be read (its SHA-256 known from the first version, so
    nothing is read back) while the client holds the bytes that restore it."""
    native = _native(small_engine)
    data = random_bytes(300 * KiB, seed=7)
    v1 = small_engine.put([data], key="first")
    parts = chunks_of(data)
    rec = native.create(size=len(data), key="again")
    assert native.missing(rec.upload_id, [cid for cid, _ in parts]) == []
    lost = parts[0][0]
    with small_engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(shards.c.backend, shards.c.key).where(shards.c.chunk_id == lost)
        ).all()
    for row in rows:
        (small_engine.core.dirs.backends[row.backend].root / row.key).unlink()
    with pytest.raises(ChunkUnreadable):
        read_all(small_engine, v1)  # queued for repair, with no shard left to rebuild from
    manifest = [ManifestChunk(cid, len(c)) for cid, c in parts]
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(MissingChunks) as missing:
        native.finalize(rec.upload_id, manifest, digest)
    assert missing.value.chunk_ids == [lost]
    native.put_chunk(rec.upload_id, lost, dict(parts)[lost])
    done = native.finalize(rec.upload_id, manifest, digest)
    assert read_all(small_engine, done.version) == data == read_all(small_engine, v1)
    assert _count(small_engine, repair_queue) == 0
    _consistent(small_engine)
