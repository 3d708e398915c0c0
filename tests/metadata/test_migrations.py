"""The Alembic migrations build exactly the schema in metadata/schema.py, on both databases."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.engine.native import ManifestChunk
from edgestore.errors import StoreParamsMismatch
from edgestore.maintenance import gc
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import keys, quotas, totals
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.db import MIGRATIONS_DIR, SCHEMA_HEAD, Database
from edgestore.metadata.schema import metadata
from tests import stores
from tests.conftest import SettingsFactory, reset_pg
from tests.helpers import SMALL_CHUNKS, KiB, blocks_of, random_bytes, read_all
from tests.native import chunks_of


def test_migrations_match_the_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()  # idempotent: a second start changes nothing
        with db.engine.connect() as conn:
            opts = {"compare_type": True, "compare_server_default": True}
            ctx = MigrationContext.configure(conn, opts=opts)
            diff = compare_metadata(ctx, metadata)
            assert diff == [], diff
            tables = set(sa.inspect(conn).get_table_names())
        assert {"chunks", "shards", "objects", "object_versions", "manifests", "uploads"} <= tables
    finally:
        db.close()


def test_sqlite_runs_durable_wal(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.close()


def test_a_start_logs_no_alembic_chatter(tmp_path) -> None:
    """alembic logs a line per plugin at INFO as it is imported; a server logging at INFO
    (the default) must not print seven of them at every start. In a fresh process, since the
    import happens once."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
        "from edgestore.metadata.db import Database\n"
        f"db = Database('sqlite:///{tmp_path / 'm.db'}')\n"
        "db.migrate()\n"
        "db.close()\n"
        "print('migrated')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "migrated" in out.stdout
    assert "alembic" not in out.stdout + out.stderr


