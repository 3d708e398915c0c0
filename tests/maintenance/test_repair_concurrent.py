"""Two repairs of the same damaged chunk at once: `edgestore repair` by hand beside a running
server's upkeep (or two hand runs) do not claim the chunk, so both may rebuild it. Each test
opens two engines on one store (two processes' worth) and holds both repairs at a seam until
each has examined the chunk, so the race happens every run; then checks that the chunk is
whole, every row names a file that is there and matches it, and nothing named was deleted."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgestore.codec import shardfile
from edgestore.config import Settings
from edgestore.engine import Engine
from edgestore.maintenance import gc, inplace, repair
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.chunks import ChunkRecord
from edgestore.storage.placement import doubled_up
from tests.conftest import SettingsFactory
from tests.helpers import MiB, blocks_of, random_bytes, read_all
from tests.mounts import fill, tmpfs

WAIT = 30.0  # seconds a held repair waits for the other before the test fails


def _record(engine: Engine, cid: str) -> ChunkRecord:
    with engine.core.db.read() as conn:
        return chunk_index.load(conn, [cid])[cid]


def _path(engine: Engine, backend: str, key: str) -> Path:
    return engine.core.dirs.backends[backend].root / key


def _on_disk(engine: Engine) -> set[tuple[str, str]]:
    """(data dir, key) of every shard file in the data dirs (not the fillers of full ones)."""
    return {
        (n, blob.key)
        for n, be in engine.core.dirs.backends.items()
        for blob in be.list()
        if blob.key != "filler"
    }


def _one_chunk(engine: Engine, seed: int) -> tuple[bytes, str]:
    """A 2 MiB object: one chunk, erasure-coded into 9 shard files."""
    data = random_bytes(2 * MiB, seed=seed)
    v = engine.put(blocks_of(data, MiB), key=f"obj-{seed}")
    (cid,) = {e.chunk_id for e in engine.objects.manifest(v)}
    assert len(_record(engine, cid).shards) == 9
    return data, cid


def _corrupt(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))


def _file_size(rec: ChunkRecord, index: int) -> int:
    return shardfile.HEADER_SIZE + rec.shards[index].size


@contextmanager
def _engines(settings: Settings) -> Iterator[tuple[Engine, Engine]]:
    with Engine.open(settings) as one, Engine.open(settings) as two:
        yield one, two


def _run_both(
    first: Callable[[], repair.RepairReport], second: Callable[[], repair.RepairReport]
) -> tuple[repair.RepairReport, repair.RepairReport]:
    """Run the two repairs in threads named "first" and "second"; their reports."""
    reports: dict[str, repair.RepairReport] = {}
    failures: list[BaseException] = []

    def run(name: str, call: Callable[[], repair.RepairReport]) -> None:
        try:
            reports[name] = call()
        except BaseException as exc:  # (reported below, in the test's thread)
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=(n, c), name=n)
        for n, c in (("first", first), ("second", second))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT)
    assert not failures, failures
    return reports["first"], reports["second"]


def _hold_before_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both repairs have examined the chunk before either writes a file (else the second
    could find the first's rewritten file and the chunk intact), and both have written
    theirs before either commits: held outside the commit's transaction (on SQLite that
    holds the write lock)."""
    examined, written = threading.Barrier(2, timeout=WAIT), threading.Barrier(2, timeout=WAIT)
    real_destinations, real_write = inplace._destinations, inplace.write_files

    def destinations(*args: Any, **kwargs: Any) -> dict[int, str]:
        examined.wait()
        return real_destinations(*args, **kwargs)

    def write(*args: Any, **kwargs: Any) -> None:
        real_write(*args, **kwargs)
        written.wait()

    monkeypatch.setattr(inplace, "_destinations", destinations)
    monkeypatch.setattr(inplace, "write_files", write)


