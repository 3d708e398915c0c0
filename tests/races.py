"""Helpers for race tests: on PostgreSQL, run one side in a thread and wait until the other
transaction is really blocked on it before letting the first go on; on SQLite, another
process's write lock held for a block."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.metadata.db import Database


def lock_waiters(db: Database) -> int:
    """How many sessions of this database wait on a lock now."""
    with db.read() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()


def wait_until_blocked(target: Engine | Database, timeout: float = 10.0) -> None:
    """Until some session of this database waits on a lock (the other transaction's)."""
    db = target.core.db if isinstance(target, Engine) else target
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_waiters(db):
            return
        time.sleep(0.02)
    raise AssertionError("the second transaction never waited for the first")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """Start `fn` in a thread; the list collects what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, errors


@contextmanager
def sqlite_write_lock_held(db: Path) -> Iterator[None]:
    """Another process's write transaction on this SQLite file, open for the whole block (a
    long migration, a stuck writer): SQLite lets only one writer in at a time."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()
