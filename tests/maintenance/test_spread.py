"""Spreading a chunk again: a repair around a data dir gone or full can leave two of a chunk's
shards on one dir (losing it then costs two shards); once a dir holding none of them can take
one again (the disk replaced), repair moves the doubled-up shard there, back to its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.config import Settings, load_settings
from edgestore.engine import Engine
from edgestore.maintenance import check, gc, repair, spread
from edgestore.metadata.clock import now
from edgestore.metadata.schema import repair_queue, shards
from tests.conftest import SettingsFactory
from tests.crashpoints import assert_store_consistent, child_env, run_killed
from tests.helpers import MiB, blocks_of, random_bytes, read_all
from tests.mounts import fill, tmpfs
from tests.shards import shard_rows


def _queue(engine: Engine) -> dict[str, tuple[str, int, float | None]]:
    """chunk id -> (reason, attempts, next attempt) of every queued chunk."""
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(
                repair_queue.c.chunk_id,
                repair_queue.c.reason,
                repair_queue.c.attempts,
                repair_queue.c.next_attempt,
            )
        ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _db_now(engine: Engine) -> float:
    with engine.core.db.read() as conn:
        return now(conn)


def _make_due(engine: Engine) -> None:
    """As if every queued chunk's next attempt were due now (time passed)."""
    with engine.core.db.write() as conn:
        conn.execute(sa.update(repair_queue).values(next_attempt=None))


def _crowded(engine: Engine) -> int:
    return check.check(engine).of(check.CROWDED).found


def _doubled_after_a_dir_gone(
    tmp_path: Path, make_settings: SettingsFactory
) -> tuple[Settings, bytes, str, list[tuple[int, str, str]], Path]:
    """9 data dirs, one chunk with a shard on each; the dir of shard 4 is lost and repair by
    hand rebuilds that shard on another dir, which then holds two of the chunk's shards.
    Returns the settings, the data, the chunk id, its rows before, and the lost dir's path."""
    settings = make_settings(data_dirs=[tmp_path / f"disk{i}" for i in range(9)])
    with Engine.open(settings) as engine:
        data = random_bytes(2 * MiB, seed=11)
        v = engine.put(blocks_of(data, MiB), key="obj")
        (cid,) = {e.chunk_id for e in engine.objects.manifest(v)}
        rows = shard_rows(engine, cid)
        assert len({b for _i, b, _k in rows}) == 9
        gone_root = engine.core.dirs.backends[rows[4][1]].root
    shutil.rmtree(gone_root)
    with Engine.open(settings) as engine:
        assert repair.scrub(engine).chunks_damaged == 1
        report = repair.repair(engine)
        assert (report.repaired, report.errors) == (1, 0)
        moved = shard_rows(engine, cid)
        doubled = moved[4][1]
        assert doubled != rows[4][1] and doubled in {b for _i, b, _k in rows}
        assert _crowded(engine) == 1
        # Still queued, to be spread again once it can: not due at once.
        ((reason, _attempts, due),) = _queue(engine).values()
        assert f"shard 4 shares data dir {doubled}" in reason
        assert due is not None and due > _db_now(engine)
    return settings, data, cid, rows, gone_root


@pytest.mark.parametrize("by", ["hand", "upkeep"])
def test_a_replaced_disk_gets_its_shard_back(
    tmp_path: Path, make_settings: SettingsFactory, by: str
) -> None:
    settings, data, cid, rows, gone_root = _doubled_after_a_dir_gone(tmp_path, make_settings)
    with Engine.open(settings) as engine:
        doubled = shard_rows(engine, cid)[4]
        doubled_file = engine.core.dirs.backends[doubled[1]].root / doubled[2]
        assert doubled_file.exists()
    gone_root.mkdir()  # the new, empty disk
    with Engine.open(settings, initialise_dirs=True) as engine:
        assert engine.core.dirs.backends[rows[4][1]].root == gone_root
        if by == "upkeep":
            # Backing off: the upkeep does not take it before its due time...
            quiet = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
            assert quiet.queued == 0 and shard_rows(engine, cid)[4] == doubled
            _make_due(engine)
            report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
        else:
            report = repair.repair(engine)
        assert (report.spread, report.crowded, report.errors) == (1, 0, 0)
        assert shard_rows(engine, cid) == rows  # one shard per dir: its own again
        assert not doubled_file.exists()
        assert (gone_root / rows[4][2]).exists()
        assert _queue(engine) == {}
        assert _crowded(engine) == 0 and check.check(engine).unresolved == 0
        assert repair.scrub(engine).chunks_damaged == 0
        assert read_all(engine, engine.objects.list()[0]) == data


