"""The server's scrub and repair rounds on a store several nodes share: one node at a time
scrubs a slice, from where the last slice stopped (on any node, before any restart); a chunk
that cannot be rebuilt is retried rarely, not every round; a repair reads each shard once."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.engine.read import Examined
from edgestore.errors import StorageUnavailable
from edgestore.maintenance import repair
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import cursors
from edgestore.metadata.clock import now
from edgestore.metadata.schema import job_cursors, repair_queue
from tests.conftest import SettingsFactory
from tests.helpers import SMALL_CHUNKS, MiB, blocks_of, random_bytes, read_all
from tests.shards import shard_paths


def _store(engine: Engine, seed: int, size: int = MiB) -> tuple[bytes, list[str]]:
    data = random_bytes(size, seed=seed)
    v = engine.put(blocks_of(data, MiB), key=f"obj-{seed}")
    return data, sorted({e.chunk_id for e in engine.objects.manifest(v)})


def _scrub_state(engine: Engine) -> tuple[str | None, int, str | None]:
    """(position, passes, lease owner) of the shared scrub cursor."""
    with engine.core.db.read() as conn:
        row = conn.execute(
            sa.select(job_cursors.c.position, job_cursors.c.passes, job_cursors.c.owner).where(
                job_cursors.c.job == repair.SCRUB_JOB
            )
        ).one()
    return row.position, row.passes, row.owner


def _watch_checks(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The chunk ids the engine's reader checks every shard of, in order."""
    seen: list[str] = []
    check = engine.core.reader.check

    def watched(rec: chunk_index.ChunkRecord) -> list:
        seen.append(rec.chunk_id)
        return check(rec)

    monkeypatch.setattr(engine.core.reader, "check", watched)
    return seen


def _slice_bytes(engine: Engine, ids: list[str], parts: int) -> int:
    with engine.core.db.read() as conn:
        records = chunk_index.load(conn, ids).values()
    return sum(r.shard_size * len(r.shards) for r in records) // parts


