"""The SQLite default under contention: writers queue, reads go on, errors say what happened."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edgestore.errors import StorageUnavailable
from edgestore.metadata import db as db_module
from edgestore.metadata.db import Database


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
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match="is busy"), db.write():
                pass
            assert time.monotonic() - started >= 0.15  # it did wait first
        finally:
            other.execute("ROLLBACK")
            other.close()
        with db.write():  # and the lock released, writes go on
            pass
    finally:
        db.close()


def test_a_file_that_is_not_a_database_is_named_in_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "edgestore.db"
    path.write_bytes(b"these are not the bytes of a SQLite database, " * 20)
    db = Database(f"sqlite:///{path}")
    try:
        with pytest.raises(StorageUnavailable, match=f"{path} is not a SQLite database"):
            db.migrate()
    finally:
        db.close()
