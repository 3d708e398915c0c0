"""Store parameters recorded on first use: the chunker, hash and EC backend never drift."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.db import Database
from edgestore.metadata.schema import store_params


def load(conn: Connection) -> dict[str, str]:
    return {r.name: r.value for r in conn.execute(sa.select(store_params))}


def record_missing(db: Database, conn: Connection, wanted: dict[str, str]) -> dict[str, str]:
    """Record any parameter not yet recorded; return what the store now holds."""
    for name, value in wanted.items():
        conn.execute(
            db.insert(store_params)
            .values(name=name, value=value)
            .on_conflict_do_nothing(index_elements=[store_params.c.name])
        )
    return load(conn)


def record_if_empty(conn: Connection, name: str, value: str) -> dict[str, str]:
    """Record `value` for a parameter recorded empty (the EC backend of a store begun in
    replication mode); a value already recorded, by this node or another, stays."""
    conn.execute(
        sa.update(store_params)
        .where(store_params.c.name == name, store_params.c.value == "")
        .values(value=value)
    )
    return load(conn)
