"""Garbage collection beside work in progress: chunks being written, sessions pinning chunks
gc is deleting, data dirs that are no longer the disks they were."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.engine.dedup import ChunkWriter
from edgestore.engine.native import ManifestChunk
from edgestore.maintenance import gc
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import garbage
from edgestore.metadata.clock import now
from edgestore.metadata.schema import chunks, shards
from tests.helpers import SMALL_CHUNKS, MiB, blocks_of, random_bytes, read_all
from tests.races import wait_until_blocked


def _shard_files(engine: Engine) -> set[tuple[str, str]]:
    return {(n, b.key) for n, be in engine.core.dirs.backends.items() for b in be.list()}


def _age_all_files(engine: Engine, seconds: float) -> None:
    old = time.time() - seconds
    for backend in engine.core.dirs.backends.values():
        for blob in backend.list():
            os.utime(backend.root / blob.key, (old, old))


def test_the_sweep_spares_the_shards_of_a_chunk_being_written(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's files exist before its row (the row is the commit point): a sweep between
    the two must not take them, or the row commits pointing at missing shards and the
    acknowledged bytes are unreadable. `gc --grace 0` included: its files are seconds old."""
    data = random_bytes(1 * MiB, seed=21)
    real = ChunkWriter._write_shards
    swept: list[gc.GcReport] = []

    def write_shards(self: ChunkWriter, prep: Any) -> Any:
        refs = real(self, prep)
        if not swept:  # the first chunk: written and flushed, its row not inserted yet
            swept.append(gc.collect(small_engine, grace=0))
        return refs

    monkeypatch.setattr(ChunkWriter, "_write_shards", write_shards)
    up = small_engine.uploads.create(length=len(data), bucket="b", key="k")
    done = small_engine.uploads.append(up.upload_id, 0, blocks_of(data))
    assert done.version_id is not None and swept
    info = small_engine.objects.by_version_id(done.version_id)
    assert read_all(small_engine, info) == data
    assert swept[0].orphan_files_deleted == 0 and swept[0].chunks_deleted == 0


def test_the_sweep_leaves_a_data_dir_that_is_no_longer_its_disk(small_engine: Engine) -> None:
    """Two disks swapped under a running server (d0's mount point now holds d1's disk): every
    shard there is unknown under d0's name. The sweep must not take them as orphans."""
    data = random_bytes(1 * MiB, seed=22)
    info = small_engine.put(blocks_of(data), key="x")
    _age_all_files(small_engine, 7200)
    before = _shard_files(small_engine)
    d0, d1 = small_engine.core.dirs.backends["d0"].root, small_engine.core.dirs.backends["d1"].root
    spare = d0.with_name("swap")
    d0.rename(spare)
    d1.rename(d0)
    spare.rename(d1)
    report = gc.collect(small_engine, grace=3600)
    d1.rename(spare)
    d0.rename(d1)
    spare.rename(d0)
    assert report.orphan_files_deleted == 0
    assert _shard_files(small_engine) == before
    assert read_all(small_engine, info) == data


@pytest.mark.parametrize("call", ["missing", "finalize"])
def test_pinning_a_chunk_gc_is_deleting_reports_it_missing(
    tmp_path: Path, pg_url: str, call: str
) -> None:
    """PostgreSQL: a native session asks about a chunk whose row gc is deleting (unreferenced
    past its grace) and has not committed yet. The pin must wait and find the chunk gone (so
    the client sends it), not fail on the foreign key with a 500."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        data = random_bytes(200 * 1024, seed=23)
        old = engine.put(blocks_of(data), key="old")
        engine.objects.delete(old)
        with engine.core.db.read() as conn:
            cid, size = conn.execute(sa.select(chunks.c.chunk_id, chunks.c.raw_size)).first()
        with engine.core.db.write() as conn:
            conn.execute(sa.update(chunks).values(zero_since=1.0))  # long unreferenced
        session = engine.native.create(size=size, key="new")
        result: list[Any] = []
        errors: list[BaseException] = []

        def ask() -> None:
            try:
                if call == "missing":
                    result.append(engine.native.missing(session.upload_id, [cid]))
                else:
                    engine.native.finalize(session.upload_id, [ManifestChunk(cid, size)], "0" * 64)
            except BaseException as exc:
                errors.append(exc)

        with engine.core.db.write() as conn:  # gc has deleted the row, not yet committed
            assert cid in garbage.delete_unreferenced(conn, [cid], now(conn))
            t = threading.Thread(target=ask)
            t.start()
            wait_until_blocked(engine)
        t.join(10)
        assert not t.is_alive()
        if call == "missing":
            assert errors == [] and result == [[cid]]
        else:
            assert [type(e).__name__ for e in errors] == ["MissingChunks"], errors
        with engine.core.db.read() as conn:
            assert chunk_index.reference_mismatches(conn) == []
            assert conn.execute(sa.select(shards).where(shards.c.chunk_id == cid)).all() == []
