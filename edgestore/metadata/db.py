"""Connecting to the metadata database (SQLite or PostgreSQL) and migrating it at start.

SQLite runs in WAL mode with synchronous=FULL (a commit is on disk when it returns, which
invariant 1 needs), foreign keys on, and write transactions that take the write lock at BEGIN
so concurrent writers queue instead of failing.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError

from edgestore.errors import (
    ConfigError,
    StorageFull,
    StorageUnavailable,
    StoreParamsMismatch,
    TransactionConflict,
)
from edgestore.metadata import clock

T = TypeVar("T")
log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The newest migration's revision (tests/metadata/test_migrations.py checks it is alembic's
# head): a store already there is opened without alembic (see Database._at_head).
SCHEMA_HEAD = "0014"
# How long a SQLite writer waits for the write lock another connection or process holds
# (`serve` and CLI commands share the file) before failing as "busy" (503 with Retry-After,
# exit code 6); the URL's `?timeout=SECONDS` sets another.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Bookkeeping a read does (a chunk's last-read time) waits at most this for the lock, then is
# skipped: a download must not wait for, or fail behind, another process's writes.
BOOKKEEPING_LOCK_WAIT_MS = 50
# The cleanup of a failed write (a lease released, a local put's upload terminated) waits at
# most this for the lock, not the whole busy timeout again: the failure is often that lock
# held by another process, and the lease lapses and gc expires the upload without it.
CLEANUP_LOCK_WAIT_MS = 1000
# When a client told the database was busy should try again (seconds).
BUSY_RETRY_AFTER_S = 1
# libpq settings a PostgreSQL URL gets unless it sets them itself. Without them a host that
# drops packets (or accepts and never answers) held a start, a request or /readyz for as long
# as TCP retries (minutes) or forever; now a connection attempt gives up after
# PG_CONNECT_TIMEOUT_S, and an established connection whose server vanished fails within
# about a minute (keepalives when idle, tcp_user_timeout when a query was sent unanswered).
PG_CONNECT_TIMEOUT_S = 10
PG_TCP_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # milliseconds
}
# How long a statement waits for a row or table lock before failing as "busy" (503: retry),
# as a SQLite writer waits for the write lock; without it a request queued behind a stuck
# lock holder hung with its client. Migrations wait as long as they must (see migrate).
PG_LOCK_TIMEOUT_MS = SQLITE_BUSY_TIMEOUT_MS
# How long a transaction waits for one of the pool's connections when all are in use.
PG_POOL_TIMEOUT_S = 30
# PostgreSQL fails one of two transactions to break a deadlock (40P01) or, above READ
# COMMITTED, a serialization conflict (40001); `Database.transact` runs such a transaction
# this many times in all, a few milliseconds apart, before the error reaches the client.
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
CONFLICT_ATTEMPTS = 3
# A SQLite database whose filesystem has less room than this is reported full by check_ready
# (its write-ahead log grows with every transaction until the next checkpoint).
SQLITE_MIN_FREE_BYTES = 8 * 1024 * 1024
# Any constant works: it only has to be the same for every edgestore node sharing a database.
_PG_MIGRATION_LOCK = 0x6564_6765  # "edge"


class Database:
    """A SQLAlchemy engine plus the transaction helpers the metadata queries use."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        try:
            parsed = sa.make_url(url)
        except (sa.exc.ArgumentError, ValueError) as exc:
            # ValueError: a port that is not a number (SQLAlchemy lets int() fail). Neither
            # message holds the URL, whose password must not reach a log.
            raise ConfigError(
                f"database_url (EDGESTORE_DATABASE_URL) is not a valid URL: {exc}"
            ) from None
        self.dialect = parsed.get_backend_name()
        # What error messages call the database: a SQLite file's path (a PostgreSQL URL may
        # hold a password).
        self._name = "metadata database"
        self._path: Path | None = None  # a SQLite database's file
        self._lock_wait_ms = PG_LOCK_TIMEOUT_MS
        if self.dialect == "sqlite":
            if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
                # Each pooled connection would be a database of its own, gone at exit (and
                # SQLAlchemy's pool for it refused our pool settings with a TypeError).
                raise ConfigError(
                    "database_url (EDGESTORE_DATABASE_URL): an in-memory SQLite database "
                    "would lose every object at exit; use sqlite:///PATH"
                )
            self._name = f"metadata database {parsed.database}"
            self._path = Path(parsed.database)
            self._lock_wait_ms = _sqlite_busy_ms(parsed.query.get("timeout"))
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file in the way, no permission: not a traceback
                raise StorageUnavailable(
                    f"{self._name}: cannot create its directory: {exc.strerror}"
                ) from exc
            # No limit on connections beyond the pool: writers queue on SQLite's lock while
            # holding one, and at the default 5 + 10 a dozen of them waiting out a long write
            # left no connection for reads, which WAL would let through at once.
            self.engine: Engine = _create_engine(
                url,
                connect_args={"timeout": self._lock_wait_ms / 1000},
                pool_size=pool_size,
                max_overflow=-1,
            )
            _configure_sqlite(self.engine, self._lock_wait_ms)
        elif self.dialect == "postgresql":
            wanted: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S, **PG_TCP_SETTINGS}
            connect_args = {k: v for k, v in wanted.items() if k not in parsed.query}
            options = str(parsed.query.get("options", ""))
            if "lock_timeout" not in options:
                connect_args["options"] = f"{options} -c lock_timeout={PG_LOCK_TIMEOUT_MS}".strip()
            self.engine = _create_engine(
                url,
                connect_args=connect_args,
                pool_size=pool_size,
                max_overflow=pool_size * 2,
                pool_timeout=PG_POOL_TIMEOUT_S,
                pool_pre_ping=True,
            )
            clock.install(self.engine)
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

    @property
    def path(self) -> Path | None:
        """A SQLite database's file (None on PostgreSQL): a message to a client names it
        without its directory."""
        return self._path

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one snapshot in SQLite's WAL mode; on PostgreSQL (READ
        COMMITTED) each statement sees what was committed when it began."""
        with (
            _translate_errors(self._name, self._lock_wait_ms, self._path),
            self.engine.connect() as conn,
            conn.begin(),
        ):
            yield conn

    @contextmanager
    def write(
        self, *, durable: bool = True, lock_wait_ms: int | None = None
    ) -> Iterator[Connection]:
        """A write transaction: committed on normal exit, rolled back on any exception.

        `durable=False` skips the commit's own flush to disk (SQLite synchronous=NORMAL,
        PostgreSQL synchronous_commit=off). The write-ahead log is sequential, so the next
        durable commit flushes it too: use it only for rows whose loss before then is harmless.
        `lock_wait_ms`: how long to wait for a lock another writer holds before failing as
        busy (the database's setting by default).
        """
        wait = self._lock_wait_ms if lock_wait_ms is None else lock_wait_ms
        with (
            _translate_errors(self._name, wait, self._path),
            self.engine.connect().execution_options(
                sqlite_immediate=True, sqlite_durable=durable, sqlite_busy_ms=wait
            ) as conn,
            conn.begin(),
        ):
            if self.is_postgres:
                if not durable:
                    conn.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
                if lock_wait_ms is not None:
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = {int(lock_wait_ms)}"))
            yield conn

    def try_write(self, work: Callable[[Connection], None]) -> bool:
        """`work(conn)` in a non-durable write transaction unless the lock it needs is not
        free within BOOKKEEPING_LOCK_WAIT_MS: then nothing is done and False returned.

        For bookkeeping a reader does on the side (when chunks were last read): with the
        write lock held by another process (a CLI `gc`, a second server, a long upload's
        checkpoint), a download waited 30 s for it and then failed with a 503 although WAL
        lets every read through.
        """
        try:
            with self.write(durable=False, lock_wait_ms=BOOKKEEPING_LOCK_WAIT_MS) as conn:
                work(conn)
        except StorageUnavailable as exc:
            if not exc.details.get("busy"):
                raise
            log.debug("skipped bookkeeping: %s", exc)
            return False
        return True

    def transact(self, work: Callable[[Connection], T], *, attempts: int = CONFLICT_ATTEMPTS) -> T:
        """`work(conn)` in a durable write transaction, run again (`attempts` times in all)
        if the database failed it to break a deadlock with another transaction: nothing of
        a failed run was kept, so `work` must only change the database (no files, no state
        outside). The last failure is TransactionConflict (503, Retry-After)."""
        for attempt in range(1, attempts + 1):
            try:
                with self.write() as conn:
                    return work(conn)
            except TransactionConflict:
                if attempt == attempts:
                    raise
                log.info(
                    "transaction conflict (attempt %d of %d); running it again", attempt, attempts
                )
                time.sleep(random.uniform(0.005, 0.05) * attempt)  # not in lock-step again
        raise AssertionError("unreachable")

    def check_ready(self) -> None:
        """Raise StorageUnavailable (or StorageFull) unless the database can take writes now.

        SQLite: a `SELECT 1` on a pooled connection touches no file, so it also passed with
        the database file deleted (the connections still write to it, unlinked: all of it
        lost at the next start), unreadable, or on a full filesystem; the file is checked
        itself. PostgreSQL: a server that answers but is read-only (a standby) is not ready.
        """
        if self._path is not None:
            self._check_sqlite_file(self._path)
        with self.read() as conn:
            if self.is_postgres:
                if conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar():
                    raise StorageUnavailable(
                        f"{self._name} is read-only (a standby in recovery): writes fail"
                    )
            else:  # reads a page of the file, not only the connection's state
                conn.execute(sa.text("SELECT count(*) FROM store_params")).scalar()

    def _check_sqlite_file(self, path: Path) -> None:
        try:
            if not path.is_file():
                raise StorageUnavailable(
                    f"{self._name} is gone (deleted or moved while the server runs): what is "
                    "written now is lost at the next start; restore it and restart"
                )
            if not os.access(path, os.R_OK | os.W_OK):
                raise StorageUnavailable(f"{self._name} is not readable and writable")
            free = _free_bytes(path)
        except OSError as exc:
            raise StorageUnavailable(f"{self._name} cannot be checked: {exc}") from exc
        if free < SQLITE_MIN_FREE_BYTES:
            raise StorageFull(f"{self._name} is full: {free} bytes free on its filesystem")

    def insert(self, table: sa.Table) -> Any:
        """A dialect-specific INSERT, so callers can use on_conflict_do_nothing/update."""
        return dialect_insert(self.dialect, table)

    # --- schema -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (safe with several nodes starting)."""
        if self._at_head():
            return
        # Before the import: alembic logs a line per plugin it sets up as it loads, at INFO.
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per start is plenty
        from alembic import command
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with (
            _translate_errors(self._name, self._lock_wait_ms, self._path),
            self.engine.connect() as conn,
        ):
            if self.is_postgres:
                # Another node migrating a big store may hold the lock for minutes: wait.
                conn.execute(sa.text("SET lock_timeout = 0"))
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
            else:
                # The whole upgrade in one transaction holding the write lock from its BEGIN:
                # in a deferred one, two processes opening a fresh home at once (`serve` and a
                # CLI command) both read "no schema", and the second to write failed with
                # "database is locked" (its snapshot stale). Now it waits, then finds it done.
                conn.execution_options(sqlite_immediate=True).begin()
            try:
                _check_not_newer(conn, ScriptDirectory.from_config(cfg), self._name)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
            finally:
                if self.is_postgres:
                    conn.execute(
                        sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK}
                    )
                    conn.execute(sa.text("RESET lock_timeout"))  # the pooled connection's
                    conn.commit()

    def _at_head(self) -> bool:
        """Whether the schema is at SCHEMA_HEAD already, asked with one query: every start
        and every CLI command opens the store, and alembic's way of finding that out (import
        it, load every migration script) took ~0.5 s of CPU each time. Anything else (a new
        store, an older or newer schema, an error) takes alembic's path, which says what is
        wrong. A store at the head is complete: its version row commits with its DDL."""
        try:
            with self.engine.connect() as conn:
                found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        except DBAPIError:
            return False
        return [row[0] for row in found] == [SCHEMA_HEAD]


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """`dialect`'s INSERT (on_conflict_do_*), its package imported on first use: PostgreSQL's
    loads every driver's module (asyncpg, psycopg…), ~30 ms of a CLI start on a SQLite store."""
    return import_module(f"sqlalchemy.dialects.{dialect}").insert(table)


