"""Connecting to the metadata database (SQLite or PostgreSQL) and migrating it at start.

SQLite runs in WAL mode with synchronous=FULL (a commit is on disk when it returns, which
invariant 1 needs), foreign keys on, and write transactions that take the write lock at BEGIN
so concurrent writers queue instead of failing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError

from edgestore.errors import ConfigError, StorageUnavailable

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any constant works: it only has to be the same for every edgestore node sharing a database.
_PG_MIGRATION_LOCK = 0x6564_6765  # "edge"


class Database:
    """A SQLAlchemy engine plus the transaction helpers the metadata queries use."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(
                f"database_url (EDGESTORE_DATABASE_URL) is not a URL: {exc}"
            ) from None
        self.dialect = parsed.get_backend_name()
        # What error messages call the database: a SQLite file's path (a PostgreSQL URL may
        # hold a password).
        self._name = "metadata database"
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                self._name = f"metadata database {parsed.database}"
            # No limit on connections beyond the pool: writers queue on SQLite's lock while
            # holding one, and at the default 5 + 10 a dozen of them waiting out a long write
            # left no connection for reads, which WAL would let through at once.
            self.engine: Engine = sa.create_engine(
                url,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                pool_size=pool_size,
                max_overflow=-1,
            )
            _configure_sqlite(self.engine)
        elif self.dialect == "postgresql":
            self.engine = sa.create_engine(
                url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True
            )
        else:
            raise ConfigError(
                f"database_url (EDGESTORE_DATABASE_URL): unsupported database {self.dialect!r}; "
                "use sqlite:///PATH or postgresql+psycopg://…"
            )

    def close(self) -> None:
        self.engine.dispose()

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (a consistent snapshot on PostgreSQL and in WAL mode)."""
        with _translate_errors(self._name), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction: committed on normal exit, rolled back on any exception.

        `durable=False` skips the commit's own flush to disk (SQLite synchronous=NORMAL,
        PostgreSQL synchronous_commit=off). The write-ahead log is sequential, so the next
        durable commit flushes it too: use it only for rows whose loss before then is harmless.
        """
        with (
            _translate_errors(self._name),
            self.engine.connect().execution_options(
                sqlite_immediate=True, sqlite_durable=durable
            ) as conn,
            conn.begin(),
        ):
            if not durable and self.is_postgres:
                conn.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
            yield conn

    def insert(self, table: sa.Table) -> Any:
        """A dialect-specific INSERT, so callers can use on_conflict_do_nothing/update."""
        if self.is_postgres:
            return postgresql.insert(table)
        return sqlite.insert(table)

    # --- schema -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (safe with several nodes starting)."""
        # Before the import: alembic logs a line per plugin it sets up as it loads, at INFO.
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per start is plenty
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with _translate_errors(self._name), self.engine.connect() as conn:
            if self.is_postgres:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
            else:
                # The whole upgrade in one transaction holding the write lock from its BEGIN:
                # in a deferred one, two processes opening a fresh home at once (`serve` and a
                # CLI command) both read "no schema", and the second to write failed with
                # "database is locked" (its snapshot stale). Now it waits, then finds it done.
                conn.execution_options(sqlite_immediate=True).begin()
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
            finally:
                if self.is_postgres:
                    conn.execute(
                        sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK}
                    )
                    conn.commit()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # 1 MiB of page cache per connection (default 2 MiB): the OS caches the file anyway,
        # and a busy server holds a dozen connections.
        cur.execute("PRAGMA cache_size=-1024")
        cur.close()
        record.info["sqlite_durable"] = True

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        durable = options.get("sqlite_durable", True)
        # The DBAPI connection's setting persists: set it only when it changes (a statement
        # less in most transactions; a chunk lookup's read took 310-340 -> 170-260 us of CPU).
        info = conn.connection.info
        if info.get("sqlite_durable") is not durable:
            conn.exec_driver_sql(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            info["sqlite_durable"] = durable
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")


@contextmanager
def _translate_errors(name: str) -> Iterator[None]:
    """Errors an operator must see as such, not as a traceback or an HTTP 500: the database
    unreachable, busy past the timeout (503: retry), or a file that is not SQLite's."""
    try:
        yield
    except OperationalError as exc:
        if _is_connection_failure(exc):
            raise StorageUnavailable(f"{name} unavailable: {exc.orig}") from exc
        if "database is locked" in str(exc.orig).lower():
            raise StorageUnavailable(
                f"{name} is busy: another writer held it for over "
                f"{SQLITE_BUSY_TIMEOUT_MS / 1000:g} s; retry"
            ) from exc
        raise
    except DatabaseError as exc:
        if "file is not a database" in str(exc.orig).lower():
            raise StorageUnavailable(
                f"{name} is not a SQLite database, or is damaged: {exc.orig}"
            ) from exc
        raise


def _is_connection_failure(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return exc.connection_invalidated or any(
        s in text
        for s in ("connection refused", "could not connect", "unable to open database", "disk i/o")
    )


def now() -> float:
    return time.time()
