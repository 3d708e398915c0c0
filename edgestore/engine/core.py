"""Opening a store: database and migrations, recorded parameters, data dirs, self-test.

`EngineCore` is the wiring every engine service shares; nothing here is per request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass

from edgestore.codec import compression
from edgestore.codec.erasure import ReedSolomon
from edgestore.codec.hashing import ResumableSha256
from edgestore.config import Settings
from edgestore.engine.dedup import ChunkWriter, RedundancyPolicy
from edgestore.engine.pipeline import Budget, CpuPool, tune_allocator
from edgestore.engine.read import ChunkReader, ShardFault
from edgestore.errors import SelfTestFailed, StoreParamsMismatch
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata import params as store_params
from edgestore.metadata.chunks import ChunkRecord
from edgestore.metadata.db import Database
from edgestore.storage.datadirs import DataDirs, open_data_dirs

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"


@dataclass
class EngineCore:
    settings: Settings
    db: Database
    dirs: DataDirs
    pool: CpuPool
    policy: RedundancyPolicy
    writer: ChunkWriter
    reader: ChunkReader
    params: dict[str, str]
    read_budget: Budget  # chunks decoded ahead across all reads (pipeline.Budget)

    @property
    def store_id(self) -> str:
        return self.params["store_id"]

    def close(self) -> None:
        self.writer.close()
        self.reader.close()
        self.pool.shutdown()
        self.db.close()


def self_test(ec_backend: str | None) -> None:
    """Known-answer checks of SHA-256, zstd and EC, so a broken build never stores data."""
    if hashlib.sha256(b"abc").hexdigest() != (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    ):
        raise SelfTestFailed("SHA-256 known-answer test failed")
    if ResumableSha256.available():
        h = ResumableSha256()
        h.update(b"a")
        h2 = ResumableSha256(h.state())
        h2.update(b"bc")
        if h2.hexdigest() != hashlib.sha256(b"abc").hexdigest():
            raise SelfTestFailed("resumable SHA-256 known-answer test failed")
    sample = (b"edgestore self-test " * 4096) + os.urandom(4096)
    codec, packed = compression.compress(sample, 3, 0.03)
    if compression.decompress(codec, packed, len(sample)) != sample:
        raise SelfTestFailed("zstd round trip failed")
    if ec_backend is not None:
        rs = ReedSolomon(6, 3, ec_backend)
        shards = rs.encode(sample)
        if rs.decode({i: shards[i] for i in (3, 4, 5, 6, 7, 8)}) != sample:
            raise SelfTestFailed(f"erasure coding ({ec_backend}) failed to rebuild")


def _wanted_params(settings: Settings, ec_backend: str | None) -> dict[str, str]:
    c = settings.chunker
    return {
        "store_id": str(uuid.uuid4()),
        "format_version": FORMAT_VERSION,
        "chunker": c.algorithm,
        "chunk_min_size": str(c.min_size),
        "chunk_avg_size": str(c.avg_size),
        "chunk_max_size": str(c.max_size),
        "hash": c.hash,
        "ec_backend": ec_backend or "",
    }


# Parameters whose change would split the dedup space or make old chunks unreadable.
_FIXED = ("chunker", "chunk_min_size", "chunk_avg_size", "chunk_max_size", "hash")
_SETTING_OF = {
    "chunk_min_size": "chunk_min_size (EDGESTORE_CHUNK_MIN_SIZE)",
    "chunk_avg_size": "chunk_avg_size (EDGESTORE_CHUNK_AVG_SIZE)",
    "chunk_max_size": "chunk_max_size (EDGESTORE_CHUNK_MAX_SIZE)",
}


def _to_record(recorded: dict[str, str], wanted: dict[str, str], ec_backend: str | None) -> bool:
    """Whether opening the store must write its parameters: a new store, one recorded by an
    older release (a parameter missing), or one begun in replication mode opened in EC mode.
    Otherwise opening it only reads: a CLI `ls` or `get` took the write lock at every start
    and waited behind (or failed past the busy timeout, after 30 s) another process's write."""
    if any(name not in recorded for name in wanted):
        return True
    return not recorded.get("ec_backend") and bool(ec_backend)


