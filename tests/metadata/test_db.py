"""The SQLite default under contention: writers queue, reads go on, errors say what happened."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgestore.errors import ConfigError, StorageFull, StorageUnavailable
from edgestore.metadata import db as db_module
from edgestore.metadata.db import _PG_MIGRATION_LOCK, Database
from tests.mounts import fill, tmpfs
from tests.races import sqlite_write_lock_held


@pytest.fixture
def sqlite_db(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    db.migrate()
    try:
        yield db
    finally:
        db.close()


def test_reads_go_on_while_writers_queue_behind_a_long_write(sqlite_db: Database) -> None:
    """WAL lets a read through while a write holds the lock (a version with a huge manifest
    being deleted: ~10 s for 250,000 entries). Writers waiting their turn each hold a pooled
    connection: twenty of them used to take every one, and the read waited out the write."""
    db = sqlite_db
    holding, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with db.write() as conn:
            conn.exec_driver_sql("UPDATE store_params SET value = value")
            holding.set()
            release.wait(10)

    def short_write() -> None:
        with db.write() as conn:
            conn.exec_driver_sql("UPDATE store_params SET value = value")

    holder = threading.Thread(target=long_write)
    holder.start()
    assert holding.wait(10)
    writers = [threading.Thread(target=short_write) for _ in range(20)]
    for w in writers:
        w.start()
    time.sleep(0.5)  # all of them waiting on SQLite's lock now
    read_took: list[float] = []

    def read() -> None:
        started = time.monotonic()
        with db.read() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM chunks").scalar()
        read_took.append(time.monotonic() - started)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(3)
    release.set()
    reader.join()
    holder.join()
    for w in writers:
        w.join()
    assert read_took and read_took[0] < 2.0, read_took


def test_a_write_locked_past_the_busy_timeout_is_a_retryable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (a CLI `gc`, `sqlite3` in a shell) holding the write lock longer than
    the busy timeout: StorageUnavailable (HTTP 503, exit code 6), not a raw OperationalError
    (an HTTP 500, a traceback from the CLI)."""
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "meta.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.migrate()
        with sqlite_write_lock_held(path):
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match="is busy"), db.write():
                pass
            assert time.monotonic() - started >= 0.15  # it did wait first
        with db.write():  # and the lock released, writes go on
            pass
    finally:
        db.close()


def test_the_url_sets_the_write_lock_wait_and_busy_says_when_to_retry(tmp_path: Path) -> None:
    """`?timeout=SECONDS` bounds the wait (tests, impatient operators); the error carries a
    Retry-After for HTTP clients, and a value that is not a number is a ConfigError."""
    path = tmp_path / "meta.db"
    db = Database(f"sqlite:///{path}?timeout=0.3")
    try:
        db.migrate()
        with sqlite_write_lock_held(path):
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match=r"over 0\.3 s") as caught, db.write():
                pass
            assert 0.25 <= time.monotonic() - started < 3
            assert caught.value.details["retry_after"] >= 1
    finally:
        db.close()
    for bad in ("abc", "-1", "1e9"):
        with pytest.raises(ConfigError, match="timeout"):
            Database(f"sqlite:///{path}?timeout={bad}")


def test_bookkeeping_is_skipped_not_waited_for_while_another_process_writes(
    sqlite_db: Database, tmp_path: Path
) -> None:
    """A reader's side write (a chunk's last-read time) gives up at once behind another
    process's write lock, and the connection keeps its full wait for real writes after."""

    def touch(conn: sa.Connection) -> None:
        conn.exec_driver_sql("UPDATE store_params SET value = value")

    with sqlite_write_lock_held(tmp_path / "meta.db"):
        started = time.monotonic()
        assert sqlite_db.try_write(touch) is False
        assert time.monotonic() - started < 1
    assert sqlite_db.try_write(touch) is True
    with sqlite_db.engine.connect() as conn:  # every pooled connection waits 30 s again
        waits = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert waits == db_module.SQLITE_BUSY_TIMEOUT_MS


def test_a_file_that_is_not_a_database_is_named_in_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "edgestore.db"
    path.write_bytes(b"these are not the bytes of a SQLite database, " * 20)
    db = Database(f"sqlite:///{path}")
    try:
        with pytest.raises(StorageUnavailable, match=f"{path} is not a SQLite database"):
            db.migrate()
    finally:
        db.close()


