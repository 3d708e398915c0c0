"""The store epoch in the database: a counter that only goes up while the metadata lives on,
so one restored from an older backup is behind what its data dirs recorded."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.clock import now
from edgestore.metadata.schema import store_epoch


def current(conn: Connection) -> int:
    return int(
        conn.execute(sa.select(store_epoch.c.epoch).where(store_epoch.c.id == 1)).scalar_one()
    )


def advance(conn: Connection, *, at_least: int = 0) -> int:
    """Raise the epoch by one, or to `at_least` if that is higher; the new epoch. An UPDATE
    of one row: nodes advancing at once queue on its lock and each gets a higher one."""
    conn.execute(
        sa.update(store_epoch)
        .where(store_epoch.c.id == 1)
        .values(
            epoch=sa.case(
                (store_epoch.c.epoch + 1 < at_least, at_least), else_=store_epoch.c.epoch + 1
            ),
            advanced_at=now(conn),
        )
    )
    return current(conn)