def _assert_whole(
    engine: Engine,
    data: bytes,
    cid: str,
    kept: dict[tuple[str, str], int],
    reports: tuple[repair.RepairReport, ...],
    caplog: pytest.LogCaptureFixture,
    *,
    calm: bool = True,
) -> set[tuple[str, str]]:
    """The invariants after the race; returns the orphan files (no row names them)."""
    rec = _record(engine, cid)
    named = {(r.backend, r.key) for r in rec.shards}
    assert len(rec.shards) == 9
    for ref in rec.shards:
        path = _path(engine, ref.backend, ref.key)
        assert path.exists(), f"shard {ref.shard_index}: its row names {path}, which is gone"
        header, payload = shardfile.unpack(path.read_bytes(), rec.chunk_id)
        assert (header.payload_checksum, len(payload)) == (ref.checksum, ref.size)
    for (backend, key), inode in kept.items():  # the intact shards' files: never touched
        assert _path(engine, backend, key).stat().st_ino == inode
    assert engine.core.reader.check(rec) == []
    assert read_all(engine, engine.objects.list()[0]) == data
    # Off the queue, unless a shard is on a dir holding another (queued to be spread). The
    # loser of a race may have queued it so, its shard then moved on by the winner: the next
    # repair finds nothing to spread and takes it off.
    doubled = doubled_up(rec.shards, engine.core.dirs.names)
    with engine.core.db.read() as conn:
        queued = chunk_index.damaged(conn, [cid])
    if queued and doubled is None:
        assert repair.repair(engine).intact == 1
        with engine.core.db.read() as conn:
            queued = chunk_index.damaged(conn, [cid])
    assert queued == (set() if doubled is None else {cid})
    if calm:
        _assert_calm(reports, caplog)
    return _on_disk(engine) - named


