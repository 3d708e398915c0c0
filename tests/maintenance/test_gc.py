"""Garbage collection frees what nothing references, after the grace period, and only that."""

from __future__ import annotations

import os
import time

import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, shards, uploads
from tests.helpers import MiB, blocks_of, random_bytes, read_all


def _files(engine: Engine) -> int:
    return sum(1 for b in engine.core.dirs.backends.values() for _ in b.list())


def _rows(engine: Engine) -> int:
    with engine.core.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one()


def test_deleted_objects_are_collected_shared_chunks_kept(small_engine: Engine) -> None:
    shared = random_bytes(1 * MiB, seed=1)
    keep = small_engine.put(blocks_of(shared), key="keep")
    doomed = small_engine.put(blocks_of(shared + random_bytes(1 * MiB, seed=2)), key="doomed")
    rows, files = _rows(small_engine), _files(small_engine)
    small_engine.objects.delete(doomed)
    report = gc.collect(small_engine, grace=3600)  # too young: nothing goes yet
    assert report.chunks_deleted == 0 and _rows(small_engine) == rows
    report = gc.collect(small_engine, grace=0)
    assert report.chunks_deleted > 0 and report.bytes_freed > 0
    assert _rows(small_engine) < rows and _files(small_engine) < files
    assert read_all(small_engine, keep) == shared
    with small_engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []
        n_shards = conn.execute(sa.select(sa.func.count()).select_from(shards)).scalar_one()
    assert _files(small_engine) == n_shards


def test_orphan_and_temporary_files_are_removed_after_grace(small_engine: Engine) -> None:
    v = small_engine.put(blocks_of(random_bytes(1 * MiB, seed=3)), key="x")
    backend = small_engine.core.dirs.backends["d0"]
    orphan = "abc/" + "ab" * 32 + ".deadbeef0000.0"
    backend.put(orphan, [b"left by a crash between shard write and commit"])
    tmp = backend.root / "abc" / "whatever.1234abcd.tmp"
    tmp.write_bytes(b"partial")
    report = gc.collect(small_engine, grace=3600)
    assert report.orphan_files_deleted == 0 and backend.stat(orphan) is not None
    old = time.time() - 7200
    os.utime(backend.root / orphan, (old, old))
    os.utime(tmp, (old, old))
    report = gc.collect(small_engine, grace=3600)
    assert report.orphan_files_deleted == 2
    assert backend.stat(orphan) is None and not tmp.exists()
    assert read_all(small_engine, v) == random_bytes(1 * MiB, seed=3)


def test_expired_uploads_release_their_chunks(small_engine: Engine) -> None:
    up = small_engine.uploads.create(length=10 * MiB)
    small_engine.uploads.append(up.upload_id, 0, blocks_of(random_bytes(2 * MiB, seed=4)))
    assert _rows(small_engine) > 0
    with small_engine.core.db.write() as conn:  # then abandoned: its expiry passes
        conn.execute(
            sa.update(uploads).where(uploads.c.upload_id == up.upload_id).values(expires_at=1.0)
        )
    report = gc.collect(small_engine, grace=0)
    assert report.uploads_expired == 1
    assert _rows(small_engine) == 0 and _files(small_engine) == 0