def _record_params(
    db: Database, settings: Settings, wanted: dict[str, str], ec_backend: str | None
) -> tuple[dict[str, str], DataDirs | None]:
    """Record the parameters the store lacks (see _to_record); a new store's data dirs are
    claimed in the same transaction (returned; None for a store that existed)."""
    dirs = None
    with db.write() as conn:
        is_new = not store_params.load(conn)
        recorded = store_params.record_missing(db, conn, wanted)
        if not recorded.get("ec_backend") and ec_backend:
            # Begun in replication mode: the first start in EC mode fixes the backend, or
            # a node picking another one would decode these chunks with the wrong matrix.
            recorded = store_params.record_if_empty(conn, "ec_backend", ec_backend)
        if is_new:
            # Claimed before the commit that creates the store: another process opening
            # the fresh home at the same moment (`serve` and a CLI command) waits for it,
            # then finds its dirs claimed. Claimed after it, that one could see a store
            # with unclaimed dirs and run with every data dir unavailable.
            dirs = open_data_dirs(
                settings.resolved_data_dirs, recorded["store_id"], initialise=True
            )
    return recorded, dirs


def open_core(
    settings: Settings, *, initialise_dirs: bool = False, claim_shared_disk: bool = False
) -> EngineCore:
    """Open (creating on first use) the store the settings describe; `claim_shared_disk`:
    see open_data_dirs."""
    db = Database(settings.resolved_database_url)
    try:
        db.migrate()
        policy = RedundancyPolicy(settings)
        wanted = _wanted_params(settings, policy.ec_backend)
        dirs: DataDirs | None = None
        with db.read() as conn:
            recorded = store_params.load(conn)
        if _to_record(recorded, wanted, policy.ec_backend):
            recorded, dirs = _record_params(db, settings, wanted, policy.ec_backend)
        wrong = [n for n in _FIXED if recorded.get(n) != wanted[n]]
        if wrong:
            raise StoreParamsMismatch(
                "configuration disagrees with the store's recorded parameters: "
                + ", ".join(
                    f"{_SETTING_OF.get(n, n)} is {wanted[n]}, the store uses {recorded.get(n)}"
                    for n in wrong
                )
                + "; chunking must stay fixed per store: set them back to the store's: "
                + ", ".join(f"{n} = {recorded.get(n)}" for n in wrong if n in _SETTING_OF)
                + " (to chunk differently, start a new store: another home and database)"
            )
        ec_backend = recorded.get("ec_backend") or policy.ec_backend
        if ec_backend and ec_backend != policy.ec_backend:
            policy = RedundancyPolicy(settings, ec_backend)
        self_test(ec_backend)
        if dirs is None:
            dirs = open_data_dirs(
                settings.resolved_data_dirs,
                recorded["store_id"],
                initialise=initialise_dirs,
                claim_shared_disk=claim_shared_disk,
            )
        tune_allocator()
        pool = CpuPool(settings.workers)

        def on_faults(rec: ChunkRecord, faults: list[ShardFault]) -> None:
            chunk = rec.chunk_id
            reason = "; ".join(f"shard {f.shard_index}: {f.reason}" for f in faults)
            try:
                with db.write() as conn:
                    queued = chunk_index.queue_repair(
                        db,
                        conn,
                        chunk,
                        reason,
                        [f.shard_index for f in faults],
                        rec.generation,
                        rec.shards,
                    )
            except Exception:
                log.exception("could not queue chunk %s for repair (%s)", chunk, reason)
                return
            if queued:
                own = reader.dir_faults.per_chunk(faults)  # a dir down: said once, not here
                (log.warning if own else log.debug)(
                    "chunk %s read around bad shards: %s", chunk, reason
                )
            else:  # collected by gc, stored again or its bad shards rebuilt, while read
                log.info("chunk %s was collected or stored again while it was read", chunk)

        def reload(chunk: str) -> ChunkRecord | None:
            with db.read() as conn:
                return chunk_index.load(conn, [chunk]).get(chunk)

        reader = ChunkReader(
            dirs, ec_backend or None, on_faults, io_threads=policy.shard_io_threads, reload=reload
        )
        return EngineCore(
            settings=settings,
            db=db,
            dirs=dirs,
            pool=pool,
            policy=policy,
            writer=ChunkWriter(settings, db, dirs, policy, pool, slots=pool.workers + 1),
            reader=reader,
            params=recorded,
            read_budget=Budget(settings.read_ahead_budget_chunks),
        )
    except BaseException:
        db.close()
        raise