def test_with_nowhere_to_go_yet_it_stays_queued_backing_off(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """The lost dir not replaced yet: repair (by hand, which tries every queued chunk) moves
    nothing and puts the next try off; the upkeep leaves it alone meanwhile."""
    settings, data, cid, _rows_before, _gone = _doubled_after_a_dir_gone(tmp_path, make_settings)
    with Engine.open(settings) as engine:
        before = shard_rows(engine, cid)
        ((_reason, attempts, _due),) = _queue(engine).values()
        report = repair.repair(engine)
        assert (report.spread, report.crowded, report.repaired, report.errors) == (0, 1, 0, 0)
        assert shard_rows(engine, cid) == before
        ((_reason, attempts_now, due),) = _queue(engine).values()
        assert attempts_now == attempts + 1
        assert due is not None and due > _db_now(engine) + 60
        upkeep = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
        assert upkeep.queued == 0 and shard_rows(engine, cid) == before
        assert read_all(engine, engine.objects.list()[0]) == data


def test_repair_spread_finds_chunks_doubled_up_before(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """A chunk doubled up and not queued (by a release before this, or its queue entry
    lost): `check` reports it, the scan queues it, and repair spreads it."""
    settings, data, cid, rows, gone_root = _doubled_after_a_dir_gone(tmp_path, make_settings)
    gone_root.mkdir()
    with Engine.open(settings, initialise_dirs=True) as engine:
        with engine.core.db.write() as conn:
            conn.execute(sa.delete(repair_queue))
        report = check.check(engine)
        found = report.of(check.CROWDED)
        assert found.found == 1 and cid in found.examples[0] and report.unresolved == 1
        assert spread.queue_crowded(engine) == 1
        assert spread.queue_crowded(engine) == 1  # (queued already: no harm)
        assert repair.repair(engine).spread == 1
        assert shard_rows(engine, cid) == rows and _queue(engine) == {}
        assert spread.queue_crowded(engine) == 0 and _crowded(engine) == 0
        assert read_all(engine, engine.objects.list()[0]) == data


def test_fewer_dirs_than_shards_is_not_doubled_up(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """3 data dirs for 9 shards: placement puts 3 on each, which is no fault. One dir holding
    4 is (losing it costs more than m): that shard goes back where placement puts it."""
    settings = make_settings(data_dirs=[tmp_path / f"disk{i}" for i in range(3)])
    with Engine.open(settings) as engine:
        data = random_bytes(2 * MiB, seed=12)
        v = engine.put(blocks_of(data, MiB), key="obj")
        (cid,) = {e.chunk_id for e in engine.objects.manifest(v)}
        rows = shard_rows(engine, cid)
        assert _crowded(engine) == 0 and spread.queue_crowded(engine) == 0
        assert repair.repair(engine).queued == 0 and _queue(engine) == {}
        # Shard 0's file and row moved by hand to the dir of shard 1.
        index, home, key = rows[0]
        other = rows[1][1]
        backends = engine.core.dirs.backends
        (backends[other].root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(backends[home].root / key, backends[other].root / key)
        with engine.core.db.write() as conn:
            conn.execute(
                sa.update(shards)
                .where(shards.c.chunk_id == cid, shards.c.shard_index == index)
                .values(backend=other)
            )
        assert _crowded(engine) == 1 and spread.queue_crowded(engine) == 1
        assert repair.repair(engine).spread == 1
        assert shard_rows(engine, cid) == rows and _queue(engine) == {}
        assert not (backends[other].root / key).exists()
        assert read_all(engine, engine.objects.list()[0]) == data


@pytest.mark.parametrize(
    ("point", "committed"),
    [
        ({"sql": r"^\s*INSERT INTO shards", "when": "before"}, False),  # in the row switch
        ({"file": "delete", "when": "before"}, True),  # switched, the old file not yet gone
    ],
)
def test_a_crash_while_spreading_leaves_a_readable_store(
    tmp_path: Path, db_url: str, point: dict[str, str], committed: bool
) -> None:
    """kill -9 in `repair --spread`: before the row switch commits, the rows still name the
    old file (the new one, written durably first, is an orphan); after, they name the new
    one, already durable. Either way the chunk reads back, and running it again (then gc's
    orphan sweep) finishes the job."""
    home = tmp_path / "home"
    settings = load_settings(home=home, database_url=db_url)
    env = {**os.environ, "EDGESTORE_HOME": str(home), "EDGESTORE_DATABASE_URL": db_url}
    data = random_bytes(2 * MiB, seed=13)
    with Engine.open(settings) as engine:
        v = engine.put(blocks_of(data, MiB), key="obj")
        (cid,) = {e.chunk_id for e in engine.objects.manifest(v)}
        rows = shard_rows(engine, cid)
        backends = engine.core.dirs.backends
        home_file = backends[rows[0][1]].root / rows[0][2]
        doubled_file = backends[rows[1][1]].root / rows[0][2]
        doubled_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(home_file, doubled_file)
        with engine.core.db.write() as conn:
            conn.execute(
                sa.update(shards)
                .where(shards.c.chunk_id == cid, shards.c.shard_index == 0)
                .values(backend=rows[1][1])
            )
    run_killed(point, ["repair", "--spread"], env)
    with Engine.open(settings) as engine:
        assert shard_rows(engine, cid)[0][1] == (rows[0][1] if committed else rows[1][1])
        assert home_file.exists() and doubled_file.exists()
        assert_store_consistent(engine)
        assert read_all(engine, engine.objects.list()[0]) == data
    again = subprocess.run(
        [sys.executable, "-m", "edgestore", "repair", "--spread"],
        env=child_env(env),
        capture_output=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr.decode()
    with Engine.open(settings) as engine:
        assert shard_rows(engine, cid) == rows and _crowded(engine) == 0
        old = time.time() - gc.ORPHAN_MIN_AGE - 1
        for backend in engine.core.dirs.backends.values():
            for blob in backend.list():
                os.utime(backend.root / blob.key, (old, old))
        gc.collect(engine, grace=0)
        assert home_file.exists() and not doubled_file.exists()
        assert_store_consistent(engine)
        assert read_all(engine, engine.objects.list()[0]) == data


def test_the_upkeep_waits_while_the_replaced_disk_is_full(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """Every dir up, but the one that holds none of the chunk's shards is full: the upkeep
    moves nothing, backs off (the next round does not read it again), and moves the shard
    once the dir has room."""
    settings, data, cid, rows, gone_root = _doubled_after_a_dir_gone(tmp_path, make_settings)
    gone_root.mkdir()
    with tmpfs(gone_root, "4m"), Engine.open(settings, initialise_dirs=True) as engine:
        doubled = shard_rows(engine, cid)
        filler = fill(gone_root, leave=0)
        _make_due(engine)
        report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
        assert report.paused is None
        assert (report.queued, report.spread, report.crowded) == (1, 0, 1)
        assert shard_rows(engine, cid) == doubled
        ((_reason, attempts, due),) = _queue(engine).values()
        assert attempts >= 1 and due is not None and due > _db_now(engine) + 60
        again = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
        assert again.queued == 0
        filler.unlink()
        _make_due(engine)
        report = repair.repair(engine, limit=20, cursor=repair.RepairCursor(), due_only=True)
        assert (report.spread, report.crowded) == (1, 0)
        assert shard_rows(engine, cid) == rows and _queue(engine) == {}
        assert read_all(engine, engine.objects.list()[0]) == data
