"""ChunkReader: a chunk's shards are read together, and parity fills in for what is lost."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.engine import objects as objects_module
from edgestore.errors import ChunkCorrupt, ObjectNotFound
from edgestore.maintenance import gc
from edgestore.metadata.schema import chunks, repair_queue, shards
from tests.helpers import MiB, blocks_of, random_bytes, read_all
from tests.shards import shard_paths


def _spy_gets(engine: Engine, monkeypatch: pytest.MonkeyPatch, wrap: Any) -> None:
    """Route every shard read through wrap(real_get, key); real_get reads as the reader
    asked (up to its limit)."""
    for backend in engine.core.dirs.backends.values():

        def get(key: str, limit: int | None = None, real: Any = backend.get) -> bytes:
            return wrap(lambda k: real(k, limit), key)  # type: ignore[no-any-return]

        monkeypatch.setattr(backend, "get", get)


def test_a_chunks_data_shards_are_read_at_once(engine: Engine, monkeypatch) -> None:
    """The k reads of a chunk wait on the disks together: each read here waits until all k
    have started, which serial reads would never do (the barrier would time out)."""
    data = random_bytes(3 * MiB, seed=5)  # one chunk: below the minimum size
    v = engine.put(blocks_of(data, MiB), key="together")
    barrier = threading.Barrier(engine.settings.ec_k, timeout=10)

    def wait_for_the_others(real: Any, key: str) -> bytes:
        barrier.wait()
        return real(key)  # type: ignore[no-any-return]

    _spy_gets(engine, monkeypatch, wait_for_the_others)
    assert read_all(engine, v) == data
    assert not barrier.broken


def test_lost_data_shards_are_replaced_by_as_many_parity_shards(
    engine: Engine, monkeypatch
) -> None:
    data = random_bytes(3 * MiB, seed=6)
    v = engine.put(blocks_of(data, MiB), key="patched")
    k, m = engine.settings.ec_k, engine.settings.ec_m
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(shards.c.backend, shards.c.key, shards.c.shard_index).order_by(
                shards.c.shard_index
            )
        ).all()
    assert len(rows) == k + m
    for row in rows[: m - 1]:  # data shards 0 .. m-2 gone
        (engine.core.dirs.backends[row.backend].root / row.key).unlink()
    read_keys: list[str] = []
    lock = threading.Lock()

    def record(real: Any, key: str) -> bytes:
        with lock:
            read_keys.append(key)
        return real(key)  # type: ignore[no-any-return]

    _spy_gets(engine, monkeypatch, record)
    assert read_all(engine, v) == data
    # The k data shards, then exactly one parity shard per lost one: no more, no fewer.
    by_key = {row.key: row.shard_index for row in rows}
    assert sorted(by_key[key] for key in read_keys) == list(range(k + m - 1))


def test_a_shard_file_grown_past_its_size_is_not_read_whole(engine: Engine, monkeypatch) -> None:
    """A shard file larger than the index records (a damaged inode claiming gigabytes, say)
    is read only as far as it takes to see that: reads took the whole file into memory,
    twice (the O_DIRECT block and the copy out), for each such shard of each chunk being
    read at once. The shard is read around, and queued for repair."""
    data = random_bytes(3 * MiB, seed=11)
    v = engine.put(blocks_of(data, MiB), key="grown")
    cid = engine.objects.manifest(v)[0].chunk_id
    path = shard_paths(engine, cid)[0]
    size = path.stat().st_size
    os.truncate(path, 256 * MiB)  # sparse: no disk space used
    lengths: list[int] = []

    def record(real: Any, key: str) -> bytes:
        blob: bytes = real(key)
        lengths.append(len(blob))
        return blob

    _spy_gets(engine, monkeypatch, record)
    assert read_all(engine, v) == data
    assert max(lengths) <= size + 1, "a shard file was read past its recorded size"
    with engine.core.db.read() as conn:
        bad, reason = conn.execute(
            sa.select(repair_queue.c.bad_shards, repair_queue.c.reason).where(
                repair_queue.c.chunk_id == cid
            )
        ).one()
    assert bad == [0] and "larger than" in reason, reason


def _zstd_chunk(engine: Engine, layout: str) -> str:
    with engine.core.db.read() as conn:
        cid: str = conn.execute(
            sa.select(chunks.c.chunk_id)
            .where(chunks.c.compression == "zstd", chunks.c.layout == layout)
            .limit(1)
        ).scalar_one()
    return cid


def _assert_clear_corruption(engine: Engine, v: Any, cid: str) -> None:
    """ChunkCorrupt naming the object and the chunk (never a codec error), queued for repair."""
    with pytest.raises(ChunkCorrupt) as info:
        read_all(engine, v)
    msg = str(info.value)
    assert f"{v.bucket}/{v.key}" in msg and v.object_id in msg and cid in msg
    with engine.core.db.read() as conn:
        queued = conn.execute(
            sa.select(repair_queue.c.chunk_id).where(repair_queue.c.chunk_id == cid)
        ).all()
    assert queued


@pytest.mark.parametrize("column", ["raw_size", "stored_size"])
def test_a_chunk_rebuilt_to_another_size_than_recorded_is_a_clear_error(
    engine: Engine, column: str
) -> None:
    """Intact shards that decode, or whose zstd frame decompresses, to another size than the
    chunk row records: a ChunkCorrupt naming object and chunk, queued for repair like any
    other chunk that fails its checks (not a bare ValueError from the codec)."""
    data = random_bytes(1536 * 1024, seed=8).hex().encode()  # hex text: zstd pays, EC layout
    v = engine.put(blocks_of(data, MiB), key="resized")
    cid = _zstd_chunk(engine, "ec")
    with engine.core.db.write() as conn:
        conn.execute(
            sa.update(chunks).where(chunks.c.chunk_id == cid).values({column: chunks.c[column] + 1})
        )
    _assert_clear_corruption(engine, v, cid)


@pytest.mark.parametrize("at", [0, 5, -3])
def test_a_corrupt_inline_chunk_is_a_clear_error(small_engine: Engine, at: int) -> None:
    """Inline bytes (no shard checksum in front of them) that rotted in the database: the zstd
    frame no longer parses or declares another size. Still a ChunkCorrupt naming the object
    and the chunk, queued for repair, not a zstandard.ZstdError or ValueError."""
    v = small_engine.put(iter([b"abcdefghij" * 90]), key="inline")
    cid = _zstd_chunk(small_engine, "inline")
    with small_engine.core.db.read() as conn:
        blob = bytearray(
            conn.execute(
                sa.select(chunks.c.inline_data).where(chunks.c.chunk_id == cid)
            ).scalar_one()
        )
    blob[at] ^= 0xFF
    with small_engine.core.db.write() as conn:
        conn.execute(sa.update(chunks).where(chunks.c.chunk_id == cid).values(inline_data=blob))
    _assert_clear_corruption(small_engine, v, cid)


@pytest.mark.parametrize("collected", [False, True], ids=["deleted", "deleted-and-collected"])
def test_a_version_deleted_while_it_is_read_ends_the_read_as_not_found(
    small_engine: Engine, monkeypatch, collected: bool
) -> None:
    """A download whose version is deleted meanwhile (its manifest rows go at once; with gc,
    its chunks' rows and files too) stops with ObjectNotFound saying so: not a ChunkUnreadable
    that reads like lost data, and no repair queued for the chunks gc took."""
    monkeypatch.setattr(objects_module, "MANIFEST_PAGE", 16)  # pages beyond the read-ahead
    data = random_bytes(2 * MiB, seed=9)
    v = small_engine.put(blocks_of(data), key="going")
    pieces = small_engine.objects.read(v)
    got = bytes(next(pieces))
    small_engine.objects.delete(v)
    if collected:
        assert gc.collect(small_engine, grace=0).chunks_deleted > 0
    with pytest.raises(ObjectNotFound, match="deleted while it was being read") as info:
        for piece in pieces:
            got += bytes(piece)
    assert f"{v.bucket}/{v.key}" in str(info.value)
    assert data.startswith(got) and len(got) < len(data)
    with small_engine.core.db.read() as conn:
        assert conn.execute(sa.select(repair_queue.c.chunk_id)).all() == []
    # Every read-ahead token is back: each such read used to keep one for good.
    assert small_engine.core.read_budget.free == small_engine.settings.read_ahead_budget_chunks


def test_manifest_pages_fetch_one_page_each(small_engine: Engine, monkeypatch) -> None:
    """Each manifest page is a query bounded by a LIMIT. Without it, PostgreSQL hands the
    client every remaining entry for every page: quadratic in the object's size (a 1 TB
    object has ~250k entries, re-sent ~1000 times)."""
    monkeypatch.setattr(objects_module, "MANIFEST_PAGE", 4)
    data = random_bytes(MiB, seed=10)
    v = small_engine.put(blocks_of(data), key="paged")
    queries: list[tuple[str, int]] = []  # (statement, rows sent: PostgreSQL; -1: SQLite)

    def count(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM manifests" in statement:
            queries.append((statement, cursor.rowcount))

    sa.event.listen(small_engine.core.db.engine, "after_cursor_execute", count)
    try:
        assert read_all(small_engine, v) == data
    finally:
        sa.event.remove(small_engine.core.db.engine, "after_cursor_execute", count)
    assert len(queries) > 2
    assert all("LIMIT" in q.upper() and rows <= 4 for q, rows in queries), [r for _, r in queries]
