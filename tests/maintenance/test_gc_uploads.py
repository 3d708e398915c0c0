"""Garbage collection beside uploads in progress, whatever the grace: a chunk an append has
stored (or found stored) but not yet checkpointed is unreferenced, yet it is the upload's."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.engine.ingest import Checksum
from edgestore.errors import StorageUnavailable
from edgestore.maintenance import gc
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, uploads
from tests.helpers import MiB, blocks_of, random_bytes, read_all


def _paused_append(
    engine: Engine, data: bytes, *, checksum: bool
) -> tuple[threading.Thread, threading.Event, list[Any]]:
    """An append of `data` to a new upload, paused (its source idle) after half the bytes;
    with a checksum, nothing of it is checkpointed before its end."""
    up = engine.uploads.create(length=len(data), bucket="b", key="k")
    halfway, resume = threading.Event(), threading.Event()

    def source() -> Iterator[bytes]:
        yield from blocks_of(data[: len(data) // 2])
        halfway.set()
        resume.wait(30)
        yield from blocks_of(data[len(data) // 2 :])

    digest = Checksum("sha1", hashlib.sha1(data).digest()) if checksum else None
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(engine.uploads.append(up.upload_id, 0, source(), checksum=digest))
        except Exception as exc:
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert halfway.wait(30)
    return t, resume, result


def _wait_stored(engine: Engine, count: int) -> None:
    """Until the paused append's first chunks have rows (its chunk writer is asynchronous)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.core.db.read() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one()
        if n >= count:
            return
        time.sleep(0.02)
    raise AssertionError("the append stored no chunk")


def _check_done(engine: Engine, result: list[Any], data: bytes) -> None:
    assert result and not isinstance(result[0], BaseException), result
    done = result[0]
    assert done.state == "complete" and done.version_id is not None
    assert read_all(engine, engine.objects.by_version_id(done.version_id)) == data
    with engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "checksum"])
def test_gc_grace_0_spares_the_chunks_of_an_append_in_progress(
    small_engine: Engine, checksum: bool
) -> None:
    """`gc --grace 0` while an append holds stored chunks it has not checkpointed yet (a
    request with Upload-Checksum checkpoints nothing before its end): their rows were deleted
    and the checkpoint then failed on the foreign key (a 500), the request's bytes lost."""
    data = random_bytes(2 * MiB, seed=41)
    t, resume, result = _paused_append(small_engine, data, checksum=checksum)
    try:
        _wait_stored(small_engine, 3)
        report = gc.collect(small_engine, grace=0)
    finally:
        resume.set()
        t.join(30)
    assert report.chunks_deleted == 0
    _check_done(small_engine, result, data)


def test_gc_grace_0_spares_an_unreferenced_chunk_an_append_found_stored(
    small_engine: Engine,
) -> None:
    """The bytes of a deleted object sent again: each chunk is a dedup hit on an
    unreferenced chunk (its grace restarted), held by the append until its checkpoint.
    `gc --grace 0` between the two took it, and the upload failed."""
    data = random_bytes(2 * MiB, seed=42)
    old = small_engine.put(blocks_of(data), key="old")
    small_engine.objects.delete(old)
    with small_engine.core.db.write() as conn:  # deleted long ago
        conn.execute(sa.update(chunks).values(zero_since=1.0))
    t, resume, result = _paused_append(small_engine, data, checksum=True)
    try:
        # The old chunks are all unreferenced; the append has found the first half stored.
        report = gc.collect(small_engine, grace=0)
    finally:
        resume.set()
        t.join(30)
    assert report.chunks_deleted > 0  # the second half's chunks, not yet seen by the append
    _check_done(small_engine, result, data)


def test_gc_collects_what_an_append_left_once_it_ended(small_engine: Engine) -> None:
    """The protection lasts as long as the append: chunks of an append whose checksum did
    not match are garbage, and the next `gc --grace 0` takes them."""
    data = random_bytes(1 * MiB, seed=43)
    up = small_engine.uploads.create(length=len(data))
    with pytest.raises(Exception, match="does not match"):
        small_engine.uploads.append(
            up.upload_id, 0, blocks_of(data), checksum=Checksum("sha1", b"\0" * 20)
        )
    report = gc.collect(small_engine, grace=0)
    assert report.chunks_deleted > 0


def test_chunks_collected_under_a_long_lapsed_lease_are_a_clear_error(
    small_engine: Engine,
) -> None:
    """A writer whose lease lapsed over an hour ago (its client stalled that long) is taken
    for dead, and `gc --grace 0` takes the chunks it held. Its checkpoint failed on the
    foreign key (a 500); now it is a retryable error naming the offset to resume from, and
    the upload resumes there."""
    data = random_bytes(1 * MiB, seed=44)
    t, resume, result = _paused_append(small_engine, data, checksum=True)
    (upload_id,) = _open_uploads(small_engine)
    try:
        _wait_stored(small_engine, 3)
        with small_engine.core.db.write() as conn:
            conn.execute(
                sa.update(uploads)
                .where(uploads.c.upload_id == upload_id)
                .values(lock_expires=time.time() - 2 * gc.LEASE_LAPSE)
            )
        report = gc.collect(small_engine, grace=0)
    finally:
        resume.set()
        t.join(30)
    assert report.chunks_deleted > 0
    assert len(result) == 1 and isinstance(result[0], StorageUnavailable), result
    assert "resume from offset 0" in str(result[0])
    assert small_engine.uploads.get(upload_id).offset == 0
    done = small_engine.uploads.append(upload_id, 0, blocks_of(data))
    _check_done(small_engine, [done], data)


def _open_uploads(engine: Engine) -> list[str]:
    with engine.core.db.read() as conn:
        return list(
            conn.execute(sa.select(uploads.c.upload_id).where(uploads.c.state == "open")).scalars()
        )
