"""Prometheus metrics: bytes in and out, active uploads, dedup and compression savings.

Each app gets its own registry, so several apps (tests, several nodes in one process) never
share counters by accident.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edgestore.api.readiness import Health
from edgestore.engine.dedup import StoredChunk

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes_in = Counter("edgestore_bytes_in", "Upload body bytes received", registry=r)
        self.bytes_out = Counter("edgestore_bytes_out", "Object bytes sent", registry=r)
        self.upload_bodies = Counter(
            "edgestore_upload_bodies",
            "Upload request bodies by how they reached the engine: 'direct' (read straight into "
            "its buffer) or 'queued' (chunked bodies, and small ones that arrived whole with "
            "the request head)",
            ["path"],
            registry=r,
        )
        self.uploads_active = Gauge(
            "edgestore_uploads_active", "Upload requests streaming right now", registry=r
        )
        self.downloads_active = Gauge(
            "edgestore_downloads_active", "Object bodies being sent right now", registry=r
        )
        self.downloads_refused = Counter(
            "edgestore_downloads_refused",
            "Downloads answered 503: max_concurrent_downloads were being sent",
            registry=r,
        )
        self.chunks = Counter("edgestore_chunks", "Chunks ingested", ["result"], registry=r)
        self.dedup_saved = Counter(
            "edgestore_dedup_saved_bytes", "Raw bytes not stored again thanks to dedup", registry=r
        )
        self.compression_saved = Counter(
            "edgestore_compression_saved_bytes", "Bytes saved by zstd on new chunks", registry=r
        )
        self.chunk_seconds = Histogram(
            "edgestore_chunk_ingest_seconds",
            "Time to hash, dedup, compress, code and store one chunk",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.data_dir_up = Gauge(
            "edgestore_data_dir_up",
            "1 while a data dir is claimed, writable and has room for a chunk; 0 while it is "
            "missing, read-only, full or failing (read around; uploads refused). As of the "
            "last readiness check",
            ["dir"],
            registry=r,
        )
        self.data_dir_free = Gauge(
            "edgestore_data_dir_free_bytes",
            "Bytes free on a data dir's filesystem (to the server, as df shows them), as of "
            "the last readiness check; absent while the dir is missing, unclaimed or failing. "
            "Alert well before it runs out: a full dir fails uploads (507)",
            ["dir"],
            registry=r,
        )
        self.data_dir_size = Gauge(
            "edgestore_data_dir_size_bytes",
            "Size of a data dir's filesystem in bytes, as of the last readiness check; "
            "absent while the dir is missing, unclaimed or failing",
            ["dir"],
            registry=r,
        )
        self.database_up = Gauge(
            "edgestore_database_up",
            "1 while the metadata database answers and takes writes (last readiness check)",
            registry=r,
        )
        self.repair_queue = Gauge(
            "edgestore_repair_queue_chunks",
            "Chunks queued for repair (damaged or short of shards: below full redundancy); "
            "0 once every chunk is whole again",
            registry=r,
        )
        self.requests = Counter(
            "edgestore_http_requests", "HTTP requests", ["method", "status"], registry=r
        )
        # Every documented label value has a series from the start: one that appears only at
        # its first increment reads as "no data", and increase() misses that increment.
        for result in ("new", "dedup", "healed"):
            self.chunks.labels(result)
        for path in ("direct", "queued"):
            self.upload_bodies.labels(path)

    def observe_chunk(self, chunk: StoredChunk) -> None:
        """Called for every chunk an upload ingests (from worker threads: counters are safe)."""
        self.chunk_seconds.observe(chunk.seconds)
        if chunk.healed:  # its shards written again: neither a new chunk nor a saving
            self.chunks.labels("healed").inc()
        elif chunk.is_new:
            self.chunks.labels("new").inc()
            self.compression_saved.inc(max(chunk.raw_size - chunk.compressed_size, 0))
        else:
            self.chunks.labels("dedup").inc()
            self.dedup_saved.inc(chunk.raw_size)

    def observe_pinned(self, raw_size: int) -> None:
        """A native session took a chunk the store held without its client sending it."""
        self.chunks.labels("dedup").inc()
        self.dedup_saved.inc(raw_size)

    def set_health(self, health: Health) -> None:
        """Gauges from the last readiness check, set as /metrics is read."""
        self.database_up.set(1 if health.database_up else 0)
        for name, up in health.dirs_up.items():
            self.data_dir_up.labels(name).set(1 if up else 0)
        # Only the dirs measured now: a lost dir's last figures would hide that it is lost.
        # No await between here and render(): no other scrape sees the gauges cleared.
        self.data_dir_free.clear()
        self.data_dir_size.clear()
        for name, space in health.dirs_space.items():
            self.data_dir_free.labels(name).set(space.free_bytes)
            self.data_dir_size.labels(name).set(space.total_bytes)
        if health.repairs_queued is not None:  # the last known count, while the database is down
            self.repair_queue.set(health.repairs_queued)

    def render(self) -> bytes:
        return generate_latest(self.registry)
