"""ChunkReader: a chunk's shards are read together, and parity fills in for what is lost."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.metadata.schema import shards
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