@contextmanager
def _migrated_to(db_url: str, revision: str) -> Iterator[tuple[Connection, Callable[[str], None]]]:
    """A connection to the database migrated to `revision` (for rows an older release wrote),
    and a function that migrates it on, each step committed."""
    db = Database(db_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn

            def upgrade(to: str) -> None:
                command.upgrade(cfg, to)
                conn.commit()

            upgrade(revision)
            yield conn, upgrade
    finally:
        db.close()


def test_the_version_counter_starts_from_each_objects_highest_version(db_url: str) -> None:
    """Migration 0005 gives existing objects their highest number, so the next version of an
    object whose versions are 1 and 3 is 4, not 2 and not 4 again after a delete."""
    with _migrated_to(db_url, "0004") as (conn, upgrade):
        oid, other = str(uuid.uuid4()), str(uuid.uuid4())
        for o, key in ((oid, "a"), (other, "b")):
            conn.execute(
                sa.text(
                    "INSERT INTO objects (object_id, bucket, key, created_at) "
                    "VALUES (:o, 'mig', :k, 0)"
                ),
                {"o": o, "k": key},
            )
        for number in (1, 3):
            conn.execute(
                sa.text(
                    "INSERT INTO object_versions (version_id, object_id, version, size, "
                    "manifest_digest, user_metadata, state, created_at) VALUES "
                    "(:v, :o, :n, 0, 'd', '{}', 'committed', 0)"
                ),
                {"v": str(uuid.uuid4()), "o": oid, "n": number},
            )
        conn.commit()
        upgrade("head")
        rows = conn.execute(
            sa.text("SELECT key, last_version FROM objects WHERE bucket = 'mig'")
        ).all()
        counters = {key: last for key, last in rows}
    assert counters == {"a": 3, "b": 0}


def test_bucket_totals_are_filled_from_the_existing_versions(db_url: str) -> None:
    """Migration 0011 fills `bucket_totals` from the versions already stored: a store at 0010
    with versions in two buckets (one object with two) reads the same usage after it."""
    with _migrated_to(db_url, "0010") as (conn, upgrade):
        for bucket, key, sizes in (("a", "x", (100, 20)), ("a", "y", (3,)), ("b", "z", (7,))):
            oid = str(uuid.uuid4())
            conn.execute(
                sa.text(
                    "INSERT INTO objects (object_id, bucket, key, created_at, last_version) "
                    "VALUES (:o, :b, :k, 0, :n)"
                ),
                {"o": oid, "b": bucket, "k": key, "n": len(sizes)},
            )
            for number, size in enumerate(sizes, 1):
                conn.execute(
                    sa.text(
                        "INSERT INTO object_versions (version_id, object_id, version, size, "
                        "manifest_digest, user_metadata, state, created_at) VALUES "
                        "(:v, :o, :n, :s, 'd', '{}', 'committed', 0)"
                    ),
                    {"v": str(uuid.uuid4()), "o": oid, "n": number, "s": size},
                )
        conn.commit()
        upgrade("head")
        rows = conn.execute(sa.text("SELECT bucket, bytes, versions FROM bucket_totals")).all()
        assert {r.bucket: (r.bytes, r.versions) for r in rows} == {"a": (123, 3), "b": (7, 1)}
        assert totals.mismatches(conn) == {}
        assert quotas.bucket_usage(conn, "a") == 123


# Migrates the database at argv[1]; with "hold", pauses just before its first CREATE TABLE,
# saying so on stdout, so another process can start meanwhile.
_MIGRATE = """
import sys, time
from sqlalchemy import event
from edgestore.metadata.db import Database
db = Database(sys.argv[1])
if sys.argv[2:] == ["hold"]:
    held = []
    @event.listens_for(db.engine, "before_cursor_execute")
    def hold(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("CREATE TABLE") and not held:
            held.append(1)
            print("held", flush=True)
            time.sleep(1.0)
db.migrate()
db.close()
print("migrated", flush=True)
"""


def test_two_processes_migrating_a_fresh_database_at_once_both_succeed(db_url: str) -> None:
    """`serve` and a CLI command started together on a fresh home both migrate. The first is
    held just before its first CREATE TABLE while the second starts: on SQLite the second
    used to read "no schema" in a deferred transaction of its own, and one of the two then
    failed with "database is locked"."""
    cmd = [sys.executable, "-c", _MIGRATE, db_url]
    with subprocess.Popen(
        [*cmd, "hold"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as first:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "held"
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        rest, err = first.communicate(timeout=60)
    assert (second.returncode, second.stderr[-300:]) == (0, "")
    assert (first.returncode, rest.strip(), err[-300:]) == (0, "migrated", "")
    db = Database(db_url)
    try:
        with db.read() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        db.close()


@pytest.mark.parametrize(
    "release",
    ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0009", "0010", "0011", "0012"],
)
def test_a_store_of_an_older_release_upgrades_and_every_row_still_works(
    release: str, make_settings: SettingsFactory
) -> None:
    """A store written by the code at each earlier head: objects with versions, a tus upload
    half done, a native session holding pinned chunks, an API key. The rows are made by the
    current engine and the schema taken back to `release` (which drops the later columns, as
    they never existed there), then the next start upgrades it: every row must still read,
    resume, finalize and be collected."""
    settings = make_settings(**SMALL_CHUNKS)
    old, new, tail = (random_bytes(700 * KiB, seed=s) for s in (1, 2, 3))
    native_data = random_bytes(300 * KiB, seed=4)
    parts = chunks_of(native_data)
    with Engine.open(settings) as eng:
        first = eng.put(blocks_of(old), key="obj")
        eng.put(blocks_of(new), key="obj")
        up = eng.uploads.create(length=len(tail), key="resumed")
        eng.uploads.append(up.upload_id, 0, blocks_of(tail[: 400 * KiB]))
        session = eng.native.create(size=len(native_data), key="native")
        eng.native.put_chunk(session.upload_id, *parts[0])
        if release >= "0002":
            with eng.core.db.write() as conn:
                key, secret = keys.create(conn, name="old key", scopes={"read"})
        damaged = eng.objects.manifest(first)[0].chunk_id
        with eng.core.db.write() as conn:
            assert chunk_index.queue_repair(eng.core.db, conn, damaged, "test", [0])
    stores.take_schema_back_to(settings.resolved_database_url, release)

    with Engine.open(settings) as eng:  # the upgrade, as a new release's first start
        with eng.core.db.read() as conn:  # queued before: due for the upkeep's repair now
            assert chunk_index.queued(conn, None, 10, due_at=time.time()) == [damaged]
        versions = eng.objects.versions(first.object_id)
        assert [read_all(eng, v) for v in versions] == [new, old]
        rec = eng.uploads.append(up.upload_id, 400 * KiB, blocks_of(tail[400 * KiB :]))
        assert read_all(eng, eng.objects.by_version_id(rec.version_id)) == tail
        for cid, raw in parts[1:]:
            eng.native.put_chunk(session.upload_id, cid, raw)
        manifest = [ManifestChunk(cid, len(raw)) for cid, raw in parts]
        done = eng.native.finalize(
            session.upload_id, manifest, hashlib.sha256(native_data).hexdigest()
        )
        assert read_all(eng, done.version) == native_data
        again = eng.put(blocks_of(old), key="obj")  # a new number, after the old ones
        assert again.version == 3
        if release >= "0002":
            with eng.core.db.read() as conn:
                assert keys.by_hash(conn, keys.hash_secret(secret)) == key
        eng.objects.delete(versions[1])
        gc.collect(eng, grace=0)
        with eng.core.db.read() as conn:
            assert reference_mismatches(conn) == []
            assert totals.mismatches(conn) == {}  # counted from the old rows (0011), then kept
        assert read_all(eng, eng.objects.by_version_id(again.version_id)) == old


def test_a_store_migrated_by_a_newer_release_is_refused_clearly(db_url: str) -> None:
    """An upgrade rolled back: the older release found a revision it does not know, and its
    start died in alembic's "Can't locate revision" traceback. It must say what happened,
    and leave the store as it is."""
    db = Database(db_url)
    try:
        db.migrate()
        with db.write() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
        with pytest.raises(StoreParamsMismatch, match="revision 0099, newer than this"):
            db.migrate()
        with db.read() as conn:  # untouched, and the migration lock released (PostgreSQL)
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == (
                "0099"
            )
            if db.is_postgres:
                held = (
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
                assert conn.execute(sa.text(held)).scalar() == 0
    finally:
        db.close()


def test_schema_head_is_the_newest_migration() -> None:
    """A store at SCHEMA_HEAD is opened without alembic: a new migration must move it."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD


def test_a_store_at_the_head_is_opened_without_alembic(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every start and CLI command opens the store; alembic's check that nothing is to do
    cost ~0.5 s of CPU each time. One behind the head still goes through alembic."""
    db = Database(db_url)
    try:
        db.migrate()

        def refuse(*_args: object, **_kw: object) -> None:
            raise AssertionError("alembic ran")

        monkeypatch.setattr(command, "upgrade", refuse)
        db.migrate()
        with db.write() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0007'"))
        with pytest.raises(AssertionError, match="alembic ran"):
            db.migrate()
    finally:
        db.close()


def _snapshot(url: str) -> list[str]:
    """Everything a store's database holds: schema, rows, sequences (SQLite: its dump)."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            if conn.dialect.name == "sqlite":
                return list(conn.connection.dbapi_connection.iterdump())  # type: ignore[union-attr]
            snap = [conn.execute(stores._FINGERPRINT).scalar_one()]
            for table in sorted(sa.inspect(conn).get_table_names()):
                rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
                snap += sorted(f"{table} {tuple(r)}" for r in rows)
            for seq in conn.execute(stores._SEQUENCES).scalars():
                snap.append(f"{seq} {conn.execute(sa.text(f'SELECT * FROM {seq}')).one()}")
            return snap
    finally:
        eng.dispose()


def test_the_engine_tests_stores_are_what_a_migration_makes(
    db_url: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The engine fixtures get a copy of a migrated template, not a migration (tests/stores.py,
    for speed): after a test wrote to its store, the next copy must equal a new migration's."""
    db = Database(db_url)
    try:
        db.migrate()
    finally:
        db.close()
    migrated = _snapshot(db_url)
    settings = load_settings(home=tmp_path / "home", database_url=db_url)
    with Engine.open(settings) as eng:  # rows in most tables, store parameters, an epoch
        eng.put(blocks_of(random_bytes(300 * KiB, seed=5)), key="k")
        eng.uploads.create(length=10, key="open")
    if db_url.startswith("sqlite"):
        path = Path(sa.make_url(db_url).database or "")
        for leftover in path.parent.glob(path.name + "*"):  # the file, and any -wal / -shm
            leftover.unlink()
        stores.sqlite_store(path, tmp_path_factory.getbasetemp())
    else:
        stores.pg_store(db_url, reset_pg)  # the template: made now, or earlier in this process
        again = load_settings(home=tmp_path / "home2", database_url=db_url)  # a new store
        with Engine.open(again) as eng:
            eng.put(blocks_of(random_bytes(300 * KiB, seed=6)), key="k")
        assert _snapshot(db_url) != migrated
        stores.pg_store(db_url, reset_pg)  # the copy
    assert _snapshot(db_url) == migrated
