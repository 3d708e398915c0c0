"""Aggregate figures for `edgestore du` and the metrics endpoint."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.metadata.schema import chunks, object_versions, objects, shards, uploads


@dataclass(frozen=True, slots=True)
class StoreUsage:
    objects: int
    versions: int
    logical_bytes: int  # sum of version sizes: what clients see
    chunks: int
    unique_bytes: int  # raw bytes of distinct chunks: after dedup
    compressed_bytes: int  # after dedup and compression, before redundancy
    stored_bytes: int  # shard payloads on disk plus inline bytes in the database
    open_uploads: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.compressed_bytes if self.compressed_bytes else 1.0

    @property
    def redundancy_overhead(self) -> float:
        return self.stored_bytes / self.compressed_bytes if self.compressed_bytes else 1.0


def usage(conn: Connection) -> StoreUsage:
    n_objects = conn.execute(sa.select(sa.func.count()).select_from(objects)).scalar_one()
    n_versions, logical = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(object_versions.c.size), 0))
    ).one()
    n_chunks, unique, compressed = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(chunks.c.raw_size), 0),
            sa.func.coalesce(sa.func.sum(chunks.c.stored_size), 0),
        )
    ).one()
    shard_bytes = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(shards.c.size), 0))
    ).scalar_one()
    inline = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(chunks.c.stored_size), 0)).where(
            chunks.c.layout == "inline"
        )
    ).scalar_one()
    open_uploads = conn.execute(
        sa.select(sa.func.count()).select_from(uploads).where(uploads.c.state == "open")
    ).scalar_one()
    return StoreUsage(
        objects=n_objects,
        versions=n_versions,
        logical_bytes=int(logical),
        chunks=n_chunks,
        unique_bytes=int(unique),
        compressed_bytes=int(compressed),
        stored_bytes=int(shard_bytes) + int(inline),
        open_uploads=open_uploads,
    )
