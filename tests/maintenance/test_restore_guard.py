"""The restore guard: after an older metadata backup is restored, gc deletes no shard (the
chunks written since have shards but no rows) until the operator accepts the restore."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgestore.config import Settings
from edgestore.engine import Engine
from edgestore.errors import MetadataBehind
from edgestore.maintenance import backup, gc, restore_guard
from edgestore.metadata import epoch, pgdump
from edgestore.metadata.backup import snapshot_sqlite
from edgestore.storage.datadirs import read_epoch
from tests.backups import age_files, restore_metadata, shard_files
from tests.conftest import SettingsFactory
from tests.helpers import SMALL_CHUNKS, MiB, blocks_of, random_bytes, read_all


def _settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(maintenance_interval_seconds=0, **SMALL_CHUNKS)


def test_gc_refuses_after_an_older_backup_is_restored_until_accepted(
    make_settings: SettingsFactory, tmp_path: Path, db_url: str
) -> None:
    settings = _settings(make_settings)
    shards_root = settings.home / "shards"
    kept = random_bytes(1 * MiB, seed=1)
    with Engine.open(settings) as eng:
        v_kept = eng.put(blocks_of(kept), key="kept")
        saved = backup.take(eng, tmp_path / "meta.backup")
        assert saved.contents.versions == 1 and saved.epoch == saved.contents.epoch + 1
        before = shard_files(shards_root)
        eng.put(blocks_of(random_bytes(1 * MiB, seed=2)), key="later")
    later = shard_files(shards_root) - before
    assert later
    restore_metadata(db_url, tmp_path / "meta.backup")
    age_files(shards_root)  # past the orphan sweep's minimum age: only the guard spares them

    with Engine.open(settings) as eng:
        with pytest.raises(MetadataBehind, match="--accept-restored-metadata"):
            gc.collect(eng, grace=0)
        assert shard_files(shards_root) >= later  # nothing deleted
        with pytest.raises(MetadataBehind):  # and it stays refused: no round advanced it
            gc.collect(eng, grace=0)
        assert read_all(eng, v_kept) == kept  # what the backup holds reads back
        report = gc.collect(eng, grace=0, accept_restored=True)
        assert report.orphan_files_deleted == len(later)
        assert shard_files(shards_root) == before
        assert read_all(eng, v_kept) == kept
        assert gc.collect(eng, grace=0).orphan_files_deleted == 0  # normal gc again


def test_every_gc_advances_the_epoch_in_the_database_then_every_data_dir(
    make_settings: SettingsFactory,
) -> None:
    with Engine.open(_settings(make_settings)) as eng:
        first = gc.collect(eng, orphans=False).epoch
        second = gc.collect(eng, orphans=False).epoch
        assert second == first + 1
        with eng.core.db.read() as conn:
            assert epoch.current(conn) == second
        assert {read_epoch(b) for b in eng.core.dirs.backends.values()} == {second}


def test_an_external_backup_is_recognised_once_a_gc_round_has_run_since(
    make_settings: SettingsFactory, tmp_path: Path, db_url: str
) -> None:
    """A copy taken by other means (sqlite3 .backup, pg_dump by hand) records no advance;
    the next gc round does it."""
    settings = _settings(make_settings)
    copy = tmp_path / "meta.backup"
    with Engine.open(settings) as eng:
        eng.put(blocks_of(random_bytes(256 * 1024, seed=3)), key="a")
        with eng.core.db.read() as conn:
            taken_at = epoch.current(conn)
        if eng.core.db.is_postgres:
            pgdump.dump(eng.core.db.url, copy)
        else:
            assert eng.core.db.path is not None
            snapshot_sqlite(eng.core.db.path, copy)
        gc.collect(eng, orphans=False)
        assert restore_guard.behind(eng) is None
    restore_metadata(db_url, copy)
    with Engine.open(settings) as eng:
        found = restore_guard.behind(eng)
        assert found is not None and found.details["db_epoch"] == taken_at


def test_nodes_advancing_at_once_never_see_themselves_behind(
    make_settings: SettingsFactory,
) -> None:
    """Two nodes on one database and one set of data dirs, each running gc rounds: the
    guard reads the dirs before the database, which an advance writes first."""
    settings = _settings(make_settings)
    failures: list[BaseException] = []
    with Engine.open(settings) as a, Engine.open(settings) as b:

        def rounds(eng: Engine) -> None:
            try:
                for _ in range(15):
                    gc.collect(eng, orphans=False)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=rounds, args=(e,)) for e in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        with a.core.db.read() as conn:
            assert epoch.current(conn) == 30
