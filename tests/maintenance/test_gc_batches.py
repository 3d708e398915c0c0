"""gc frees unreferenced chunks a batch per write transaction (one commit per chunk took hours
for a deleted backup set of millions), and a batch keeps every guarantee one chunk had: a
chunk referenced, kept alive or stored again after it was listed keeps its row and files, and
files are deleted only after the rows that named them are gone."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.errors import StorageError
from edgestore.maintenance import gc
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import garbage
from edgestore.metadata.schema import chunks, shards
from edgestore.storage.local import LocalBackend
from tests.helpers import MiB, blocks_of, random_bytes, read_all
from tests.native import chunks_of
from tests.races import in_thread


def _garbage(engine: Engine, seed: int, size: int = 1 * MiB) -> list[tuple[str, bytes]]:
    """Stored chunks no one references (their native session was aborted), with their bytes."""
    pairs = chunks_of(random_bytes(size, seed=seed))
    session = engine.native.create(size=size)
    for cid, raw in pairs:
        engine.native.put_chunk(session.upload_id, cid, raw)
    engine.native.abort(session.upload_id)
    return pairs


def _shard_rows(engine: Engine, ids: list[str]) -> list[Any]:
    with engine.core.db.read() as conn:
        return conn.execute(sa.select(shards).where(shards.c.chunk_id.in_(ids))).all()


def _stored(engine: Engine, ids: list[str]) -> set[str]:
    with engine.core.db.read() as conn:
        return set(
            conn.execute(sa.select(chunks.c.chunk_id).where(chunks.c.chunk_id.in_(ids))).scalars()
        )


def _file_exists(engine: Engine, row: Any) -> bool:
    return engine.core.dirs.backends[row.backend].stat(row.key) is not None


def _writes_of(engine: Engine, run: Callable[[], Any]) -> tuple[Any, int]:
    """What `run` returns, and how many write transactions it committed."""
    writes: list[int] = []

    def note(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("sqlite_immediate"):  # db.write(), both databases
            writes.append(1)

    sa_engine = engine.core.db.engine
    sa.event.listen(sa_engine, "commit", note)
    try:
        return run(), len(writes)
    finally:
        sa.event.remove(sa_engine, "commit", note)


def test_many_chunks_are_freed_a_batch_per_transaction(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every unreferenced chunk of batches and a part batch goes, rows and files, in one write
    transaction per batch (it was one per chunk); the report's figures and progress are
    those of every chunk, and a version sharing none of them stays whole."""
    monkeypatch.setattr(gc, "BATCH", 5)
    kept_data = random_bytes(300 * 1024, seed=40)
    kept = small_engine.put(blocks_of(kept_data), key="kept")
    _, idle = _writes_of(small_engine, lambda: gc.collect(small_engine, grace=0, orphans=False))
    ids = [cid for cid, _ in _garbage(small_engine, seed=41)]
    assert len(ids) > 2 * gc.BATCH and len(ids) % gc.BATCH  # whole batches and a part one
    rows = _shard_rows(small_engine, ids)
    assert rows and all(_file_exists(small_engine, r) for r in rows)
    seen: list[tuple[str, int]] = []

    def run() -> gc.GcReport:
        return gc.collect(
            small_engine, grace=0, orphans=False, progress=lambda s, n: seen.append((s, n))
        )

    report, writes = _writes_of(small_engine, run)
    assert writes - idle == math.ceil(len(ids) / gc.BATCH)
    assert report.chunks_deleted == len(ids) and report.errors == 0
    assert report.shard_files_deleted == len(rows)
    assert report.bytes_freed == sum(r.size for r in rows)
    counts = [n for stage, n in seen if stage == "chunks"]
    assert counts == sorted(counts) and counts[-1] == len(ids)
    assert _stored(small_engine, ids) == set() and _shard_rows(small_engine, ids) == []
    assert not any(_file_exists(small_engine, r) for r in rows)
    assert read_all(small_engine, kept) == kept_data


def _repair_stores_again(engine: Engine, cid: str, raw: bytes) -> None:
    """A read found the chunk damaged; its bytes, uploaded again, store it anew."""
    db = engine.core.db
    with db.write() as conn:
        assert chunk_index.queue_repair(db, conn, cid, "test: damaged", [0])
    assert engine.core.writer.store(raw, expect=cid).stored_size > 0


def _resurrections(engine: Engine) -> dict[str, Callable[[str, bytes], None]]:
    return {
        "dedup": lambda _cid, raw: engine.core.writer.store(raw),  # keep_alive
        "pin": lambda cid, raw: engine.native.put_chunk(
            engine.native.create(size=len(raw)).upload_id, cid, raw
        ),
        "repair": lambda cid, raw: _repair_stores_again(engine, cid, raw),
    }


def revive_when_first_listed(
    monkeypatch: pytest.MonkeyPatch, revive: Callable[[list[str]], list[str]]
) -> list[str]:
    """Have `revive` use chunks of gc's first batch again between its listing and its
    transaction; returns (once gc has run) the chunks it revived."""
    real = garbage.unreferenced
    revived: list[str] = []

    def listed_then_revived(
        conn: sa.Connection, before: float, limit: int, after: str | None = None
    ) -> list[str]:
        batch = real(conn, before, limit, after)
        if not revived:
            revived.extend(revive(batch))
        return batch

    monkeypatch.setattr(garbage, "unreferenced", listed_then_revived)
    return revived


