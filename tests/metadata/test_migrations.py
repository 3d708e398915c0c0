"""The Alembic migrations build exactly the schema in metadata/schema.py, on both databases."""

from __future__ import annotations

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