def _check_not_newer(conn: Connection, scripts: Any, name: str) -> None:
    """A store migrated by a newer release (an upgrade rolled back) stopped this one's start
    with alembic's "Can't locate revision" traceback; say what happened instead."""
    from alembic.migration import MigrationContext

    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
        raise StoreParamsMismatch(
            f"{name} has schema revision {current}, newer than this edgestore's "
            f"({scripts.get_current_head()}): it was opened by a newer release; run that "
            "release or a later one (a schema is never migrated back)"
        )


def _create_engine(url: str, **options: Any) -> Engine:
    """The engine, or a ConfigError naming a driver that is not installed or not known
    (`postgresql+asyncpg://`, `+pg8000`: a bare ModuleNotFoundError traceback before)."""
    try:
        return sa.create_engine(url, **options)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise ConfigError(
            f"database_url (EDGESTORE_DATABASE_URL): driver {sa.make_url(url).drivername!r} "
            f"is not available ({exc}); use sqlite:///PATH or postgresql+psycopg://…"
        ) from None


def _sqlite_busy_ms(value: object) -> int:
    """The write-lock wait a SQLite URL's `?timeout=SECONDS` asks for (SQLITE_BUSY_TIMEOUT_MS
    without one)."""
    if value is None:
        return SQLITE_BUSY_TIMEOUT_MS
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise ConfigError(
            f"database_url (EDGESTORE_DATABASE_URL): timeout={value!r} is not a number of "
            "seconds from 0 to 3600 (how long a writer waits for the database's write lock)"
        )
    return round(seconds * 1000)


