"""The Alembic migrations build exactly the schema in metadata/schema.py, on both databases."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from edgestore.metadata.db import Database
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