def test_the_scrub_goes_on_where_it_stopped_after_a_restart(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The position is in the database: a restarted node (a new lease owner) goes on past
    the last chunk the slice before checked, and a pass checks every chunk once."""
    settings = make_settings(**SMALL_CHUNKS)
    with Engine.open(settings) as engine:
        _data, ids = _store(engine, seed=1)
        budget = _slice_bytes(engine, ids, 4)
        seen = _watch_checks(engine, monkeypatch)
        first = repair.scrub_round(engine, owner="node-1", budget=budget, hold=0)
        assert first is not None and 0 < first.chunks_checked < len(ids)
    assert seen == ids[: len(seen)]
    checked = list(seen)
    for restart in range(10):
        with Engine.open(settings) as engine:
            seen = _watch_checks(engine, monkeypatch)
            report = repair.scrub_round(engine, owner=f"node-1-{restart}", budget=budget, hold=0)
            assert report is not None
            checked += seen
            position, passes, owner = _scrub_state(engine)
            assert owner == f"node-1-{restart}"  # held until `hold` (0) after the slice
            if passes:
                break
    assert checked == ids and passes == 1 and position is None


def test_one_node_at_a_time_scrubs(small_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a node holds the scrub (a slice under way, or `hold` after it) another node's
    round reads nothing; once the holder is gone its lease runs out and the other takes over
    from the holder's position."""
    engine = small_engine
    _data, ids = _store(engine, seed=2)
    budget = _slice_bytes(engine, ids, 4)
    seen = _watch_checks(engine, monkeypatch)
    a = repair.scrub_round(engine, owner="a", budget=budget, hold=600)
    assert a is not None and a.chunks_checked
    assert repair.scrub_round(engine, owner="b", budget=budget, hold=600) is None
    assert len(seen) == a.chunks_checked  # b read nothing
    again = repair.scrub_round(engine, owner="a", budget=budget, hold=600)  # the holder goes on
    assert again is not None and seen == ids[: len(seen)]
    with engine.core.db.write() as conn:  # a died: its lease runs out
        conn.execute(sa.update(job_cursors).values(lease_expires=now(conn) - 1))
    b = repair.scrub_round(engine, owner="b", budget=budget, hold=600)
    assert b is not None and b.chunks_checked and seen == ids[: len(seen)]
    assert _scrub_state(engine)[2] == "b"


def test_a_node_that_lost_its_lease_stops_its_slice(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node stalled past its lease (another node took the scrub over) stops at its next
    renewal and does not write its position over the new holder's."""
    engine = small_engine
    _data, ids = _store(engine, seed=3)
    monkeypatch.setattr(repair, "SCRUB_RENEW_SECONDS", 0.0)
    check = engine.core.reader.check
    seen: list[str] = []

    def stalled(rec: chunk_index.ChunkRecord) -> list:
        seen.append(rec.chunk_id)
        if len(seen) == 2:
            with engine.core.db.write() as conn:
                conn.execute(
                    sa.update(job_cursors).values(
                        owner="b", lease_expires=now(conn) + 600, position=ids[-2]
                    )
                )
        return check(rec)

    monkeypatch.setattr(engine.core.reader, "check", stalled)
    report = repair.scrub_round(engine, owner="a", budget=1 << 40, hold=600)
    assert report is not None and report.chunks_checked == 2
    assert _scrub_state(engine) == (ids[-2], 0, "b")


def test_a_slice_stopped_midway_keeps_its_place_and_frees_the_scrub(
    small_engine: Engine,
) -> None:
    """The server shutting down mid-slice: the position of the last chunk checked is kept
    and the lease given up, so the next node goes on at once from there."""
    engine = small_engine
    _data, ids = _store(engine, seed=4)

    class Stop(Exception):
        pass

    def stop_after_three(_stage: str, count: int) -> None:
        if count == 3:
            raise Stop

    with pytest.raises(Stop):
        repair.scrub_round(engine, owner="a", budget=1 << 40, hold=600, progress=stop_after_three)
    assert _scrub_state(engine) == (ids[2], 0, None)
    report = repair.scrub_round(engine, owner="b", budget=1 << 40, hold=600)
    assert report is not None and report.chunks_checked == len(ids) - 3
    assert _scrub_state(engine) == (None, 1, "b")


def test_leaving_frees_the_scrub_for_the_next_node(small_engine: Engine) -> None:
    engine = small_engine
    _store(engine, seed=5)
    assert repair.scrub_round(engine, owner="a", budget=1, hold=600) is not None
    repair.leave_scrub(engine, owner="b")  # not the holder: changes nothing
    assert _scrub_state(engine)[2] == "a"
    repair.leave_scrub(engine, owner="a")
    assert repair.scrub_round(engine, owner="b", budget=1, hold=600) is not None


def test_nodes_racing_for_the_scrub_get_it_one_at_a_time(engine: Engine) -> None:
    """Several nodes asking at the same moment, on a store whose scrub never ran (no row
    yet): exactly one holds it."""
    db = engine.core.db
    start = threading.Barrier(4)

    def race(owner: str) -> cursors.JobCursor | None:
        start.wait()
        with db.write(durable=False) as conn:
            return cursors.take(db, conn, repair.SCRUB_JOB, owner, 600)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(race, ["a", "b", "c", "d"]))
    assert [r for r in results if r is not None] == [cursors.JobCursor(None, 0)]
    winner = "abcd"[next(i for i, r in enumerate(results) if r is not None)]
    assert _scrub_state(engine) == (None, 0, winner)


def _db_now(engine: Engine) -> float:
    with engine.core.db.read() as conn:
        return now(conn)


def _queue_row(engine: Engine, cid: str) -> tuple[int, float | None]:
    with engine.core.db.read() as conn:
        row = conn.execute(
            sa.select(repair_queue.c.attempts, repair_queue.c.next_attempt).where(
                repair_queue.c.chunk_id == cid
            )
        ).one()
    return row.attempts, row.next_attempt


def test_an_unrecoverable_chunk_is_retried_rarely(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer than k intact shards: the upkeep tries it once, then backs off (an hour, then
    twice as long each time) instead of reading and logging it every round; `edgestore
    repair` still tries it, and an upload of its bytes still heals it at once."""
    data, (cid,) = _store(engine, seed=6, size=2 * MiB)
    for path in shard_paths(engine, cid)[:4]:  # m + 1 of 6+3
        path.unlink()
    repair.scrub(engine)
    reads: list[str] = []  # chunks a repair read
    examine = engine.core.reader.examine

    def counted(rec: chunk_index.ChunkRecord) -> Examined:
        reads.append(rec.chunk_id)
        return examine(rec)

    monkeypatch.setattr(engine.core.reader, "examine", counted)

    def upkeep_round() -> repair.RepairReport:
        return repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)

    t = _db_now(engine)
    assert upkeep_round().unrecoverable == [cid]
    attempts, next_attempt = _queue_row(engine, cid)
    assert attempts == 1 and next_attempt is not None
    assert (
        t + repair.RETRY_FIRST_SECONDS
        <= next_attempt
        <= _db_now(engine) + repair.RETRY_FIRST_SECONDS
    )
    read_before = len(reads)
    for _ in range(3):
        assert upkeep_round().queued == 0
    assert len(reads) == read_before  # not read again
    assert repair.repair(engine).unrecoverable == [cid]  # by hand: tried all the same
    attempts, next_attempt = _queue_row(engine, cid)
    assert attempts == 2 and next_attempt > _db_now(engine) + 1.5 * repair.RETRY_FIRST_SECONDS
    with engine.core.db.write() as conn:  # the time has come
        conn.execute(sa.update(repair_queue).values(next_attempt=now(conn) - 1))
    assert upkeep_round().unrecoverable == [cid]
    assert _queue_row(engine, cid)[0] == 3
    engine.put(blocks_of(data, MiB), key="the same bytes again")  # heals it at once
    with engine.core.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(repair_queue)).scalar() == 0
    assert read_all(engine, engine.objects.list()[0]) == data


def test_the_backoff_doubles_up_to_a_day() -> None:
    delays = [repair.retry_delay(n) for n in range(1, 12)]
    assert delays[0] == repair.RETRY_FIRST_SECONDS and delays[1] == 2 * delays[0]
    assert max(delays) == delays[-1] == repair.RETRY_MAX_SECONDS


def test_a_chunk_another_node_is_repairing_is_left_to_it(engine: Engine) -> None:
    """Each node's upkeep claims a chunk before it repairs it: another node's round skips a
    claimed one (no second read and second set of shards), and takes it once the claim
    runs out (that node died mid-repair)."""
    _data, (cid,) = _store(engine, seed=7, size=2 * MiB)
    shard_paths(engine, cid)[0].unlink()
    repair.scrub(engine)
    with engine.core.db.write() as conn:
        assert chunk_index.claim_repair(conn, cid, now(conn) + 600)
        assert not chunk_index.claim_repair(conn, cid, now(conn) + 600)  # already claimed
    report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
    assert report.queued == 0
    with engine.core.db.write() as conn:
        conn.execute(sa.update(repair_queue).values(next_attempt=now(conn) - 1))
    report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
    assert report.repaired == 1


def test_a_chunk_that_could_not_be_stored_is_tried_again_next_round(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No writable place for new shards (a lost disk not yet replaced) is no reason to back
    off: the next round tries again, so the chunk is whole soon after the disk is back."""
    _data, (cid,) = _store(engine, seed=8, size=2 * MiB)
    shard_paths(engine, cid)[0].unlink()
    repair.scrub(engine)

    def no_room(*_args: object, **_kwargs: object) -> None:
        raise StorageUnavailable("data dir not writable")

    for backend in engine.core.dirs.backends.values():  # every data dir refuses new files
        monkeypatch.setattr(backend, "put", no_room)
        monkeypatch.setattr(backend, "write", no_room)
    report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
    assert report.errors == 1 and _queue_row(engine, cid) == (0, None)
    monkeypatch.undo()
    report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
    assert report.repaired == 1


def test_a_repair_reads_each_shard_once(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check reads every shard: the chunk is rebuilt from those payloads, not from a
    second read of k of them."""
    data, (cid,) = _store(engine, seed=9, size=2 * MiB)
    paths = shard_paths(engine, cid)
    paths[0].unlink()
    repair.scrub(engine)
    gets: Counter[str] = Counter()
    lock = threading.Lock()
    for backend in engine.core.dirs.backends.values():
        get = backend.get

        def counted(key: str, limit: int | None = None, get=get) -> bytes:
            with lock:
                gets[key] += 1
            return get(key, limit)

        monkeypatch.setattr(backend, "get", counted)
    assert repair.repair(engine).repaired == 1
    assert len(gets) == len(paths) and set(gets.values()) == {1}, gets
    monkeypatch.undo()
    assert read_all(engine, engine.objects.list()[0]) == data


def _watch_examines(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The chunk ids repair reads every shard of, in order (the reads themselves are real)."""
    seen: list[str] = []
    examine = engine.core.reader.examine

    def watched(rec: chunk_index.ChunkRecord) -> Examined:
        seen.append(rec.chunk_id)
        return examine(rec)

    monkeypatch.setattr(engine.core.reader, "examine", watched)
    return seen


def _damaged(engine: Engine, count: int, on: Path | None = None) -> list[str]:
    """`count` chunks, each with a shard lost (shard 0, or the one in data dir `on`) and
    queued for repair."""
    ids = []
    for seed in range(20, 20 + count):
        _data, (cid,) = _store(engine, seed=seed, size=2 * MiB)
        paths = shard_paths(engine, cid)
        next(p for p in paths if on is None or p.is_relative_to(on)).unlink()
        ids.append(cid)
    assert repair.scrub(engine).chunks_damaged == count
    return sorted(ids)


def _repair_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == repair.log.name and r.levelno >= logging.WARNING
    ]


def test_with_a_data_dir_gone_the_upkeep_pauses_repairs_until_it_is_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A data dir gone while the server runs: no new shards can be stored. The upkeep read
    up to 20 queued chunks every round and logged each failing the same way; now it checks
    the data dirs first, reads nothing and says so once, and repairs again the first round
    after the dir is back (no `edgestore repair` needed, nothing backed off)."""
    ids = _damaged(engine, 3)
    root = next(iter(engine.core.dirs.backends.values())).root
    gone = root.with_name(root.name + ".gone")
    seen = _watch_examines(engine, monkeypatch)
    cursor = repair.RepairCursor()

    def upkeep_round() -> repair.RepairReport:
        return repair.repair(engine, limit=20, cursor=cursor, due_only=True)

    caplog.set_level(logging.INFO, logger=repair.log.name)
    caplog.clear()
    root.rename(gone)  # the disk went away
    try:
        for _ in range(3):
            report = upkeep_round()
            assert report.queued == 0 and report.paused is not None
        assert seen == []
        assert all(_queue_row(engine, cid) == (0, None) for cid in ids)  # nothing backed off
        logged = _repair_logs(caplog)
        assert len(logged) == 1 and str(root) in logged[0], logged
    finally:
        gone.rename(root)
    report = upkeep_round()
    assert report.repaired == 3 and report.paused is None and seen == ids
    assert any("resum" in r.getMessage() for r in caplog.records)


def test_a_data_dir_lost_mid_round_stops_the_round(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The dir goes away after the round's check: the first chunk that cannot be repaired
    (its lost shard's own dir is the one gone: the upkeep does not move shards off a dir
    that may come back) ends the round (the rest are not read to fail the same way), and
    it stays due."""
    root = next(iter(engine.core.dirs.backends.values())).root
    ids = _damaged(engine, 3, on=root)
    gone = root.with_name(root.name + ".gone")
    seen: list[str] = []
    examine = engine.core.reader.examine

    def losing_the_disk(rec: chunk_index.ChunkRecord) -> Examined:
        seen.append(rec.chunk_id)
        found = examine(rec)
        if len(seen) == 1:
            root.rename(gone)
        return found

    monkeypatch.setattr(engine.core.reader, "examine", losing_the_disk)
    caplog.set_level(logging.INFO, logger=repair.log.name)
    caplog.clear()
    cursor = repair.RepairCursor()
    try:
        report = repair.repair(engine, limit=20, cursor=cursor, due_only=True)
        assert report.errors == 1 and report.paused is not None and seen == ids[:1]
        assert repair.repair(engine, limit=20, cursor=cursor, due_only=True).queued == 0
        assert len(_repair_logs(caplog)) == 1, _repair_logs(caplog)
    finally:
        gone.rename(root)
    assert all(_queue_row(engine, cid) == (0, None) for cid in ids)
    report = repair.repair(engine, limit=20, cursor=cursor, due_only=True)
    assert report.repaired == 3 and seen == ids[:1] + ids


def test_a_data_dir_unusable_since_start_pauses_repairs(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dir found unusable at start (its disk not mounted): nothing can be stored until
    the server restarts with it, so the upkeep reads no queued chunk meanwhile."""
    settings = make_settings()
    with Engine.open(settings) as engine:
        _damaged(engine, 2)
        root = next(iter(engine.core.dirs.backends.values())).root
    gone = root.with_name(root.name + ".gone")
    root.rename(gone)
    root.mkdir()  # an empty mount point
    try:
        with Engine.open(settings) as engine:
            seen = _watch_examines(engine, monkeypatch)
            report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
            assert report.queued == 0 and "cannot store new chunks" in (report.paused or "")
            assert seen == []
    finally:
        root.rmdir()
        gone.rename(root)
    with Engine.open(settings) as engine:
        report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
        assert report.repaired == 2
