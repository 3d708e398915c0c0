"""Empty stores at the schema head, made without migrating each time.

A test that only needs a working store (the `engine`, `small_engine` and `make_settings`
fixtures) used to migrate a new database from scratch: ~0.1 s on SQLite and 0.3-1 s on
PostgreSQL, a third of tests/engine's time. Each test process now migrates one template per
database once and gives every such test a copy of it: the SQLite file copied; the PostgreSQL
tables emptied, sequences reset and the migrations' own rows put back. A test of migrations
asks for `db_url` alone and still gets an empty database.

The copy is exactly what a fresh migration leaves: on PostgreSQL the schema's fingerprint
(columns, indexes, constraints, sequences, triggers, the alembic version) must match the
template's, else (a test took the schema back or changed it) the database is migrated anew.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from edgestore.metadata.db import Database
from edgestore.metadata.schema import metadata

_FINGERPRINT = sa.text(
    """
    SELECT md5(coalesce(string_agg(x, '|' ORDER BY x), '')) FROM (
      SELECT format('c %s.%s %s %s %s %s', table_name, column_name, ordinal_position,
                    data_type, is_nullable, column_default) AS x
        FROM information_schema.columns WHERE table_schema = 'public'
      UNION ALL SELECT 'i ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
      UNION ALL SELECT format('k %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
      UNION ALL SELECT 's ' || sequence_name FROM information_schema.sequences
        WHERE sequence_schema = 'public'
      UNION ALL SELECT format('t %s %s', tgrelid::regclass, tgname) FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace
      UNION ALL SELECT 'v ' || version_num FROM alembic_version
    ) s
    """
)
_TABLES = sa.text(
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' "
    "AND table_name <> 'alembic_version'"
)

_SEQUENCES = sa.text(
    "SELECT sequence_schema || '.' || sequence_name FROM information_schema.sequences "
    "WHERE sequence_schema = 'public'"
)


@dataclass(frozen=True, slots=True)
class _PgTemplate:
    fingerprint: str
    tables: tuple[str, ...]  # in an order that deletes rows before the rows they reference
    sequences: tuple[tuple[str, int, bool], ...]  # as the migrations left them
    rows: dict[str, list[dict[str, Any]]]  # what the migrations themselves inserted


_pg_templates: dict[str, _PgTemplate] = {}
_sqlite_template: Path | None = None


def sqlite_store(path: Path, cache: Path) -> None:
    """A new SQLite store at `path`: a copy of this process's migrated template (in `cache`)."""
    global _sqlite_template
    if _sqlite_template is None or not _sqlite_template.exists():
        template = cache / f"store-template-{os.getpid()}.db"
        db = Database(f"sqlite:///{template}")
        try:
            db.migrate()
        finally:
            db.close()
        with sqlite3.connect(template) as conn:  # everything in the main file: copy it alone
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _sqlite_template = template
    shutil.copyfile(_sqlite_template, path)


def pg_store(url: str, reset_schema: Any) -> None:
    """The PostgreSQL database at `url` as a fresh migration leaves it. `reset_schema(url)`
    empties it completely (the slow path: then it is migrated and becomes the template)."""
    template = _pg_templates.get(url)
    eng = sa.create_engine(url)
    try:
        if template is not None:
            with eng.begin() as conn:
                try:
                    same = conn.execute(_FINGERPRINT).scalar_one() == template.fingerprint
                except DBAPIError:
                    same = False
            if same:
                with eng.begin() as conn:  # DELETE: TRUNCATE of 15 tables takes ~10x longer
                    for table in template.tables:
                        conn.execute(sa.text(f'DELETE FROM "{table}"'))
                    for seq, value, called in template.sequences:
                        setval = sa.text("SELECT setval(:s, :v, :c)")
                        conn.execute(setval, {"s": seq, "v": value, "c": called})
                    for table in reversed(template.tables):  # referenced rows first
                        for row in template.rows.get(table, ()):
                            cols = ", ".join(f'"{c}"' for c in row)
                            marks = ", ".join(f":p{i}" for i in range(len(row)))
                            conn.execute(
                                sa.text(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})'),
                                {f"p{i}": v for i, v in enumerate(row.values())},
                            )
                return
        reset_schema(url)
        db = Database(url)
        try:
            db.migrate()
        finally:
            db.close()
        with eng.begin() as conn:
            found = set(conn.execute(_TABLES).scalars())
            order = [t.name for t in reversed(metadata.sorted_tables) if t.name in found]
            tables = (*order, *sorted(found - set(order)))  # rows that others reference last
            rows = {
                t: [dict(r) for r in conn.execute(sa.text(f'SELECT * FROM "{t}"')).mappings()]
                for t in tables
            }
            _pg_templates[url] = _PgTemplate(
                conn.execute(_FINGERPRINT).scalar_one(),
                tables,
                tuple(
                    (seq, *conn.execute(sa.text(f"SELECT last_value, is_called FROM {seq}")).one())
                    for seq in conn.execute(_SEQUENCES).scalars()
                ),
                {t: r for t, r in rows.items() if r},
            )
    finally:
        eng.dispose()


def take_schema_back_to(url: str, revision: str) -> None:
    """A store's schema as an older release left it, its rows as they are: the upgrade tests'
    starting point. On a plain connection (no foreign keys on SQLite: taking a column back
    out rebuilds its table, which must not cascade)."""
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext

    from edgestore.metadata.db import MIGRATIONS_DIR

    plain = sa.create_engine(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with plain.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
            conn.commit()
            assert MigrationContext.configure(conn).get_current_revision() == revision
    finally:
        plain.dispose()
