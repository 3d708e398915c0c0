"""Repair in place: only a damaged chunk's bad shards are written again, under its own
generation, each to its own data dir where it can take it (a replaced disk), else to another;
the chunk is stored again as a whole only where the rebuilt shards would not match the rest."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

import sqlalchemy as sa

from edgestore.codec.hashing import chunk_id as compute_chunk_id
from edgestore.engine import Engine
from edgestore.maintenance import repair
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.schema import chunks, repair_queue, shards
from edgestore.storage.placement import shard_key
from tests.conftest import SettingsFactory
from tests.helpers import SMALL_CHUNKS, MiB, blocks_of, random_bytes, read_all
from tests.mounts import fill, tmpfs
from tests.shards import shard_paths, shard_rows, unlike_a_rebuild


def _files(engine: Engine) -> dict[tuple[str, int], Path]:
    """The file of every shard row, by (chunk id, shard index)."""
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(shards.c.chunk_id, shards.c.shard_index, shards.c.backend, shards.c.key)
        ).all()
    return {(r[0], r[1]): engine.core.dirs.backends[r[2]].root / r[3] for r in rows}


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _generations(engine: Engine) -> dict[str, str]:
    with engine.core.db.read() as conn:
        return dict(conn.execute(sa.select(chunks.c.chunk_id, chunks.c.generation)).all())


def _queued(engine: Engine) -> list[str]:
    with engine.core.db.read() as conn:
        return list(conn.execute(sa.select(repair_queue.c.chunk_id)).scalars())


def _stored(engine: Engine, seed: int, size: int) -> tuple[bytes, list[str]]:
    data = random_bytes(size, seed=seed)
    v = engine.put(blocks_of(data, MiB), key=f"obj-{seed}")
    return data, sorted({e.chunk_id for e in engine.objects.manifest(v)})


def test_only_the_bad_shard_files_are_written_again(small_engine: Engine) -> None:
    """One file deleted, one corrupt: each is rebuilt at its own path (the corrupt one
    replaced by a new file), every other file of the store untouched, the generation kept."""
    engine = small_engine
    data, ids = _stored(engine, seed=1, size=MiB)
    lost, rotten = ids[0], ids[1]
    files = _files(engine)
    files[(lost, 3)].unlink()
    blob = bytearray(files[(rotten, 7)].read_bytes())
    blob[-1] ^= 1
    files[(rotten, 7)].write_bytes(bytes(blob))
    untouched = {s: _identity(p) for s, p in files.items() if s not in ((lost, 3), (rotten, 7))}
    rotten_was = _identity(files[(rotten, 7)])
    generations = _generations(engine)
    assert repair.scrub(engine).chunks_damaged == 2

    report = repair.repair(engine)
    assert (report.repaired, report.errors, report.unrecoverable) == (2, 0, [])
    assert report.bytes_rewritten == files[(lost, 3)].stat().st_size + len(blob)
    assert _files(engine) == files  # the same dirs and keys
    assert {s: _identity(p) for s, p in files.items() if s in untouched} == untouched
    assert files[(lost, 3)].exists() and _identity(files[(rotten, 7)]) != rotten_was
    assert _generations(engine) == generations and _queued(engine) == []
    assert repair.scrub(engine).chunks_damaged == 0
    assert read_all(engine, engine.objects.list()[0]) == data


def test_a_shard_of_a_dir_gone_is_rebuilt_on_a_dir_with_none_of_the_chunk(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """A data dir gone and not replaced: `edgestore repair` rebuilds its shards on the other
    dirs, on one holding no shard of the chunk if there is one; reads need the gone dir no
    more, and a reader holding the record from before neither fails nor queues it again."""
    settings = make_settings(data_dirs=[tmp_path / f"disk{i}" for i in range(10)])
    with Engine.open(settings) as engine:
        data, (cid,) = _stored(engine, seed=2, size=2 * MiB)
        rows = shard_rows(engine, cid)
        assert len(rows) == 9
        (spare,) = set(engine.core.dirs.names) - {b for _i, b, _k in rows}
        gone = rows[4][1]
        gone_root = engine.core.dirs.backends[gone].root
    shutil.rmtree(gone_root)
    with Engine.open(settings) as engine:
        assert gone not in engine.core.dirs.backends  # (opened as an unclaimed dir)
        with engine.core.db.read() as conn:
            held = chunk_index.load(conn, [cid])[cid]
        assert repair.scrub(engine).chunks_damaged == 1
        report = repair.repair(engine)
        assert (report.repaired, report.errors) == (1, 0)
        moved = shard_rows(engine, cid)
        assert moved[4] == (4, spare, rows[4][2])
        assert moved[:4] + moved[5:] == rows[:4] + rows[5:]
        assert repair.scrub(engine).chunks_damaged == 0
        assert read_all(engine, engine.objects.list()[0]) == data
        assert engine.core.reader.read(held) == data  # reads around the gone dir's shard
        assert _queued(engine) == []


def test_after_a_disk_is_replaced_repair_needs_room_only_on_it(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """A disk lost and replaced on a store whose other disks are full: storing each chunk
    again (a new generation on every disk) failed for lack of room ("full"); rebuilding only
    the lost shards onto the new disk needs none elsewhere, by hand and in the upkeep."""
    paths = [tmp_path / f"disk{i}" for i in range(9)]
    settings = make_settings(data_dirs=paths, **SMALL_CHUNKS)
    with ExitStack() as mounts:
        for path in paths[1:]:
            mounts.enter_context(tmpfs(path, "4m"))
        with tmpfs(paths[0], "4m"), Engine.open(settings) as engine:
            data, ids = _stored(engine, seed=3, size=MiB)
            generations = _generations(engine)
            files = _files(engine)
            name = next(n for n, b in engine.core.dirs.backends.items() if b.root == paths[0])
        # The first disk is lost with its shards; an empty one is mounted in its place, and
        # the others have no room left.
        mounts.enter_context(tmpfs(paths[0], "4m"))
        for path in paths[1:]:
            fill(path, leave=0)
        with Engine.open(settings, initialise_dirs=True) as engine:
            assert engine.core.dirs.backends[name].root == paths[0]
            assert repair.scrub(engine).chunks_damaged == len(ids)
            lost = {s: p for s, p in files.items() if p.is_relative_to(paths[0])}
            kept = {s: _identity(p) for s, p in files.items() if s not in lost}
            by_hand = repair.repair(engine, limit=1)
            assert (by_hand.repaired, by_hand.errors) == (1, 0)
            upkeep = repair.repair(
                engine, limit=len(ids), cursor=repair.RepairCursor(), due_only=True
            )
            assert upkeep.paused is None and upkeep.errors == 0
            assert upkeep.repaired == len(ids) - 1 and _queued(engine) == []
            assert _files(engine) == files and _generations(engine) == generations
            assert all(p.exists() for p in lost.values())
            assert {s: _identity(p) for s, p in files.items() if s in kept} == kept
            assert by_hand.bytes_rewritten + upkeep.bytes_rewritten == sum(
                p.stat().st_size for p in lost.values()
            )
            assert repair.scrub(engine).chunks_damaged == 0
            assert read_all(engine, engine.objects.list()[0]) == data


def test_rebuilt_shards_that_would_not_match_the_rest_store_the_chunk_again(
    engine: Engine,
) -> None:
    """A shard row kept (not bad) whose bytes the rebuild does not reproduce (here: shard 8
    laid out otherwise, its file and row agreeing, as another encoder would leave them):
    mixing a rebuilt shard 0 with it is refused; the chunk is stored again as a whole."""
    data, (cid,) = _stored(engine, seed=4, size=2 * MiB)
    shard_paths(engine, cid)[0].unlink()
    unlike_a_rebuild(engine, cid, 8)
    generation = _generations(engine)[cid]
    assert repair.scrub(engine).chunks_damaged == 1  # shard 0 only: shard 8 checks out
    report = repair.repair(engine)
    assert report.repaired == 1
    assert _generations(engine)[cid] != generation
    # The shard files written, headers and all, as on the in-place path.
    assert report.bytes_rewritten == sum(p.stat().st_size for p in shard_paths(engine, cid))
    assert [k for _i, _b, k in shard_rows(engine, cid)] == [
        shard_key(cid, _generations(engine)[cid], i) for i in range(9)
    ]
    assert repair.scrub(engine).chunks_damaged == 0
    assert read_all(engine, engine.objects.list()[0]) == data


def test_a_bad_shard_whose_own_dir_is_full_goes_to_another_and_its_old_file_goes(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """A corrupt shard on a full data dir is rebuilt on a dir holding none of the chunk, and
    its corrupt file deleted at once (no row names it); a reader holding the record from
    before reads around it and does not queue the chunk again."""
    paths = [tmp_path / f"disk{i}" for i in range(10)]
    settings = make_settings(data_dirs=paths, **SMALL_CHUNKS)
    with tmpfs(paths[0], "4m"), Engine.open(settings) as engine:
        data, _ids = _stored(engine, seed=5, size=MiB)
        files = _files(engine)
        on_full = next(  # a data shard: the held record's read needs it
            s for s, p in files.items() if p.is_relative_to(paths[0]) and s[1] < 6
        )
        cid, index = on_full
        rows = shard_rows(engine, cid)
        (spare,) = set(engine.core.dirs.names) - {b for _i, b, _k in rows}
        with engine.core.db.read() as conn:
            held = chunk_index.load(conn, [cid])[cid]
        blob = bytearray(files[on_full].read_bytes())
        blob[-1] ^= 1
        files[on_full].write_bytes(bytes(blob))
        fill(paths[0], leave=0)
        assert repair.scrub(engine).chunks_damaged == 1
        report = repair.repair(engine)
        assert (report.repaired, report.errors, report.bytes_rewritten) == (1, 0, len(blob))
        assert shard_rows(engine, cid)[index] == (index, spare, rows[index][2])
        assert not files[on_full].exists()
        assert _queued(engine) == [] and repair.scrub(engine).chunks_damaged == 0
        assert compute_chunk_id(engine.core.reader.read(held)) == cid
        assert _queued(engine) == []
        assert read_all(engine, engine.objects.list()[0]) == data


def test_a_shard_moved_off_a_full_dir_does_not_join_another_bad_shard_on_its_dir(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """Shard 1 corrupt on a full dir, shard 4 lost from a dir with room for one file: shard
    4 is rebuilt on its own dir and shard 1 on the spare dir. Counting only the intact
    shards' dirs, both went to shard 4's dir (the first of the dirs holding none), two
    shards of the chunk on one disk, and the second write found no room: never repaired."""
    paths = [tmp_path / f"disk{i}" for i in range(10)]
    settings = make_settings(data_dirs=paths)
    with ExitStack() as mounts:
        for path in paths:
            mounts.enter_context(tmpfs(path, "4m"))
        with Engine.open(settings) as engine:
            data, (cid,) = _stored(engine, seed=6, size=2 * MiB)
            rows = shard_rows(engine, cid)
            (spare,) = set(engine.core.dirs.names) - {b for _i, b, _k in rows}
            files = shard_paths(engine, cid)
            blob = bytearray(files[1].read_bytes())
            blob[-1] ^= 1
            files[1].write_bytes(bytes(blob))
            files[4].unlink()
            fill(files[1].parent.parent, leave=0)
            fill(files[4].parent.parent, leave=len(blob) * 3 // 2)
            assert repair.scrub(engine).chunks_damaged == 1
            report = repair.repair(engine)
            assert (report.repaired, report.errors) == (1, 0)
            moved = shard_rows(engine, cid)
            assert moved[1] == (1, spare, rows[1][2]) and moved[4] == rows[4]
            assert files[4].exists() and not files[1].exists()
            assert _queued(engine) == [] and repair.scrub(engine).chunks_damaged == 0
            assert read_all(engine, engine.objects.list()[0]) == data