def test_a_postgresql_host_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that accepts the TCP connection and never answers (or drops packets) held the
    start, every request and /readyz forever: libpq waits without a connect_timeout."""
    monkeypatch.setattr(db_module, "PG_CONNECT_TIMEOUT_S", 2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever speaks
        port = silent.getsockname()[1]
        db = Database(f"postgresql+psycopg://edge:s3cret@127.0.0.1:{port}/meta")
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match="unavailable") as info, db.read():
                pass
            assert time.monotonic() - started < 10
            assert "s3cret" not in str(info.value)
        finally:
            db.close()


@pytest.mark.postgres
def test_postgresql_connections_carry_timeouts_unless_the_url_sets_them(
    pg_server_url: str,
) -> None:
    """Established connections need keepalives/tcp_user_timeout too: a server gone silent
    under a pooled connection otherwise hangs pre-ping (and /readyz) for TCP's ~15 min."""
    for query, timeout in (("", "10"), ("?connect_timeout=3", "3")):
        db = Database(pg_server_url + query)
        try:
            with db.read() as conn:
                params = conn.connection.driver_connection.info.get_parameters()
            assert params["connect_timeout"] == timeout
            assert (params["keepalives"], params["tcp_user_timeout"]) == ("1", "60000")
        finally:
            db.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://edge:s3cret@nohost.invalid/meta",  # name does not resolve
        "postgresql+psycopg://nosuchrole:s3cret@127.0.0.1:5432/meta",  # refused by the server
    ],
)
def test_a_database_that_cannot_be_reached_is_a_clear_error(url: str) -> None:
    """Only "connection refused" was recognised: an unknown host or a refused login was a
    raw OperationalError (an HTTP 500, a traceback from the CLI), not exit code 6 / 503."""
    db = Database(url)
    try:
        with pytest.raises(StorageUnavailable, match="metadata database unavailable") as info:
            db.migrate()
        assert "s3cret" not in str(info.value)
    finally:
        db.close()


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://edge:s3cret@db:notaport/meta", "postgresql://e:s3cret@[::1/m"]
)
def test_a_malformed_url_is_a_config_error_without_its_password(url: str) -> None:
    """A port that is not a number raised a bare ValueError (a traceback at start)."""
    with pytest.raises(ConfigError, match="is not a valid URL") as info:
        Database(url)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("postgresql+asyncpg://edge:s3cret@db/meta", "driver 'postgresql\\+asyncpg'"),
        ("postgresql+nosuchdriver://edge:s3cret@db/meta", "driver"),
    ],
)
def test_a_database_url_edgestore_cannot_use_is_a_config_error(url: str, says: str) -> None:
    """An in-memory SQLite URL was a TypeError about max_overflow (and would have kept each
    connection's objects apart, lost at exit); a driver not installed a ModuleNotFoundError."""
    with pytest.raises(ConfigError, match=says) as info:
        Database(url)
    assert "s3cret" not in str(info.value)


