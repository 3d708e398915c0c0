"""Content-addressed dedup: identical bytes are stored once, edits re-store only their chunks."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.engine.dedup import RedundancyPolicy
from edgestore.errors import ChunkUnreadable
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, repair_queue, shards
from tests.helpers import SMALL_CHUNKS, MiB, blocks_of, random_bytes, read_all
from tests.shards import shard_paths


def _chunk_rows(engine: Engine) -> int:
    with engine.core.db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one()


def _shard_files(engine: Engine) -> int:
    return sum(1 for b in engine.core.dirs.backends.values() for _ in b.list())


def test_same_file_twice_is_stored_once(engine: Engine) -> None:
    data = random_bytes(20 * MiB, seed=1)
    new_chunks: list[bool] = []
    engine.put(blocks_of(data, MiB), key="a", on_chunk=lambda c: new_chunks.append(c.is_new))
    rows, files = _chunk_rows(engine), _shard_files(engine)
    assert all(new_chunks) and rows == len(new_chunks) >= 3
    again: list[bool] = []
    v2 = engine.put(
        blocks_of(data, 3 * MiB + 7), key="b", on_chunk=lambda c: again.append(c.is_new)
    )
    assert not any(again) and len(again) == rows
    assert (_chunk_rows(engine), _shard_files(engine)) == (rows, files)
    assert read_all(engine, v2) == data
    usage = engine.objects.usage()
    assert usage.logical_bytes == 2 * len(data) and usage.unique_bytes == len(data)
    assert abs(usage.dedup_ratio - 2.0) < 1e-9


def test_insert_in_the_middle_restores_only_nearby_chunks(engine: Engine) -> None:
    data = random_bytes(40 * MiB, seed=2)
    v1 = engine.put(blocks_of(data, MiB), key="orig")
    n1 = len(engine.objects.manifest(v1))
    edited = data[: 20 * MiB] + random_bytes(1 * MiB, seed=99) + data[20 * MiB :]
    flags: list[bool] = []
    v2 = engine.put(blocks_of(edited, MiB), key="edited", on_chunk=lambda c: flags.append(c.is_new))
    assert read_all(engine, v2) == edited
    # the edit touches the chunk it lands in (and maybe its neighbour); the rest dedups
    assert 1 <= sum(flags) <= 3, f"{sum(flags)} new chunks of {len(flags)}"
    assert len(flags) >= n1 - 1


def test_concurrent_ingests_of_the_same_data_store_each_chunk_once(tmp_path, pg_url: str) -> None:
    """Two stores (as two server nodes) on one PostgreSQL, racing on identical new chunks."""
    home = tmp_path / "home"
    data = random_bytes(4 * MiB, seed=5)
    settings = load_settings(home=home, database_url=pg_url, **SMALL_CHUNKS)
    Engine.open(settings).close()  # create the store and its data dirs once
    engines = [Engine.open(settings) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            engines[i].put(blocks_of(data, 64 * 1024), key=f"k{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        eng = engines[0]
        with eng.core.db.read() as conn:
            n_chunks = conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one()
            dup = conn.execute(
                sa.select(shards.c.chunk_id, shards.c.shard_index)
                .group_by(shards.c.chunk_id, shards.c.shard_index)
                .having(sa.func.count() > 1)
            ).all()
            assert reference_mismatches(conn) == []
        v = eng.objects.list()
        assert len(v) == 4 and all(read_all(eng, x) == data for x in v)
        unique = len({c.chunk_id for c in eng.objects.manifest(v[0])})
        assert n_chunks == unique and dup == []
        # losers of the race removed their duplicate shard files: one set per chunk
        referenced = sum(1 for b in eng.core.dirs.backends.values() for _ in b.list())
        with eng.core.db.read() as conn:
            n_shards = conn.execute(sa.select(sa.func.count()).select_from(shards)).scalar_one()
        assert referenced == n_shards
    finally:
        for e in engines:
            e.close()


@pytest.mark.parametrize(
    ("overrides", "dirs", "survived"),
    [
        ({}, 9, None),
        ({}, 8, 2),  # one dir holds two of a chunk's nine shards
        ({}, 4, 1),
        ({}, 2, 0),  # 6+3 over two dirs: either dir lost loses every chunk
        ({"redundancy": "replication"}, 3, None),
        ({"redundancy": "replication"}, 2, 1),
        ({"ec_k": 2, "ec_m": 1, "small_chunk_max_bytes": 0}, 3, None),
    ],
)
def test_fewer_data_dirs_than_shards_is_warned(overrides, dirs, survived, tmp_path) -> None:
    """Shards of a chunk then share dirs and m no longer says what can be lost: the start
    says what can."""
    policy = RedundancyPolicy(load_settings(home=tmp_path, **overrides))
    warning = policy.dirs_warning(dirs)
    if survived is None:
        assert warning is None
    else:
        assert warning is not None and f"survive losing {survived} data dir(s)" in warning


def _queued(engine: Engine) -> list[str]:
    with engine.core.db.read() as conn:
        return list(conn.execute(sa.select(repair_queue.c.chunk_id)).scalars())


@pytest.mark.parametrize("lost", ["m", "m+1"])
def test_uploading_a_damaged_chunk_again_makes_it_whole(engine: Engine, lost: str) -> None:
    """A chunk found with shards missing (queued for repair) is not a plain dedup hit: the
    bytes uploaded now are that chunk (same SHA-256), so they are stored again and the
    chunk made whole; with more than m shards lost, this is what brings it back at all."""
    data = random_bytes(6 * MiB, seed=61)
    v1 = engine.put(blocks_of(data, MiB), key="first")
    cid = engine.objects.manifest(v1)[0].chunk_id
    paths = shard_paths(engine, cid)
    for path in paths[: engine.settings.ec_m + (lost == "m+1")]:
        path.unlink()
    if lost == "m":
        assert read_all(engine, v1) == data  # read around, and queued
    else:
        with pytest.raises(ChunkUnreadable):
            read_all(engine, v1)
    assert _queued(engine) == [cid]
    seen: list[tuple[str, bool, int, bool]] = []
    engine.put(
        blocks_of(data, MiB),
        key="again",
        on_chunk=lambda c: seen.append((c.chunk_id, c.is_new, c.stored_size, c.healed)),
    )
    restored = [s for s in seen if s[0] == cid]
    assert restored and not restored[0][1] and restored[0][2] > 0 and restored[0][3]
    # The others are plain dedup hits (and not healed: /metrics counted a healed chunk as one).
    assert all(stored == 0 and not healed for c, _new, stored, healed in seen if c != cid)
    assert _queued(engine) == []
    fresh = shard_paths(engine, cid)
    assert len(fresh) == len(paths) and all(p.exists() for p in fresh)
    assert not set(fresh) & set(paths)  # new files; the old ones are gc's orphans
    assert read_all(engine, v1) == data and _queued(engine) == []
    with engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_a_damaged_chunk_is_stored_again_once(small_engine: Engine) -> None:
    """Two uploads bringing the same damaged chunk at once: one replaces its shards, the
    other finds it whole (no shard files left behind by the loser)."""
    data = random_bytes(200 * 1024, seed=62)
    v1 = small_engine.put([data], key="one")
    cid = small_engine.objects.manifest(v1)[0].chunk_id
    old = shard_paths(small_engine, cid)
    old[0].unlink()
    read_all(small_engine, v1)
    assert _queued(small_engine) == [cid]
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def put(i: int) -> None:
        try:
            start.wait()
            small_engine.put([data], key=f"again-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and _queued(small_engine) == []
    known = {p for c in _all_chunks(small_engine) for p in shard_paths(small_engine, c)}
    on_disk = {
        b.root / blob.key for b in small_engine.core.dirs.backends.values() for blob in b.list()
    }
    assert known <= on_disk  # every shard the index names exists
    # Unknown files: the damaged chunk's surviving old shards only, none of a losing writer.
    assert len(on_disk - known) == len(old) - 1


def _all_chunks(engine: Engine) -> list[str]:
    with engine.core.db.read() as conn:
        return list(conn.execute(sa.select(chunks.c.chunk_id)).scalars())
