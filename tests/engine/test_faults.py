"""Lost disks, bitrot and unwritable data dirs: read around what can be, refuse the rest clearly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.errors import ChunkUnreadable, StorageFull, StorageUnavailable
from edgestore.maintenance import gc
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, repair_queue, shards
from tests.helpers import (
    SMALL_CHUNKS,
    MiB,
    assert_no_partial_chunks,
    blocks_of,
    random_bytes,
    read_all,
)
from tests.mounts import mount_or_skip, tmpfs


def _dir_paths(engine: Engine) -> list[Path]:
    return [engine.core.dirs.backends[n].root for n in engine.core.dirs.names]


def _settle(engine: Engine, before: tuple[int, int]) -> None:
    """After a refused write: no partial rows, and gc returns the store to `before`."""
    assert_no_partial_chunks(engine)
    with engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []
    gc.collect(engine, grace=0)
    assert _counts(engine) == before


def _counts(engine: Engine) -> tuple[int, int]:
    with engine.core.db.read() as conn:
        return (
            conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(shards)).scalar_one(),
        )


@pytest.fixture
def stored(engine: Engine) -> tuple[Engine, bytes, object]:
    data = random_bytes(10 * MiB, seed=21) + b"compressible text " * 200_000
    return engine, data, engine.put(blocks_of(data, MiB), key="precious")


def test_m_lost_data_dirs_read_back_identical(stored, make_settings) -> None:
    engine, data, v = stored
    m = engine.settings.ec_m
    for path in _dir_paths(engine)[:m]:
        shutil.rmtree(path)
    with Engine.open(make_settings()) as reopened:  # as after a reboot with 3 disks gone
        assert len(reopened.core.dirs.unavailable) == m
        assert read_all(reopened, v) == data
        with reopened.core.db.read() as conn:
            queued = conn.execute(sa.select(sa.func.count()).select_from(repair_queue)).scalar_one()
        assert queued > 0  # every chunk read around a lost shard is queued for repair


def test_more_than_m_lost_is_a_clear_error(stored) -> None:
    engine, _data, v = stored
    for path in _dir_paths(engine)[: engine.settings.ec_m + 1]:
        shutil.rmtree(path)
    with pytest.raises(ChunkUnreadable) as info:
        read_all(engine, v)
    msg = str(info.value)
    assert "default/precious" in msg and v.object_id in msg and "chunk " in msg


def test_flipped_shard_byte_is_detected_and_read_around(stored) -> None:
    engine, data, v = stored
    with engine.core.db.read() as conn:
        row = conn.execute(
            sa.select(shards.c.chunk_id, shards.c.backend, shards.c.key, shards.c.shard_index)
            .where(shards.c.shard_index == 0)
            .limit(1)
        ).one()
    path = engine.core.dirs.backends[row.backend].root / row.key
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    assert read_all(engine, v) == data
    with engine.core.db.read() as conn:
        q = conn.execute(
            sa.select(repair_queue.c.bad_shards, repair_queue.c.reason).where(
                repair_queue.c.chunk_id == row.chunk_id
            )
        ).one()
    assert q.bad_shards == [0] and "checksum" in q.reason


def test_corrupting_m_plus_one_shards_never_returns_wrong_bytes(stored) -> None:
    engine, _data, v = stored
    with engine.core.db.read() as conn:
        cid = conn.execute(
            sa.select(chunks.c.chunk_id).where(chunks.c.layout == "ec").limit(1)
        ).scalar_one()
        rows = conn.execute(sa.select(shards).where(shards.c.chunk_id == cid)).all()
    for r in rows[: engine.settings.ec_m + 1]:
        p = engine.core.dirs.backends[r.backend].root / r.key
        blob = bytearray(p.read_bytes())
        blob[-1] ^= 0xFF
        p.write_bytes(bytes(blob))
    with pytest.raises(ChunkUnreadable, match=cid):
        read_all(engine, v)


def test_missing_data_dir_refuses_writes_cleanly(stored, make_settings) -> None:
    engine, data, v = stored
    before = _counts(engine)
    shutil.rmtree(_dir_paths(engine)[4])
    with Engine.open(make_settings()) as reopened:
        with pytest.raises(StorageUnavailable, match="missing"):
            reopened.put(blocks_of(random_bytes(3 * MiB, seed=3)), key="new")
        assert _counts(reopened) == before
        assert read_all(reopened, v) == data
        with reopened.core.db.read() as conn:
            assert reference_mismatches(conn) == []
            assert not conn.execute(
                sa.text("select count(*) from uploads where state='open'")
            ).scalar()


def test_read_only_data_dir_refuses_writes_cleanly(tmp_path, make_settings) -> None:
    with Engine.open(make_settings(**SMALL_CHUNKS)) as engine:
        data = random_bytes(2 * MiB, seed=8)
        v = engine.put(blocks_of(data), key="kept")
        before = _counts(engine)
        target = _dir_paths(engine)[2]
        mount_or_skip(["--bind", "-o", "ro", str(target), str(target)])
        try:
            with pytest.raises(StorageUnavailable, match="not writable"):
                engine.put(blocks_of(random_bytes(2 * MiB, seed=9)), key="new")
            assert_no_partial_chunks(engine)
            subprocess.run(["umount", str(target)], check=True)
            _settle(engine, before)
            assert read_all(engine, v) == data
        finally:
            subprocess.run(["umount", str(target)], check=False)


def test_full_data_dir_refuses_writes_cleanly(tmp_path, make_settings) -> None:
    with tmpfs(tmp_path / "small-disk", "512k") as small:
        dirs = [tmp_path / f"disk{i}" for i in range(8)] + [small]
        with Engine.open(make_settings(data_dirs=dirs, **SMALL_CHUNKS)) as engine:
            v = engine.put(iter([b"small object " * 1000]), key="kept")
            before = _counts(engine)
            with pytest.raises(StorageFull, match="full"):
                engine.put(blocks_of(random_bytes(8 * MiB, seed=10)), key="too-big")
            _settle(engine, before)
            assert read_all(engine, v) == b"small object " * 1000
            assert not [b for b in engine.core.dirs.backends["d8"].list() if b.key.endswith(".tmp")]


def test_data_dir_unmounted_under_a_running_store_refuses_writes(small_engine, tmp_path) -> None:
    """An empty mount point left where a disk was: a chunk acknowledged then must not have
    shards that vanish when the disk is mounted again (invariant 2)."""
    engine = small_engine
    data = random_bytes(1 * MiB, seed=11)
    v = engine.put(blocks_of(data), key="before")
    root = _dir_paths(engine)[3]
    root.rename(tmp_path / "unmounted")
    root.mkdir()
    try:
        with pytest.raises(StorageUnavailable, match="marker"):
            engine.put(blocks_of(random_bytes(1 * MiB, seed=12)), key="during")
    finally:
        shutil.rmtree(root)
        (tmp_path / "unmounted").rename(root)  # the disk mounted again
    assert_no_partial_chunks(engine)
    assert read_all(engine, v) == data
