"""Content-addressed dedup: identical bytes are stored once, edits re-store only their chunks."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.engine.dedup import RedundancyPolicy
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, shards
from tests.helpers import SMALL_CHUNKS, MiB, blocks_of, random_bytes, read_all


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
