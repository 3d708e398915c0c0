"""Where a chunk's shard files are, for tests that damage them."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.metadata.schema import shards


def shard_paths(engine: Engine, chunk_id: str) -> list[Path]:
    """The files of a chunk's shards, in shard order, as the index names them."""
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(shards.c.backend, shards.c.key)
            .where(shards.c.chunk_id == chunk_id)
            .order_by(shards.c.shard_index)
        ).all()
    return [engine.core.dirs.backends[r.backend].root / r.key for r in rows]
