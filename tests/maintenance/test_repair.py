"""Scrub finds every damaged shard (reads see only the ones they need); repair makes damaged
chunks whole from their intact shards, leaves intact ones alone and names the lost ones."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.engine.read import Examined
from edgestore.errors import ChunkCorrupt
from edgestore.maintenance import gc, repair
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks, repair_queue, shards
from tests.helpers import SMALL_CHUNKS, MiB, blocks_of, random_bytes, read_all
from tests.shards import unlike_a_rebuild


def _shards(engine: Engine, cid: str | None = None) -> list[tuple[str, int, Path]]:
    """(chunk id, shard index, file) of every shard the index names (of one chunk)."""
    q = sa.select(shards.c.chunk_id, shards.c.shard_index, shards.c.backend, shards.c.key)
    if cid is not None:
        q = q.where(shards.c.chunk_id == cid)
    with engine.core.db.read() as conn:
        rows = conn.execute(q.order_by(shards.c.chunk_id, shards.c.shard_index)).all()
    return [(r[0], r[1], engine.core.dirs.backends[r[2]].root / r[3]) for r in rows]


def _queued(engine: Engine) -> dict[str, list[int]]:
    with engine.core.db.read() as conn:
        rows = conn.execute(sa.select(repair_queue.c.chunk_id, repair_queue.c.bad_shards))
        return {r[0]: sorted(r[1]) for r in rows}


def _generations(engine: Engine) -> dict[str, str]:
    with engine.core.db.read() as conn:
        rows = conn.execute(sa.select(chunks.c.chunk_id, chunks.c.generation)).all()
    return {r[0]: r[1] for r in rows}


def _stored(engine: Engine, seed: int, size: int = 6 * MiB) -> tuple[bytes, list[str]]:
    data = random_bytes(size, seed=seed)
    v = engine.put(blocks_of(data, MiB), key=f"obj-{seed}")
    return data, [e.chunk_id for e in engine.objects.manifest(v)]


def test_scrub_finds_a_lost_parity_shard_that_reads_never_see(engine: Engine) -> None:
    data, ids = _stored(engine, seed=1)
    cid = ids[0]
    parity = _shards(engine, cid)[-1]
    parity[2].unlink()
    assert read_all(engine, engine.objects.list()[0]) == data
    assert _queued(engine) == {}  # the read needed only the data shards
    report = repair.scrub(engine)
    assert report.chunks_checked == len(set(ids)) and report.chunks_damaged == 1
    assert report.bad_shards == 1 and _queued(engine) == {cid: [parity[1]]}


def test_repair_makes_damaged_chunks_whole(engine: Engine) -> None:
    data, ids = _stored(engine, seed=2)
    lost = [s for s in _shards(engine) if s[1] in (0, 8)]  # shards 0 and 8 of every chunk
    for _cid, _i, path in lost:
        path.unlink()
    flipped = _shards(engine, ids[1])[3][2]
    blob = bytearray(flipped.read_bytes())
    blob[-1] ^= 1
    flipped.write_bytes(bytes(blob))
    assert repair.scrub(engine).chunks_damaged == len(set(ids))
    report = repair.repair(engine)
    assert report.queued == report.repaired == len(set(ids))
    assert report.unrecoverable == [] and report.bytes_rewritten > 0
    assert _queued(engine) == {}
    assert all(path.exists() for _c, _i, path in _shards(engine))
    again = repair.scrub(engine)
    assert again.chunks_checked == len(set(ids)) and again.chunks_damaged == 0
    assert read_all(engine, engine.objects.list()[0]) == data
    with engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_a_chunk_whose_shards_are_back_leaves_the_queue_untouched(engine: Engine) -> None:
    """A data dir offline during a scrub, back before the repair: nothing is rewritten."""
    _data, ids = _stored(engine, seed=3, size=2 * MiB)
    _cid, _i, path = _shards(engine, ids[0])[4]
    aside = path.with_name(path.name + ".away")
    path.rename(aside)
    assert repair.scrub(engine).chunks_damaged == 1
    aside.rename(path)
    before = [(p, p.stat().st_mtime_ns) for _c, _i, p in _shards(engine)]
    report = repair.repair(engine)
    assert (report.intact, report.repaired, report.bytes_rewritten) == (1, 0, 0)
    assert _queued(engine) == {}
    assert [(p, p.stat().st_mtime_ns) for _c, _i, p in _shards(engine)] == before


def test_a_chunk_with_fewer_than_k_shards_is_named_and_stays_queued(engine: Engine) -> None:
    data, ids = _stored(engine, seed=4, size=2 * MiB)
    for _cid, _i, path in _shards(engine, ids[0])[:4]:  # m + 1 of 6+3
        path.unlink()
    repair.scrub(engine)
    report = repair.repair(engine)
    assert report.unrecoverable == [ids[0]] and report.repaired == 0
    assert list(_queued(engine)) == [ids[0]]
    engine.put(blocks_of(data, MiB), key="the same bytes again")  # what brings it back
    assert _queued(engine) == {}
    assert read_all(engine, engine.objects.list()[0]) == data


def test_a_round_with_a_cursor_takes_turns(small_engine: Engine) -> None:
    """The server's upkeep repairs a few chunks per round, going on where the last stopped,
    so one that cannot be repaired does not hold up the rest."""
    engine = small_engine
    _data, ids = _stored(engine, seed=5, size=MiB)
    chunk_ids = sorted(set(ids))
    assert len(chunk_ids) >= 3
    for cid in chunk_ids:
        files = _shards(engine, cid)
        for _c, _i, path in files[: len(files) if cid == chunk_ids[0] else 1]:
            path.unlink()
    repair.scrub(engine)
    cursor = repair.RepairCursor()
    first = repair.repair(engine, limit=1, cursor=cursor)
    assert first.unrecoverable == [chunk_ids[0]] and cursor.after == chunk_ids[0]
    rest = repair.repair(engine, limit=len(chunk_ids), cursor=cursor)
    assert rest.repaired == len(chunk_ids) - 1 and cursor.after is None
    assert list(_queued(engine)) == [chunk_ids[0]]


def test_a_lost_disk_is_replaced_then_scrubbed_and_repaired(make_settings) -> None:
    """A disk gone for good: every chunk had a shard on it. Until it is replaced the
    server's upkeep leaves the queue alone (the dir may come back); once an empty disk is
    claimed (`edgestore init`, the same name), scrub queues every chunk and repair writes
    each lost shard to it again, and nothing else (the other files and the generation kept)."""
    settings = make_settings()
    with Engine.open(settings) as engine:
        data, ids = _stored(engine, seed=6, size=12 * MiB)
        gone = next(iter(engine.core.dirs.backends))
        root = engine.core.dirs.backends[gone].root
        generations = _generations(engine)
    shutil.rmtree(root)
    with Engine.open(settings) as engine:
        assert repair.scrub(engine).chunks_damaged == len(set(ids))
        upkeep = repair.repair(engine, limit=100, cursor=repair.RepairCursor(), due_only=True)
        assert upkeep.queued == 0 and upkeep.paused is not None
        assert len(_queued(engine)) == len(set(ids))
    root.mkdir()  # the replacement disk, mounted where the old one was
    with Engine.open(settings, initialise_dirs=True) as engine:
        assert engine.core.dirs.unavailable == {} and gone in engine.core.dirs.backends
        kept = {p: p.stat().st_ino for _c, _i, p in _shards(engine) if p.parent.parent != root}
        report = repair.repair(engine)
        assert report.repaired == len(set(ids)) and report.unrecoverable == []
        assert _queued(engine) == {}
        written = [p for _c, _i, p in _shards(engine) if p.parent.parent == root]
        assert len(written) == len(set(ids)) and all(p.exists() for p in written)
        assert report.bytes_rewritten == sum(p.stat().st_size for p in written)
        assert {p: p.stat().st_ino for p in kept} == kept
        assert _generations(engine) == generations
        assert repair.scrub(engine).chunks_damaged == 0
        assert read_all(engine, engine.objects.list()[0]) == data


def test_a_reader_holding_the_old_record_reads_the_new_shards(engine: Engine) -> None:
    """A long download loaded its chunk records a page ahead; repair stored a chunk again
    (a new generation: its rebuilt shards would not match a kept one) meanwhile and the
    orphan sweep took the old files. The read reloads the row, reads the new shards, and
    queues nothing."""
    data, ids = _stored(engine, seed=7, size=2 * MiB)
    cid = ids[0]
    with engine.core.db.read() as conn:
        held = chunk_index.load(conn, [cid])[cid]
    old = _shards(engine, cid)
    old[0][2].unlink()
    unlike_a_rebuild(engine, cid, 8)
    repair.scrub(engine)
    assert repair.repair(engine).repaired == 1
    for _c, _i, path in old[1:]:  # what the orphan sweep does to the old generation
        path.unlink()
    assert engine.core.reader.read(held) == data[: held.raw_size]
    assert _queued(engine) == {}


def test_a_background_scrub_goes_round_the_store_a_slice_at_a_time(
    small_engine: Engine,
) -> None:
    engine = small_engine
    _data, ids = _stored(engine, seed=8, size=MiB)
    chunk_ids = sorted(set(ids))
    last = _shards(engine, chunk_ids[-1])
    last[0][2].unlink()
    with engine.core.db.read() as conn:
        records = chunk_index.load(conn, chunk_ids).values()
    biggest = max(r.shard_size * len(r.shards) for r in records)
    total = sum(r.shard_size * len(r.shards) for r in records)
    slice_bytes = total // 4
    cursor = repair.ScrubCursor()
    seen, rounds = 0, 0
    while cursor.passes == 0:
        report = repair.scrub(engine, cursor=cursor, budget=slice_bytes)
        seen += report.chunks_checked
        rounds += 1
        assert report.bytes_checked < slice_bytes + biggest  # one chunk past, at most
    assert seen == len(chunk_ids) and rounds >= 4 and cursor.after is None
    assert list(_queued(engine)) == [chunk_ids[-1]]


def test_a_chunk_that_fails_its_sha256_is_not_taken_off_the_queue(small_engine: Engine) -> None:
    """Every shard passing its own checksum does not make a chunk whole: one queued because
    it decoded to other bytes (here inline bytes that rotted in the database, which have no
    shard checksum) stays queued and is named, so an upload of its bytes still restores it
    rather than being taken as a plain dedup hit."""
    engine = small_engine
    data = b"abcdefghij" * 90
    v = engine.put(iter([data]), key="inline")
    (cid,) = {e.chunk_id for e in engine.objects.manifest(v)}
    with engine.core.db.write() as conn:
        blob = bytearray(
            conn.execute(
                sa.select(chunks.c.inline_data).where(chunks.c.chunk_id == cid)
            ).scalar_one()
        )
        blob[-3] ^= 0xFF
        conn.execute(sa.update(chunks).where(chunks.c.chunk_id == cid).values(inline_data=blob))
    with pytest.raises(ChunkCorrupt):
        read_all(engine, v)
    assert list(_queued(engine)) == [cid]
    report = repair.repair(engine)
    assert report.unrecoverable == [cid] and report.intact == 0
    assert list(_queued(engine)) == [cid]
    engine.put(iter([data]), key="the same bytes again")
    assert _queued(engine) == {} and read_all(engine, v) == data


def _commit_is_durable(engine: Engine, conn: sa.Connection) -> bool:
    """Whether the transaction on `conn` is flushed to disk when it commits."""
    if engine.core.db.is_postgres:
        return conn.exec_driver_sql("SHOW synchronous_commit").scalar_one() != "off"
    return conn.exec_driver_sql("PRAGMA synchronous").scalar_one() >= 2  # FULL


@pytest.mark.parametrize("how", ["in place", "stored again"])
def test_a_repair_is_committed_durably(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Once a chunk points at its new shards, the files it had are orphans that the next
    sweep deletes at once (they are old), or (in place) were deleted already: a commit that
    a power cut could still undo would leave the row pointing at deleted files. Nothing
    durable follows a repair, as an upload's checkpoint follows a chunk stored for it."""
    _data, ids = _stored(engine, seed=6, size=2 * MiB)
    _shards(engine, ids[0])[0][2].unlink()
    if how == "stored again":
        unlike_a_rebuild(engine, ids[0], 8)
    repair.scrub(engine)
    seen: list[str] = []
    for name in ("replace", "replace_shards"):
        original = getattr(chunk_index, name)

        def watched(conn: sa.Connection, *args: object, name=name, original=original) -> object:
            seen.append(f"{name}: {'durable' if _commit_is_durable(engine, conn) else 'not'}")
            return original(conn, *args)

        monkeypatch.setattr(chunk_index, name, watched)
    assert repair.repair(engine).repaired == 1
    want = "replace_shards" if how == "in place" else "replace"
    assert seen == [f"{want}: durable"]


