"""ChunkReader: a chunk's shards are read together, and parity fills in for what is lost."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.errors import ChunkCorrupt
from edgestore.metadata.schema import chunks, repair_queue, shards
from tests.helpers import MiB, blocks_of, random_bytes, read_all


def _spy_gets(engine: Engine, monkeypatch: pytest.MonkeyPatch, wrap: Any) -> None:
    """Route every shard read through wrap(real_get, key)."""
    for backend in engine.core.dirs.backends.values():
        real = backend.get

        def get(key: str, real: Any = real) -> bytes:
            return wrap(real, key)  # type: ignore[no-any-return]

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
