"""The server's start (what it tells the operator) and its background upkeep, run in-process
for one round."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.api import app as app_module
from edgestore.api.state import Services
from edgestore.buffers import AlignedPool
from edgestore.engine import Engine
from edgestore.maintenance import hashes
from edgestore.metadata.chunks import ChunkRecord
from edgestore.metadata.objects import VersionInfo
from edgestore.metadata.schema import job_cursors, object_versions, repair_queue, shards
from edgestore.storage.datadirs import SINGLE_DISK_WARNING, record_epoch
from tests.conftest import SettingsFactory
from tests.helpers import SMALL_CHUNKS, KiB, MiB, blocks_of, random_bytes, read_all


def test_upkeep_gives_idle_buffers_back(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spare blocks kept for a busy store are unmapped once it has gone quiet."""
    monkeypatch.setattr(app_module, "POOL_IDLE_SECONDS", 0.0)
    settings = make_settings(maintenance_interval_seconds=1)
    pool = AlignedPool(idle_blocks=2)
    spare = pool.get(3 << 20)
    del spare
    assert pool.idle == 3 << 20

    async def one_round(svc: Services) -> None:
        upkeep = app_module.Upkeep(svc)
        upkeep.start()
        deadline = asyncio.get_running_loop().time() + 10
        while pool.idle and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await upkeep.stop()

    with Engine.open(settings) as engine:
        svc = Services(settings=settings, engine=engine)
        try:
            asyncio.run(one_round(svc))
        finally:
            svc.close()
    assert pool.idle == 0, "the upkeep left the idle block mapped"


def test_stopping_ends_an_upkeep_round_at_its_next_step(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round runs on a worker thread, which cancelling the task did not stop: the engine
    was closed under it, and the process's exit waited for it (a long orphan sweep)."""
    settings = make_settings(maintenance_interval_seconds=1)
    steps: list[int] = []
    started = threading.Event()

    def long_collect(engine: Engine, *, orphans: bool, progress) -> None:
        for i in range(600):  # a minute of work, reporting each step
            started.set()
            steps.append(i)
            progress("orphans", i)
            time.sleep(0.1)

    monkeypatch.setattr(app_module.gc, "collect", long_collect)

    async def stop_mid_round(svc: Services) -> float:
        upkeep = app_module.Upkeep(svc)
        upkeep.start()
        while not started.is_set():
            await asyncio.sleep(0.01)
        t = time.monotonic()
        await upkeep.stop()
        return time.monotonic() - t

    with Engine.open(settings) as engine:
        svc = Services(settings=settings, engine=engine)
        try:
            took = asyncio.run(stop_mid_round(svc))
            ended_at = len(steps)
            time.sleep(0.3)
        finally:
            svc.close()
    assert took < 1.0 and len(steps) == ended_at < 600, "the round went on after stop()"


@pytest.mark.disk  # /dev/shm must be another filesystem than its tmp_path
@pytest.mark.parametrize("disks", ["one", "two"])
def test_start_warns_when_every_data_dir_is_on_one_disk(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture, disks: str
) -> None:
    """The default layout (9 dirs under HOME) protects against bitrot, not a lost disk: the
    server's log says so at start, and stays quiet when the dirs are on different filesystems."""
    other = Path(tempfile.mkdtemp(dir="/dev/shm")) if disks == "two" else None
    try:
        if other is None:
            settings = make_settings()
        else:
            settings = make_settings(data_dirs=[make_settings().home / "a", other])
            if other.stat().st_dev == settings.home.parent.stat().st_dev:
                pytest.skip("/dev/shm is on the same filesystem as the test's tmp dir here")
        app = app_module.create_app(settings)
        caplog.set_level(logging.WARNING, logger="edgestore.storage")

        async def start_and_stop() -> None:
            async with app.router.lifespan_context(app):
                pass

        asyncio.run(start_and_stop())
    finally:
        if other is not None:
            shutil.rmtree(other, ignore_errors=True)
    warned = [r for r in caplog.records if r.getMessage() == SINGLE_DISK_WARNING]
    assert len(warned) == (1 if disks == "one" else 0)


def _put_then_lose_a_shard(engine: Engine, seed: int) -> tuple[VersionInfo, bytes]:
    """A 2 MiB version, one of whose shard files is then deleted (read around it: queued)."""
    data = random_bytes(2 * MiB, seed=seed)
    v = engine.put(blocks_of(data, MiB), key="k")
    with engine.core.db.read() as conn:
        row = conn.execute(
            sa.select(shards.c.backend, shards.c.key).where(shards.c.shard_index == 0)
        ).first()
    assert row is not None
    (engine.core.dirs.backends[row.backend].root / row.key).unlink()
    return v, data


def test_upkeep_repairs_a_chunk_read_around_a_lost_shard(make_settings: SettingsFactory) -> None:
    """A download read around a lost shard (queued for repair); the server's next upkeep
    round stores the chunk again, with no operator action."""
    settings = make_settings(maintenance_interval_seconds=1)

    def queued(engine: Engine) -> int:
        with engine.core.db.read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(repair_queue)).scalar_one()

    async def until_repaired(svc: Services) -> None:
        upkeep = app_module.Upkeep(svc)
        upkeep.start()
        deadline = asyncio.get_running_loop().time() + 20
        while queued(svc.engine) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        await upkeep.stop()

    with Engine.open(settings) as engine:
        v, data = _put_then_lose_a_shard(engine, seed=31)
        assert read_all(engine, v) == data and queued(engine) == 1
        svc = Services(settings=settings, engine=engine)
        try:
            asyncio.run(until_repaired(svc))
        finally:
            svc.close()
        assert queued(engine) == 0
        with engine.core.db.read() as conn:
            files = conn.execute(sa.select(shards.c.backend, shards.c.key)).all()
        assert all((engine.core.dirs.backends[b].root / k).exists() for b, k in files)
        assert read_all(engine, v) == data


