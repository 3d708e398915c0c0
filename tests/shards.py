"""Where a chunk's shard files are, for tests that damage them."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from edgestore.codec import shardfile
from edgestore.engine import Engine
from edgestore.metadata.schema import shards
from edgestore.types import ChunkId


def shard_rows(engine: Engine, cid: str) -> list[tuple[int, str, str]]:
    """(shard index, data dir, key) of each shard row of the chunk, in shard order."""
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(shards.c.shard_index, shards.c.backend, shards.c.key)
            .where(shards.c.chunk_id == cid)
            .order_by(shards.c.shard_index)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def shard_paths(engine: Engine, chunk_id: str) -> list[Path]:
    """The files of a chunk's shards, in shard order, as the index names them."""
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(shards.c.backend, shards.c.key)
            .where(shards.c.chunk_id == chunk_id)
            .order_by(shards.c.shard_index)
        ).all()
    return [engine.core.dirs.backends[r.backend].root / r.key for r in rows]


def unlike_a_rebuild(engine: Engine, chunk_id: str, index: int) -> None:
    """Lay shard `index` of the chunk out otherwise, its file and row agreeing (as another
    erasure-coding library would): a rebuild does not reproduce it, so repair does not mix
    rebuilt shards with it and stores the chunk again as a whole."""
    path = shard_paths(engine, chunk_id)[index]
    header, payload = shardfile.unpack(path.read_bytes(), ChunkId(chunk_id))
    other = bytes(b ^ 0x5A for b in payload)
    fields = shardfile.make_header(
        header.chunk_id,
        header.layout,
        index,
        header.k,
        header.m,
        header.compression,
        header.stored_length,
        other,
    )
    path.write_bytes(shardfile.header_bytes(fields) + other)
    with engine.core.db.write() as conn:
        conn.execute(
            sa.update(shards)
            .where(shards.c.chunk_id == chunk_id, shards.c.shard_index == index)
            .values(checksum=fields.payload_checksum)
        )
