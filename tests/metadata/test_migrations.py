"""The Alembic migrations build exactly the schema in metadata/schema.py, on both databases."""

from __future__ import annotations

import subprocess
import sys
import uuid

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from edgestore.metadata.db import MIGRATIONS_DIR, Database
from edgestore.metadata.schema import metadata


def test_migrations_match_the_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()  # idempotent: a second start changes nothing
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
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


def test_the_version_counter_starts_from_each_objects_highest_version(db_url: str) -> None:
    """Migration 0005 gives existing objects their highest number, so the next version of an
    object whose versions are 1 and 3 is 4, not 2 and not 4 again after a delete."""
    db = Database(db_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
            conn.commit()
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
            command.upgrade(cfg, "head")
            conn.commit()
            rows = conn.execute(
                sa.text("SELECT key, last_version FROM objects WHERE bucket = 'mig'")
            ).all()
            counters = {key: last for key, last in rows}
        assert counters == {"a": 3, "b": 0}
    finally:
        db.close()


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