@pytest.mark.parametrize("how", ["dedup", "pin", "repair"])
def test_a_chunk_referenced_again_mid_batch_keeps_its_row_and_files(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """gc lists a batch, then one chunk in the middle of it is used again (a dedup hit, a
    session's pin, a repair storing it anew) before the batch's transaction: that chunk keeps
    its row and the files it names, and reads back; the rest of the batch goes."""
    pairs = _garbage(small_engine, seed=42)
    raw_of = dict(pairs)
    monkeypatch.setattr(gc, "BATCH", len(pairs))

    def revive(batch: list[str]) -> list[str]:
        cid = batch[len(batch) // 2]
        _resurrections(small_engine)[how](cid, raw_of[cid])
        return [cid]

    revived = revive_when_first_listed(monkeypatch, revive)
    report = gc.collect(small_engine, grace=0, orphans=False)
    [cid] = revived
    assert report.chunks_deleted == len(pairs) - 1 and report.errors == 0
    assert _stored(small_engine, list(raw_of)) == {cid}
    rows = _shard_rows(small_engine, [cid])
    assert rows and all(_file_exists(small_engine, r) for r in rows)
    with small_engine.core.db.read() as conn:
        rec = chunk_index.load(conn, [cid])[cid]
    assert small_engine.core.reader.examine(rec)[:2] == (raw_of[cid], [])


def test_gc_does_not_wait_for_a_chunk_another_transaction_holds(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a writer has kept one chunk of the batch alive and not committed yet (a
    dedup hit, its upload's checkpoint to come). gc holding a batch of rows must not wait for
    it (waiting, with rows of its own locked, is how deadlocks and stalled uploads start):
    it deletes the rest, and the held chunk is what its writer made it."""
    pairs = _garbage(pg_engine, seed=43)
    monkeypatch.setattr(gc, "BATCH", len(pairs))
    held = sorted(cid for cid, _ in pairs)[len(pairs) // 2]
    reports: list[gc.GcReport] = []
    with pg_engine.core.db.write() as conn:
        assert chunk_index.keep_alive(conn, held)
        t, errors = in_thread(lambda: reports.append(gc.collect(pg_engine, grace=0, orphans=False)))
        t.join(10)
        finished = not t.is_alive()
    t.join(60)
    assert finished, "gc waited for the row another transaction held"
    assert errors == []
    assert reports[0].chunks_deleted == len(pairs) - 1
    assert _stored(pg_engine, [cid for cid, _ in pairs]) == {held}
    rows = _shard_rows(pg_engine, [held])
    assert rows and all(_file_exists(pg_engine, r) for r in rows)


def test_files_gc_could_not_delete_are_only_orphans(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows of a batch commit before its files go: files that could not be deleted then
    (as after a crash) are named by no row, counted as errors, and the sweep takes them."""
    ids = [cid for cid, _ in _garbage(small_engine, seed=44)]
    rows = _shard_rows(small_engine, ids)

    def refuse(self: LocalBackend, key: str) -> None:
        raise StorageError("test: the disk went away")

    monkeypatch.setattr(LocalBackend, "delete", refuse)
    report = gc.collect(small_engine, grace=0, orphans=False)
    monkeypatch.undo()
    assert report.chunks_deleted == len(ids) and report.shard_files_deleted == 0
    assert report.errors == len(rows) and report.bytes_freed == 0
    assert _stored(small_engine, ids) == set() and _shard_rows(small_engine, ids) == []
    assert all(_file_exists(small_engine, r) for r in rows)
    old = time.time() - 7200
    for r in rows:
        backend = small_engine.core.dirs.backends[r.backend]
        assert isinstance(backend, LocalBackend)
        os.utime(backend.root / r.key, (old, old))
    assert gc.collect(small_engine, grace=3600).orphan_files_deleted == len(rows)
    assert not any(_file_exists(small_engine, r) for r in rows)


def test_each_data_dirs_deletions_are_counted_exactly(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's files go a data dir at a time on several threads: with one dir refusing,
    its files are the errors, every other file is deleted and its bytes freed, exactly."""
    monkeypatch.setattr(gc, "BATCH", 4)
    ids = [cid for cid, _ in _garbage(small_engine, seed=45)]
    rows = _shard_rows(small_engine, ids)
    real = LocalBackend.delete

    def d1_refuses(self: LocalBackend, key: str) -> None:
        if self.name == "d1":
            raise StorageError("test: d1 went away")
        real(self, key)

    monkeypatch.setattr(LocalBackend, "delete", d1_refuses)
    report = gc.collect(small_engine, grace=0, orphans=False)
    monkeypatch.undo()
    lost = [r for r in rows if r.backend == "d1"]
    gone = [r for r in rows if r.backend != "d1"]
    assert lost and gone and report.chunks_deleted == len(ids)
    assert report.errors == len(lost) and report.shard_files_deleted == len(gone)
    assert report.bytes_freed == sum(r.size for r in gone)
    assert all(_file_exists(small_engine, r) for r in lost)
    assert not any(_file_exists(small_engine, r) for r in gone)
