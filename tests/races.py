"""Helpers for race tests on PostgreSQL: run one side in a thread, and wait until the other
transaction is really blocked on it before letting the first go on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from edgestore.engine import Engine


def wait_until_blocked(engine: Engine, timeout: float = 10.0) -> None:
    """Until some session of this database waits on a lock (the other transaction's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.core.db.read() as conn:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
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
