"""Small helpers shared by the tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.metadata.schema import chunks, shards

KiB = 1024
MiB = 1024 * 1024

# Small chunks keep multi-chunk tests fast; the default (1/4/8 MiB) has its own tests.
SMALL_CHUNKS: dict[str, Any] = {
    "chunk_min_size": 16 * KiB,
    "chunk_avg_size": 64 * KiB,
    "chunk_max_size": 256 * KiB,
    "inline_max_bytes": 1 * KiB,
    "small_chunk_max_bytes": 8 * KiB,
}


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def blocks_of(data: bytes, size: int = 256 * KiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read_all(eng: Engine, info: Any, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(bytes(p) for p in eng.objects.read(info, start, end))


def assert_no_partial_chunks(engine: Engine) -> None:
    """Every chunk row has all its shards, and every shard file exists (invariant 2)."""
    with engine.core.db.read() as conn:
        rows = conn.execute(
            sa.select(chunks.c.chunk_id, chunks.c.layout, chunks.c.ec_k, chunks.c.ec_m)
        ).all()
        by_chunk: dict[str, list] = {}
        for s in conn.execute(sa.select(shards)).all():
            by_chunk.setdefault(s.chunk_id, []).append(s)
    for r in rows:
        refs = by_chunk.get(r.chunk_id, [])
        expected = 0 if r.layout == "inline" else r.ec_k + r.ec_m
        assert len(refs) == expected, r
        for s in refs:
            assert engine.core.dirs.backends[s.backend].stat(s.key) is not None, s
