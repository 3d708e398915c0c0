"""Storing one chunk: hash, dedup lookup, compress, make redundant, write shards, index it.

The chunk row is inserted only after every shard is durable, so a crash at any point leaves at
worst shard files without a row (garbage, collected by gc), never a row without its shards.
"""

from __future__ import annotations

import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from edgestore.codec import compression, shardfile
from edgestore.codec.erasure import RedundancyCodec, ReedSolomon, Replication
from edgestore.codec.hashing import chunk_id as compute_chunk_id
from edgestore.config import Settings
from edgestore.engine.pipeline import InflightDedup
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.db import Database
from edgestore.storage.datadirs import DataDirs
from edgestore.storage.placement import place, shard_key
from edgestore.types import ChunkId, Compression, Layout, ShardRef

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredChunk:
    chunk_id: ChunkId
    raw_size: int
    stored_size: int  # bytes this call wrote to shards (0 for a dedup hit)
    is_new: bool
    compressed_size: int = 0  # after zstd, before redundancy (0 for a dedup hit)
    seconds: float = 0.0  # time to hash, look up and (if new) store


@dataclass(frozen=True, slots=True)
class Redundancy:
    """How chunks of a given stored size are made redundant; see docs/formats.md."""

    layout: Layout
    codec: RedundancyCodec
    k: int
    m: int


class RedundancyPolicy:
    """Chooses the layout by stored size, so small chunks never become nine tiny files.

    * stored size <= inline_max_bytes: kept in the metadata database (no files at all);
    * stored size <= small_chunk_max_bytes: m+1 whole copies (survives as many lost disks
      as k+m erasure coding, with m+1 files instead of k+m slivers);
    * larger: Reed-Solomon k+m (or `replicas` copies in replication mode).
    """

    def __init__(self, settings: Settings, ec_backend: str | None = None) -> None:
        self.inline_max = settings.inline_max_bytes
        self.small_max = settings.small_chunk_max_bytes
        if settings.redundancy == "replication":
            self.large = Redundancy(
                Layout.REPLICA, Replication(settings.replicas), 1, settings.replicas - 1
            )
            self.small = self.large
        else:
            k, m = settings.ec_k, settings.ec_m
            self.large = Redundancy(Layout.EC, ReedSolomon(k, m, ec_backend), k, m)
            self.small = Redundancy(Layout.REPLICA, Replication(m + 1), 1, m)

    @property
    def ec_backend(self) -> str | None:
        codec = self.large.codec
        return codec.backend if isinstance(codec, ReedSolomon) else None

    def for_size(self, stored_size: int) -> Redundancy | None:
        """None means inline."""
        if stored_size <= self.inline_max:
            return None
        return self.small if stored_size <= self.small_max else self.large


class ChunkWriter:
    """Stores chunks exactly once, whatever the concurrency."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        dirs: DataDirs,
        policy: RedundancyPolicy,
        io_pool: ThreadPoolExecutor,
    ) -> None:
        self._settings = settings
        self._db = db
        self._dirs = dirs
        self._policy = policy
        self._inflight = InflightDedup()
        self._io = io_pool

    def store(self, raw: bytes) -> StoredChunk:
        """Store a chunk unless already stored; thread-safe; returns once durable."""
        started = time.perf_counter()
        cid = compute_chunk_id(raw)
        stored, did_work = self._inflight.run(cid, lambda: self._store(cid, raw))
        if not did_work:
            stored = StoredChunk(cid, len(raw), 0, False)
        return replace(stored, seconds=time.perf_counter() - started)

    def _store(self, cid: ChunkId, raw: bytes) -> StoredChunk:
        with self._db.read() as conn:
            refcount = chunk_index.refcount_of(conn, cid)
        if refcount is not None:
            if refcount > 0:
                return StoredChunk(cid, len(raw), 0, False)
            with self._db.write() as conn:  # unreferenced: restart its grace period first
                if chunk_index.keep_alive(conn, cid):
                    return StoredChunk(cid, len(raw), 0, False)

        codec, stored = compression.compress(
            raw, self._settings.zstd_level, self._settings.compress_min_saving
        )
        redundancy = self._policy.for_size(len(stored))
        generation = secrets.token_hex(6)
        if redundancy is None:
            record = chunk_index.ChunkRecord(
                chunk_id=cid,
                raw_size=len(raw),
                stored_size=len(stored),
                compression=codec,
                layout=Layout.INLINE,
                ec_k=1,
                ec_m=0,
                shard_size=len(stored),
                generation=generation,
                refcount=0,
                inline_data=stored,
            )
            refs: list[ShardRef] = []
        else:
            refs = self._write_shards(cid, codec, stored, redundancy, generation)
            record = chunk_index.ChunkRecord(
                chunk_id=cid,
                raw_size=len(raw),
                stored_size=len(stored),
                compression=codec,
                layout=redundancy.layout,
                ec_k=redundancy.k,
                ec_m=redundancy.m,
                shard_size=refs[0].size,
                generation=generation,
                refcount=0,
            )
        with self._db.write() as conn:
            inserted = chunk_index.insert(self._db, conn, record, refs)
        if not inserted:  # another writer won the race; ours are unreferenced duplicates
            self._delete_shards(refs)
            return StoredChunk(cid, len(raw), 0, False)
        written = sum(r.size for r in refs) or len(stored)
        return StoredChunk(cid, len(raw), written, True, compressed_size=len(stored))

    def _write_shards(
        self,
        cid: ChunkId,
        codec: Compression,
        stored: bytes,
        redundancy: Redundancy,
        generation: str,
    ) -> list[ShardRef]:
        names = self._dirs.writable_names()
        payloads = redundancy.codec.encode(stored)
        placement = place(cid, len(payloads), names)
        refs: list[ShardRef] = []
        writes = []
        for index, (payload, backend_name) in enumerate(zip(payloads, placement, strict=True)):
            header = shardfile.make_header(
                cid,
                redundancy.layout,
                index,
                redundancy.k,
                redundancy.m,
                codec,
                len(stored),
                payload,
            )
            key = shard_key(cid, generation, index)
            refs.append(
                ShardRef(cid, index, backend_name, key, len(payload), header.payload_checksum)
            )
            backend = self._dirs.backends[backend_name]
            # Shards go to different disks: write them at once, so their fsyncs overlap.
            writes.append(self._io.submit(backend.put, key, shardfile.pack(header, payload)))
        errors = [exc for exc in (w.exception() for w in writes) if exc is not None]
        if errors:
            self._delete_shards(refs)  # no row will point at these; don't wait for gc
            raise errors[0]
        return refs

    def _delete_shards(self, refs: list[ShardRef]) -> None:
        for ref in refs:
            try:
                self._dirs.backends[ref.backend].delete(ref.key)
            except Exception as exc:  # best effort: gc removes what is left
                log.warning("could not remove unused shard %s: %s", ref.key, exc)