def test_two_nodes_scrub_the_store_once_between_them(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers sharing a database and data dirs: their upkeeps take turns at one
    background scrub, each slice going on where the last stopped, instead of each reading
    the whole store; a node stopping gives the scrub up."""
    settings = make_settings(
        maintenance_interval_seconds=1, scrub_bytes_per_round=300 * KiB, **SMALL_CHUNKS
    )
    checked: list[str] = []
    lock = threading.Lock()

    def watch(engine: Engine) -> None:
        check = engine.core.reader.check

        def watched(rec: ChunkRecord) -> list:
            with lock:
                checked.append(rec.chunk_id)
            return check(rec)

        monkeypatch.setattr(engine.core.reader, "check", watched)

    def scrub_state(engine: Engine) -> tuple[int, str | None]:
        with engine.core.db.read() as conn:
            row = conn.execute(
                sa.select(job_cursors.c.passes, job_cursors.c.owner).where(
                    job_cursors.c.job == app_module.repairs.SCRUB_JOB
                )
            ).first()
        return (0, None) if row is None else (row.passes, row.owner)

    async def one_pass(nodes: list[Services]) -> None:
        upkeeps = [app_module.Upkeep(svc) for svc in nodes]
        for upkeep in upkeeps:
            upkeep.start()
        deadline = asyncio.get_running_loop().time() + 60
        while scrub_state(nodes[0].engine)[0] == 0:
            assert asyncio.get_running_loop().time() < deadline, "no pass within a minute"
            await asyncio.sleep(0.05)
        for upkeep in upkeeps:
            await upkeep.stop()

    with Engine.open(settings) as a, Engine.open(settings) as b:
        v = a.put(blocks_of(random_bytes(MiB, seed=41), MiB), key="k")
        ids = sorted({e.chunk_id for e in a.objects.manifest(v)})
        watch(a)
        watch(b)
        nodes = [Services(settings=settings, engine=a), Services(settings=settings, engine=b)]
        try:
            asyncio.run(one_pass(nodes))
        finally:
            for svc in nodes:
                svc.close()
        assert checked[: len(ids)] == ids  # each chunk once, in order, across both nodes
        assert scrub_state(a) == (1, None)


def test_two_nodes_read_each_version_back_once_between_them(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers sharing a database: their upkeeps take turns at filling digests, instead
    of each reading every version without one back; a node stopping gives the job up."""
    settings = make_settings(maintenance_interval_seconds=1)
    read: list[str] = []
    lock = threading.Lock()

    def watch(engine: Engine) -> None:
        versions = engine.objects.read

        def watched(info: VersionInfo, *args: object, **kwargs: object) -> object:
            with lock:
                read.append(str(info.version_id))
            return versions(info, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(engine.objects, "read", watched)

    async def until_filled(nodes: list[Services], ids: list[str]) -> None:
        upkeeps = [app_module.Upkeep(svc) for svc in nodes]
        for upkeep in upkeeps:
            upkeep.start()
        deadline = asyncio.get_running_loop().time() + 60
        while not all(nodes[0].engine.objects.by_version_id(v).sha256 for v in ids):
            assert asyncio.get_running_loop().time() < deadline, "not filled within a minute"
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # more rounds on both nodes: nothing is read again
        for upkeep in upkeeps:
            await upkeep.stop()

    with Engine.open(settings) as a, Engine.open(settings) as b:
        ids = sorted(
            str(a.put(iter([b"v%d " % i * 300]), key=f"k{i}").version_id) for i in range(12)
        )
        with a.core.db.write() as conn:
            conn.execute(sa.update(object_versions).values(sha256=None))
        watch(a)
        watch(b)
        nodes = [Services(settings=settings, engine=a), Services(settings=settings, engine=b)]
        try:
            asyncio.run(until_filled(nodes, ids))
        finally:
            for svc in nodes:
                svc.close()
        assert sorted(read) == ids  # each version once, across both nodes
        with a.core.db.read() as conn:
            owner = conn.execute(
                sa.select(job_cursors.c.owner).where(job_cursors.c.job == hashes.DIGEST_JOB)
            ).scalar_one()
        assert owner is None


def test_upkeep_pauses_gc_behind_a_restored_database_and_goes_on_with_the_rest(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Data dirs ahead of the database (an older metadata backup restored): every round's gc
    deletes nothing, the log says so once, and repairs still happen."""
    settings = make_settings(maintenance_interval_seconds=1)
    caplog.set_level(logging.ERROR, logger="edgestore.http")

    async def rounds(svc: Services, until: float) -> None:
        upkeep = app_module.Upkeep(svc)
        upkeep.start()
        await asyncio.sleep(until)
        await upkeep.stop()

    with Engine.open(settings) as engine:
        v, data = _put_then_lose_a_shard(engine, seed=32)
        assert read_all(engine, v) == data  # queues the chunk for repair
        record_epoch(engine.core.dirs.backends["d0"], 99)  # as a newer database left it
        svc = Services(settings=settings, engine=engine)
        try:
            asyncio.run(rounds(svc, 3.5))
        finally:
            svc.close()
        paused = [r for r in caplog.records if "gc paused" in r.getMessage()]
        assert len(paused) == 1 and "--accept-restored-metadata" in paused[0].getMessage()
        with engine.core.db.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(repair_queue)).scalar() == 0
        assert read_all(engine, v) == data
