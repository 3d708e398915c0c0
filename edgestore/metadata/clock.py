"""The one clock shared state is measured on: the metadata database's.

Leases, expiries and grace periods are written by one node and compared by another, so they
are read off the database server's clock (PostgreSQL), not each node's, whose clocks differ
and jump (edge nodes without a battery-backed clock boot wrong and jump when NTP syncs).
SQLite's database is on this machine: its clock is this machine's wall clock.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# The server's clock is read again after this much of this process's monotonic time; in
# between it is carried forward on the monotonic clock (no round trip per timestamp).
RESYNC_SECONDS = 30.0
# The wall clock moving this much more (or less) than the monotonic one since the last
# reading means this machine's clock was set, or it slept (which the monotonic clock does
# not count): the server's clock is read again.
DRIFT_SECONDS = 1.0
_SERVER_NOW = sa.text("SELECT extract(epoch FROM clock_timestamp())")
_OPTION = "edgestore_clock"


class ServerClock:
    """The PostgreSQL server's clock as of the last reading, plus the monotonic time since."""

    def __init__(self) -> None:
        # (server epoch seconds, this process's monotonic and wall time) when it was read.
        self._reading: tuple[float, float, float] | None = None

    def now(self, conn: Connection) -> float:
        mono, wall = time.monotonic(), time.time()
        reading = self._reading
        if reading is not None:
            server, mono_then, wall_then = reading
            elapsed = mono - mono_then
            if elapsed < RESYNC_SECONDS and abs(wall - wall_then - elapsed) < DRIFT_SECONDS:
                return server + elapsed
        server = float(conn.execute(_SERVER_NOW).scalar_one())
        trip = time.monotonic() - mono  # the server read its clock about halfway through
        self._reading = (server, mono + trip / 2, wall + trip / 2)
        return server


def install(engine: sa.Engine) -> None:
    """Give a PostgreSQL engine's connections the server clock `now` reads."""
    if engine.dialect.name == "postgresql":
        engine.update_execution_options(**{_OPTION: ServerClock()})


def now(conn: Connection) -> float:
    """Seconds since the epoch by the database's clock: what every time stored in it, or
    compared with one stored in it, is measured on."""
    if conn.dialect.name != "postgresql":
        return time.time()
    clock = conn.get_execution_options().get(_OPTION)
    if clock is None:  # an engine made without Database: read the server each time
        return float(conn.execute(_SERVER_NOW).scalar_one())
    return clock.now(conn)  # type: ignore[no-any-return]