def _configure_sqlite(engine: Engine, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        record.info["sqlite_busy_ms"] = busy_ms
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
        wait = options.get("sqlite_busy_ms", busy_ms)  # a write that may wait less (try_write)
        if info.get("sqlite_busy_ms") != wait:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={wait}")
            info["sqlite_busy_ms"] = wait
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")


@contextmanager
def _translate_errors(name: str, lock_wait_ms: int, path: Path | None = None) -> Iterator[None]:
    """Errors an operator must see as such, not as a traceback or an HTTP 500: the database
    unreachable, busy past the timeout (503 with Retry-After: retry), full (507), or a file
    that is not SQLite's. `lock_wait_ms`: how long a lock was waited for; `path`: a SQLite
    database's file."""
    try:
        yield
    except sa.exc.TimeoutError as exc:  # SQLAlchemy's, not a database error: no .orig
        raise StorageUnavailable(
            f"{name} is busy: every pooled connection stayed in use for over "
            f"{PG_POOL_TIMEOUT_S:g} s; retry",
            retry_after=BUSY_RETRY_AFTER_S,
            busy=True,
        ) from exc
    except OperationalError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in CONFLICT_SQLSTATES:
            kind = "a deadlock" if sqlstate == "40P01" else "a serialization conflict"
            raise TransactionConflict(
                f"{name} ended this transaction to resolve {kind} with a concurrent one; "
                "nothing of it was kept: retry",
                retry_after=1,
            ) from exc
        if sqlstate == "53100" or "database or disk is full" in str(exc.orig).lower():
            # Disk full under the database: as a full data dir is (507), not a 500.
            raise StorageFull(f"{name} is full: {exc.orig}") from exc
        if sqlstate == "55P03" or "database is locked" in str(exc.orig).lower():
            raise StorageUnavailable(
                f"{name} is busy: another writer held a lock it needs for over "
                f"{lock_wait_ms / 1000:g} s; retry",
                retry_after=BUSY_RETRY_AFTER_S,  # HTTP: a 503 with Retry-After
                busy=True,
            ) from exc
        if path is not None and "disk i/o" in str(exc.orig).lower():
            _raise_if_full(name, path, exc)
        if _is_connection_failure(exc):
            raise StorageUnavailable(f"{name} unavailable: {exc.orig}") from exc
        raise
    except DatabaseError as exc:
        if "file is not a database" in str(exc.orig).lower():
            raise StorageUnavailable(
                f"{name} is not a SQLite database, or is damaged: {exc.orig}"
            ) from exc
        raise


def _free_bytes(path: Path) -> int:
    """Bytes the server may still write on the filesystem of the SQLite file `path`."""
    st = os.statvfs(path.parent)
    return st.f_bavail * st.f_frsize


def _raise_if_full(name: str, path: Path, exc: DBAPIError) -> None:
    """StorageFull if SQLite's "disk I/O error" came from a full filesystem: opening a WAL
    database creates and grows its index (-shm), and without room for it SQLite says only
    that, for reads too (measured on a full tmpfs: every command and `serve` failed so)."""
    try:
        free = _free_bytes(path)
    except OSError:
        return
    if free < SQLITE_MIN_FREE_BYTES:
        raise StorageFull(
            f"{name} is full: {free} bytes free on its filesystem (SQLite: {exc.orig}); "
            "until there is room, SQLite cannot open it, not even to read"
        ) from exc


def _is_connection_failure(exc: DBAPIError) -> bool:
    # No statement: the error came while connecting (host unknown or unreachable, timed out,
    # authentication refused, no such database), whatever the driver's wording.
    text = str(exc.orig).lower()
    return (
        exc.statement is None
        or exc.connection_invalidated
        or any(
            s in text
            for s in (
                "connection refused",
                "could not connect",
                "unable to open database",
                "disk i/o",
            )
        )
    )