@pytest.mark.postgres
def test_a_postgresql_lock_held_too_long_is_a_retryable_error(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write queued behind a lock another session holds (a stuck node, a `psql` left in a
    transaction) waited forever on PostgreSQL: now it is "busy" (503) after the timeout, as a
    SQLite writer is after its busy timeout."""
    monkeypatch.setattr(db_module, "PG_LOCK_TIMEOUT_MS", 300)
    db = Database(pg_url)
    other = sa.create_engine(pg_url)
    try:
        db.migrate()
        with other.connect() as holder:
            holder.execute(sa.text("LOCK TABLE store_params IN EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match="is busy") as info, db.write() as conn:
                conn.execute(sa.text("UPDATE store_params SET value = value"))
            assert time.monotonic() - started < 5
            assert "0.3 s" in str(info.value)
        with db.write() as conn:  # the lock released, writes go on
            conn.execute(sa.text("UPDATE store_params SET value = value"))
    finally:
        other.dispose()
        db.close()


@pytest.mark.postgres
def test_postgresql_bookkeeping_gives_up_on_a_held_lock_at_once(pg_url: str) -> None:
    """As on SQLite: a reader's side write skips a row another session holds (30 s before)."""
    db = Database(pg_url)
    other = sa.create_engine(pg_url)
    try:
        db.migrate()

        def touch(conn: sa.Connection) -> None:
            conn.execute(sa.text("UPDATE store_params SET value = value"))

        with other.connect() as holder:
            holder.execute(sa.text("LOCK TABLE store_params IN EXCLUSIVE MODE"))
            started = time.monotonic()
            assert db.try_write(touch) is False
            assert time.monotonic() - started < 2
        assert db.try_write(touch) is True
    finally:
        other.dispose()
        db.close()


@pytest.mark.postgres
def test_a_migration_waits_for_another_nodes_past_the_lock_timeout(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another node migrating a big store holds the migration lock for minutes: a node
    starting meanwhile must wait for it, not fail at the lock timeout."""
    monkeypatch.setattr(db_module, "PG_LOCK_TIMEOUT_MS", 300)
    db = Database(pg_url)
    other = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with other.connect() as holder:
            holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            unlock = sa.text("SELECT pg_advisory_unlock(:k)")
            release = threading.Timer(1.0, holder.execute, (unlock, {"k": _PG_MIGRATION_LOCK}))
            release.start()
            started = time.monotonic()
            db.migrate()
            assert time.monotonic() - started >= 0.9
            release.join()
        with db.read() as conn:  # and the pooled connection has its lock timeout back
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "300ms"
    finally:
        other.dispose()
        db.close()


@pytest.mark.postgres
def test_a_pool_with_every_connection_in_use_is_a_retryable_error(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More concurrent transactions than the pool holds (requests queued behind a slow
    database): the one left waiting got SQLAlchemy's TimeoutError, an HTTP 500."""
    monkeypatch.setattr(db_module, "PG_POOL_TIMEOUT_S", 0.5)
    db = Database(pg_url, pool_size=1)  # and 2 more on overflow
    try:
        with (
            db.read(),
            db.read(),
            db.read(),
            pytest.raises(StorageUnavailable, match="every pooled connection"),
            db.read(),
        ):
            pass
        with db.read() as conn:  # released, the pool serves again
            conn.execute(sa.text("SELECT 1"))
    finally:
        db.close()


def test_a_full_sqlite_database_is_storage_full(sqlite_db: Database) -> None:
    """The disk under the metadata database full (here: SQLite's page limit, the same
    SQLITE_FULL): a raw OperationalError, an HTTP 500; now StorageFull (507, exit code 6),
    as for a full data dir, and the store still reads."""
    with (
        pytest.raises(StorageFull, match=r"metadata database .* is full"),
        sqlite_db.write() as conn,
    ):
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
        conn.execute(
            sa.text("INSERT INTO store_params (name, value) VALUES ('big', :v)"),
            {"v": "x" * 1_000_000},
        )
    with sqlite_db.read() as conn:
        assert (
            conn.exec_driver_sql("SELECT count(*) FROM store_params WHERE name = 'big'").scalar()
            == 0
        )


def test_a_database_path_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    """A file where the database's directory should be: a NotADirectoryError traceback."""
    (tmp_path / "home").write_text("not a directory")
    with pytest.raises(StorageUnavailable, match="cannot create its directory"):
        Database(f"sqlite:///{tmp_path / 'home' / 'edgestore.db'}")


def test_a_sqlite_database_on_a_full_filesystem_says_full_at_open(tmp_path: Path) -> None:
    """A real full filesystem (tmpfs) under a SQLite database closed cleanly: opening it
    needs room for its WAL index (-shm), and SQLite answers "disk I/O error", which every
    command (`ls` and `get` too) and `serve` at start reported as "unavailable: disk I/O
    error", giving no hint that the disk is full. Now StorageFull naming the free bytes."""
    home = tmp_path / "home"
    with tmpfs(home, "1m"):
        url = f"sqlite:///{home / 'edgestore.db'}"
        db = Database(url)
        db.migrate()
        db.close()  # the last connection checkpoints the WAL and removes -wal and -shm
        fill(home, leave=0)
        db = Database(url)
        try:
            with pytest.raises(StorageFull, match=r"edgestore\.db is full: \d+ bytes free"):
                db.migrate()
        finally:
            db.close()