def _assert_calm(
    reports: tuple[repair.RepairReport, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing in the reports or the log that would alarm an operator: a benign race."""
    for report in reports:
        assert (report.errors, report.unrecoverable) == (0, [])
    alarming = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert alarming == []
    assert not [r for r in caplog.records if "keeps it queued" in r.getMessage()]


def _intact(rec: ChunkRecord, engine: Engine, bad: set[int]) -> dict[tuple[str, str], int]:
    return {
        (r.backend, r.key): _path(engine, r.backend, r.key).stat().st_ino
        for r in rec.shards
        if r.shard_index not in bad
    }


def test_two_repairs_rebuild_the_same_shard_in_its_own_dir(
    tmp_path: Path,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both write the same file under the same key (one rename replaces the other's) and
    both commit the same row: the chunk is whole, no file left over, off the queue."""
    settings = make_settings(data_dirs=[tmp_path / f"disk{i}" for i in range(9)])
    with _engines(settings) as (one, two):
        data, cid = _one_chunk(one, seed=1)
        rec = _record(one, cid)
        _path(one, rec.shards[3].backend, rec.shards[3].key).unlink()
        kept = _intact(rec, one, {3})
        assert repair.scrub(one).chunks_damaged == 1
        _hold_before_commit(monkeypatch)
        caplog.set_level(logging.INFO)
        reports = _run_both(lambda: repair.repair(one), lambda: repair.repair(two))
        orphans = _assert_whole(one, data, cid, kept, reports, caplog)
        assert orphans == set()
        assert [(r.backend, r.key) for r in _record(one, cid).shards] == [
            (r.backend, r.key) for r in rec.shards
        ]


def test_a_repair_by_hand_beside_the_upkeep(
    tmp_path: Path,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`edgestore repair` by hand does not claim the chunk the server's upkeep has claimed:
    both rebuild its corrupt shard; the one file stays, named, and the chunk leaves the
    queue, with nothing the operator should worry about in either's log."""
    settings = make_settings(data_dirs=[tmp_path / f"disk{i}" for i in range(9)])
    with _engines(settings) as (server, by_hand):
        data, cid = _one_chunk(server, seed=2)
        rec = _record(server, cid)
        _corrupt(_path(server, rec.shards[7].backend, rec.shards[7].key))
        kept = _intact(rec, server, {7})
        assert repair.scrub(server).chunks_damaged == 1
        _hold_before_commit(monkeypatch)
        caplog.set_level(logging.INFO)
        upkeep, hand = _run_both(
            lambda: repair.repair(server, limit=10, cursor=repair.RepairCursor(), due_only=True),
            lambda: repair.repair(by_hand),
        )
        assert upkeep.paused is None and (upkeep.queued, hand.queued) == (1, 1)
        orphans = _assert_whole(server, data, cid, kept, (upkeep, hand), caplog)
        assert orphans == set()


def _full_own_dir(
    stack: ExitStack, tmp_path: Path, make_settings: SettingsFactory, seed: int, bad: int
) -> tuple[Settings, list[Path], bytes, str, int]:
    """A store of 10 data dirs (each a small tmpfs) holding one chunk whose shard `bad` is
    corrupt on a dir now full: its settings, dir paths, data, chunk id and the index of the
    spare dir (the one holding no shard of the chunk)."""
    paths = [tmp_path / f"disk{i}" for i in range(10)]
    for path in paths:
        stack.enter_context(tmpfs(path, "4m"))
    settings = make_settings(data_dirs=paths)
    with Engine.open(settings) as engine:
        data, cid = _one_chunk(engine, seed=seed)
        rec = _record(engine, cid)
        roots = [engine.core.dirs.backends[r.backend].root for r in rec.shards]
        (spare,) = [i for i, p in enumerate(paths) if p not in roots]
        _corrupt(_path(engine, rec.shards[bad].backend, rec.shards[bad].key))
        fill(roots[bad], leave=0)
        assert repair.scrub(engine).chunks_damaged == 1
    return settings, paths, data, cid, spare


def test_two_repairs_move_the_same_shard_off_its_full_dir_to_the_same_dir(
    tmp_path: Path,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both place it on the spare dir under its key: one file, named; the corrupt one gone."""
    with ExitStack() as stack:
        settings, paths, data, cid, spare = _full_own_dir(stack, tmp_path, make_settings, 3, 2)
        with _engines(settings) as (one, two):
            rec = _record(one, cid)
            old = rec.shards[2]
            kept = _intact(rec, one, {2})
            _hold_before_commit(monkeypatch)
            caplog.set_level(logging.INFO)
            reports = _run_both(lambda: repair.repair(one), lambda: repair.repair(two))
            orphans = _assert_whole(one, data, cid, kept, reports, caplog)
            now = _record(one, cid).shards[2]
            assert one.core.dirs.backends[now.backend].root == paths[spare]
            assert now.key == old.key
            assert not _path(one, old.backend, old.key).exists()
            assert orphans == set()


def test_two_repairs_move_the_same_shard_off_its_full_dir_to_different_dirs(
    tmp_path: Path,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spare dir has room for one file: the first repair writes the shard there, and the
    second, looking after it, finds the spare full and writes it to another dir. Whichever
    commits last is named; the other's file is removed or left an orphan, never named."""
    with ExitStack() as stack:
        settings, paths, data, cid, spare = _full_own_dir(stack, tmp_path, make_settings, 4, 5)
        with _engines(settings) as (one, two):
            rec = _record(one, cid)
            old = rec.shards[5]
            fill(paths[spare], leave=_file_size(rec, 5) * 3 // 2)
            kept = _intact(rec, one, {5})
            first_written = threading.Event()
            real_destinations, real_write = inplace._destinations, inplace.write_files

            def destinations(*args: Any, **kwargs: Any) -> dict[int, str]:
                if threading.current_thread().name == "second":
                    assert first_written.wait(WAIT)
                return real_destinations(*args, **kwargs)

            def write(*args: Any, **kwargs: Any) -> None:
                real_write(*args, **kwargs)
                if threading.current_thread().name == "first":
                    first_written.set()

            monkeypatch.setattr(inplace, "_destinations", destinations)
            monkeypatch.setattr(inplace, "write_files", write)
            _hold_before_commit(monkeypatch)  # (its hold comes first: both have examined)
            caplog.set_level(logging.INFO)
            reports = _run_both(lambda: repair.repair(one), lambda: repair.repair(two))
            orphans = _assert_whole(one, data, cid, kept, reports, caplog)
            now = _record(one, cid).shards[5]
            assert now.key == old.key and now.backend != old.backend
            placed = {
                (n, old.key)
                for n, be in one.core.dirs.backends.items()
                if (be.root / old.key).exists()
            }
            assert len(placed) <= 2 and (now.backend, now.key) in placed
            assert orphans <= placed - {(now.backend, now.key)}
            assert not _path(one, old.backend, old.key).exists()
            # The orphan sweep takes the loser's file (once old enough), and nothing else.
            aged = time.time() - gc.ORPHAN_MIN_AGE - 60
            for backend, key in orphans:
                os.utime(_path(one, backend, key), (aged, aged))
            assert gc.collect(one, grace=0).orphan_files_deleted == len(orphans)
            assert _assert_whole(one, data, cid, kept, reports, caplog) == set()


@pytest.mark.parametrize("order", ["cleanup, then commit", "commit, then cleanup"])
def test_a_repair_that_fails_to_write_leaves_the_others_file_alone(
    tmp_path: Path,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    order: str,
) -> None:
    """Shard 1 corrupt on a full dir (both move it to the spare dir under its key), shard 4
    lost from a dir with room for one file: the first repair writes both; the second
    rewrites shard 1's file on the spare, then finds no room for shard 4 and gives up,
    removing what it wrote at a new place. That file is the first's, which its row names
    (or is about to): it must be there once the first has committed, in either order."""
    paths = [tmp_path / f"disk{i}" for i in range(10)]
    with ExitStack() as stack:
        for path in paths:
            stack.enter_context(tmpfs(path, "4m"))
        settings = make_settings(data_dirs=paths)
        with _engines(settings) as (one, two):
            data, cid = _one_chunk(one, seed=5)
            rec = _record(one, cid)
            full, tight = (one.core.dirs.backends[rec.shards[i].backend].root for i in (1, 4))
            _corrupt(_path(one, rec.shards[1].backend, rec.shards[1].key))
            _path(one, rec.shards[4].backend, rec.shards[4].key).unlink()
            fill(full, leave=0)
            fill(tight, leave=_file_size(rec, 4) * 3 // 2)
            kept = _intact(rec, one, {1, 4})
            assert repair.scrub(one).chunks_damaged == 1

            examined = threading.Barrier(2, timeout=WAIT)
            second_placed, first_written = threading.Event(), threading.Event()
            first_done, second_done = threading.Event(), threading.Event()
            real_destinations, real_write = inplace._destinations, inplace.write_files

            def destinations(*args: Any, **kwargs: Any) -> dict[int, str]:
                examined.wait()
                if threading.current_thread().name == "first":
                    assert second_placed.wait(WAIT)
                placed = real_destinations(*args, **kwargs)
                if threading.current_thread().name == "second":
                    second_placed.set()
                return placed

            def write(*args: Any, **kwargs: Any) -> None:
                if threading.current_thread().name == "first":
                    real_write(*args, **kwargs)
                    first_written.set()
                    if order == "cleanup, then commit":
                        assert second_done.wait(WAIT)
                    return
                assert (first_written if order == "cleanup, then commit" else first_done).wait(WAIT)
                try:
                    real_write(*args, **kwargs)
                finally:
                    second_done.set()

            def first() -> repair.RepairReport:
                try:
                    return repair.repair(one)
                finally:
                    first_done.set()

            monkeypatch.setattr(inplace, "_destinations", destinations)
            monkeypatch.setattr(inplace, "write_files", write)
            caplog.set_level(logging.INFO)
            won, lost = _run_both(first, lambda: repair.repair(two))
            assert (won.repaired, won.errors, lost.repaired, lost.errors) == (1, 0, 0, 1)
            orphans = _assert_whole(one, data, cid, kept, (won, lost), caplog, calm=False)
            assert orphans == set()
