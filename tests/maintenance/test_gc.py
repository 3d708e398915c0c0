"""Garbage collection frees what nothing references, after the grace period, and only that."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.maintenance import gc
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, shards, uploads
from tests.helpers import KiB, MiB, blocks_of, random_bytes, read_all


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


def _set_expiry(engine: Engine, upload_id: str, at: float) -> None:
    with engine.core.db.write() as conn:
        conn.execute(
            sa.update(uploads).where(uploads.c.upload_id == upload_id).values(expires_at=at)
        )


def _waiting_final(engine: Engine) -> tuple[Any, Any, Any, bytes, bytes]:
    """Partial A, complete; partial B, half received; a final of A and B waiting for B."""
    a_data, b_data = random_bytes(600 * KiB, seed=21), random_bytes(700 * KiB, seed=22)
    ups = engine.uploads
    a = ups.create(length=len(a_data), is_partial=True)
    assert ups.append(a.upload_id, 0, blocks_of(a_data)).state == "complete"
    b = ups.create(length=len(b_data), is_partial=True)
    ups.append(b.upload_id, 0, blocks_of(b_data[: len(b_data) // 2]))
    final = ups.concatenate([a.upload_id, b.upload_id], key="joined")
    assert final.state == "open"
    return a, b, final, a_data, b_data


def _finish_b_and_check(engine: Engine, b: Any, final: Any, data: bytes, b_data: bytes) -> None:
    half = len(b_data) // 2
    engine.uploads.append(b.upload_id, half, blocks_of(b_data[half:]))
    done = engine.uploads.get(final.upload_id)
    assert done.state == "complete" and done.version_id is not None
    assert read_all(engine, engine.objects.by_version_id(done.version_id)) == data
    with engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_a_finished_partial_is_not_expired_from_under_its_waiting_final(
    small_engine: Engine,
) -> None:
    """Partial A finished days before the final that names it was created, so A's expiry
    comes first. Expiry released A's parts while the final still waited for partial B: when
    B completed, the final could never become the object (it stayed open until it expired),
    although its HEAD's Upload-Expires was still days away."""
    a, b, final, a_data, b_data = _waiting_final(small_engine)
    _set_expiry(small_engine, a.upload_id, time.time() - 10)
    assert small_engine.uploads.get_open(final.upload_id).expires_at > time.time()
    gc.collect(small_engine, grace=0)
    assert small_engine.uploads.get(a.upload_id).state == "complete"
    _finish_b_and_check(small_engine, b, final, a_data + b_data, b_data)


def test_a_waiting_final_lives_while_its_partials_receive_bytes(small_engine: Engine) -> None:
    """Each append to partial B pushes B's expiry back; the final waiting for B has no bytes
    of its own, so nothing pushed its expiry: a partial still receiving bytes a week on lost
    its final (expired), and its last byte made no object. The final's expiry follows its
    partials' (HEAD reports it), and its finished partials' follow the final's."""
    a, b, final, a_data, b_data = _waiting_final(small_engine)
    lapsed = time.time() - 10  # a week on: A and the final lapsed, B got bytes a moment ago
    _set_expiry(small_engine, a.upload_id, lapsed)
    _set_expiry(small_engine, final.upload_id, lapsed)
    b_expires = small_engine.uploads.get(b.upload_id).expires_at
    assert b_expires > time.time()
    gc.collect(small_engine, grace=0)
    assert small_engine.uploads.get(a.upload_id).state == "complete"
    assert small_engine.uploads.get_open(final.upload_id).expires_at >= b_expires
    _finish_b_and_check(small_engine, b, final, a_data + b_data, b_data)


def test_an_upload_receiving_bytes_is_not_expired(small_engine: Engine) -> None:
    """Its expiry passed during a long request that has not checkpointed yet (a request
    with Upload-Checksum commits nothing before its end): the writer still holds its lease,
    renewed as bytes flow. Expiry took it all the same, and the request's bytes were refused
    at its end (410) although they kept arriving the whole time."""
    data = random_bytes(1 * MiB, seed=31)
    up = small_engine.uploads.create(length=len(data))
    halfway, resume = threading.Event(), threading.Event()

    def source() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        halfway.set()
        resume.wait(10)
        yield data[len(data) // 2 :]

    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.append(_append_or_error(small_engine, up.upload_id, source()))
    )
    t.start()
    assert halfway.wait(10)
    _set_expiry(small_engine, up.upload_id, time.time() - 10)
    report = gc.collect(small_engine, grace=3600)
    resume.set()
    t.join(10)
    assert report.uploads_expired == 0
    assert result and getattr(result[0], "state", result[0]) == "complete"
    done = small_engine.uploads.get(up.upload_id)
    assert read_all(small_engine, small_engine.objects.by_version_id(done.version_id)) == data


def _append_or_error(engine: Engine, upload_id: str, blocks: Iterator[bytes]) -> Any:
    try:
        return engine.uploads.append(upload_id, 0, blocks)
    except Exception as exc:
        return exc