def test_a_chunk_collected_mid_repair_is_not_named_lost(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc taking a queued chunk (its version deleted) while repair rebuilds it: nothing was
    lost, so repair must not name it as a chunk only an upload can bring back (exit 10)."""
    data = random_bytes(200 * 1024, seed=7)
    v = engine.put([data], key="going")
    (cid,) = {e.chunk_id for e in engine.objects.manifest(v)}
    _shards(engine, cid)[0][2].unlink()
    repair.scrub(engine)
    examine = engine.core.reader.examine

    def collected_meanwhile(rec: chunk_index.ChunkRecord) -> Examined:
        engine.objects.delete(v)
        assert gc.collect(engine, grace=0, orphans=False).chunks_deleted == 1
        return examine(rec)

    monkeypatch.setattr(engine.core.reader, "examine", collected_meanwhile)
    report = repair.repair(engine)
    assert report.unrecoverable == [] and report.errors == 0
    assert _queued(engine) == {}


def test_a_chunk_stored_again_mid_scrub_is_not_reported_damaged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrub checks a record loaded before the chunk was stored again (an upload of its
    bytes, or the server's repair) and its old files swept: those faults are not damage,
    and are neither queued nor counted (`scrub` would exit 10 over a whole store)."""
    data = random_bytes(200 * 1024, seed=8)
    v = engine.put([data], key="kept")
    (cid,) = {e.chunk_id for e in engine.objects.manifest(v)}
    old = _shards(engine, cid)
    old[0][2].unlink()
    read_all(engine, v)  # read around the lost shard: queued
    check = engine.core.reader.check

    def stored_again_meanwhile(rec: chunk_index.ChunkRecord) -> list:
        engine.put([data], key="again")  # stores it again: the old files are orphans
        for _c, _i, path in old[1:]:
            path.unlink()  # as the orphan sweep does
        return check(rec)

    monkeypatch.setattr(engine.core.reader, "check", stored_again_meanwhile)
    report = repair.scrub(engine)
    assert (report.chunks_checked, report.chunks_damaged, report.bad_shards) == (1, 0, 0)
    assert _queued(engine) == {} and read_all(engine, v) == data


def test_damage_found_while_repair_checks_a_chunk_stays_queued(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repair finds a queued chunk's shards intact, but a read finds one gone before the
    chunk leaves the queue: that newer fault stays queued, for the next round to repair."""
    data = random_bytes(200 * 1024, seed=9)
    v = engine.put([data], key="bitrot")
    (cid,) = {e.chunk_id for e in engine.objects.manifest(v)}
    path = _shards(engine, cid)[1][2]
    aside = path.with_name(path.name + ".away")
    path.rename(aside)
    repair.scrub(engine)
    aside.rename(path)  # back: the repair will find every shard intact
    examine = engine.core.reader.examine
    victim = _shards(engine, cid)[0][2]

    def lost_meanwhile(rec: chunk_index.ChunkRecord) -> Examined:
        found = examine(rec)  # every shard intact
        victim.unlink()
        engine.core.reader.read(rec)  # a download reads around it, and queues the chunk again
        return found

    monkeypatch.setattr(engine.core.reader, "examine", lost_meanwhile)
    report = repair.repair(engine)
    assert report.intact == 0 and _queued(engine) == {cid: [0]}
    monkeypatch.undo()
    assert repair.repair(engine).repaired == 1
    assert _queued(engine) == {} and read_all(engine, v) == data


def test_a_disk_gone_is_named_once_not_per_chunk(
    make_settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that did not mount leaves an empty mount point: reads go on around it and the
    scrub queues its chunks, but the log names the dir once, not once per chunk and round."""
    settings = make_settings(**SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        data, ids = _stored(engine, seed=11, size=2 * MiB)
        root = engine.core.dirs.backends["d1"].root
    shutil.rmtree(root)
    root.mkdir()  # the empty mount point
    with Engine.open(settings) as engine, caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert read_all(engine, engine.objects.list()[0]) == data
            assert repair.scrub(engine).chunks_damaged == len(set(ids))
    named = [r for r in caplog.records if str(root) in r.getMessage() or "d1 " in r.getMessage()]
    assert len(named) == 1, [r.getMessage()[:120] for r in named[:5]]
    assert "unmounted" in named[0].getMessage() and "d1" in named[0].getMessage()
