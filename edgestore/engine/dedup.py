"""Storing one chunk: hash, dedup lookup, compress, make redundant, write shards, index it.

The chunk row is inserted only after every shard is durable, so a crash at any point leaves at
worst shard files without a row (garbage, collected by gc), never a row without its shards.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from edgestore.codec import compression, shardfile
from edgestore.codec.erasure import RedundancyCodec, ReedSolomon, Replication
from edgestore.codec.hashing import chunk_id as compute_chunk_id
from edgestore.config import Settings
from edgestore.engine.pipeline import ContextThreadPool, CpuPool, release_free_memory
from edgestore.errors import ChunkHashMismatch
from edgestore.metadata import chunks as chunk_index
from edgestore.metadata.db import Database
from edgestore.storage.backend import Buffer
from edgestore.storage.datadirs import DataDirs
from edgestore.storage.placement import place, shard_key
from edgestore.types import ChunkId, Layout, ShardRef

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredChunk:
    chunk_id: ChunkId
    raw_size: int
    stored_size: int  # bytes this call wrote to shards (0 for a dedup hit)
    is_new: bool
    compressed_size: int = 0  # after zstd, before redundancy (0 for a dedup hit)
    seconds: float = 0.0  # time to hash, look up and (if new) store
    # A damaged chunk (queued for repair) stored again from these bytes: written, not a hit.
    healed: bool = False


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

    @property
    def shard_io_threads(self) -> int:
        """Threads to write (or read) one chunk's shard files at once, plus a few for
        staged tails and chunks finishing together."""
        return max(self.large.codec.total, 1) + 3

    def for_size(self, stored_size: int) -> Redundancy | None:
        """None means inline."""
        if stored_size <= self.inline_max:
            return None
        return self.small if stored_size <= self.small_max else self.large

    def dirs_warning(self, dir_count: int) -> str | None:
        """What the operator must hear when there are fewer data dirs than shards per chunk:
        shards then share dirs, and losing even one dir may lose chunks (6+3 over two dirs
        puts 4-5 shards on each), whatever m promises."""
        short = [r for r in (self.large, self.small) if r.codec.total > dir_count]
        if not short:
            return None
        worst = max(short, key=lambda r: r.m - _dirs_survived(r.codec.total, r.m, dir_count))
        survived = _dirs_survived(worst.codec.total, worst.m, dir_count)
        kind = f"{worst.k}+{worst.m} erasure coding" if worst.layout == Layout.EC else "copies"
        return (
            f"{dir_count} data dir(s) for {worst.codec.total} shards per chunk ({kind}): "
            f"shards of a chunk share dirs, so chunks survive losing {survived} data dir(s), "
            f"not {worst.m}; give each shard a data dir of its own (data_dirs, then "
            "`edgestore init`) or lower ec_k/ec_m (replicas)"
        )


def _dirs_survived(shards: int, spare: int, dir_count: int) -> int:
    """Dirs that can be lost before a chunk of `shards` shards, any `spare` of them
    expendable, placed round-robin over `dir_count` dirs may be lost."""
    per_dir = sorted(
        (shards // dir_count + (i < shards % dir_count) for i in range(dir_count)), reverse=True
    )
    lost = survived = 0
    for count in per_dir:
        lost += count
        if lost > spare:
            break
        survived += 1
    return survived


@dataclass(slots=True)
class _Prepared:
    """A new chunk after the CPU phase: compressed, coded, ready to be written and indexed."""

    record: chunk_index.ChunkRecord
    shards: list[tuple[ShardRef, list[Buffer]]]  # (where, the file's buffers)
    replaces: str | None = None  # a damaged chunk's generation, stored again from these bytes


class ChunkWriter:
    """Stores chunks exactly once, whatever the concurrency, in a two-phase pipeline.

    CPU phase (the CPU pool): SHA-256, dedup lookup, zstd, erasure coding. I/O phase (the
    commit pool): write every shard at once on the shard-I/O pool, then insert the chunk row.
    A worker never sits waiting on fsync while there is hashing to do. At most `slots` chunks
    are in flight (submit blocks beyond that), which bounds memory.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        dirs: DataDirs,
        policy: RedundancyPolicy,
        cpu: CpuPool,
        slots: int,
    ) -> None:
        self._settings = settings
        self._db = db
        self._dirs = dirs
        self._policy = policy
        self._cpu = cpu
        self._slots = threading.BoundedSemaphore(slots)
        self._commit = ContextThreadPool(slots, thread_name_prefix="edgestore-commit")
        # Shard and staged-tail writes.
        self._io = ContextThreadPool(policy.shard_io_threads, thread_name_prefix="edgestore-io")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[StoredChunk]] = {}

    @property
    def io(self) -> ThreadPoolExecutor:
        """The shard-I/O pool (staged tails use it too)."""
        return self._io

    def close(self) -> None:
        self._commit.shutdown(wait=True, cancel_futures=True)
        self._io.shutdown(wait=True, cancel_futures=True)

    def store(self, raw: Buffer, expect: str | None = None) -> StoredChunk:
        """Store a chunk unless already stored; returns once it is durable."""
        return self.submit(raw, expect).result()

    def reserve(self) -> None:
        """Wait for a pipeline slot before cutting a chunk, so that a writer waiting for room
        holds no chunk in memory; pass `reserved=True` to the submit that follows."""
        self._slots.acquire()

    def release(self) -> None:
        """Give back a reserved slot that will not be used."""
        self._slots.release()

    def submit(
        self, raw: Buffer, expect: str | None = None, *, reserved: bool = False
    ) -> Future[StoredChunk]:
        """Start storing a chunk; the future resolves once it is durable (or known).

        `expect`: the id the sender claims (native API); if the bytes hash otherwise, the
        future fails with ChunkHashMismatch before anything is written.
        """
        if not reserved:
            self._slots.acquire()
        result: Future[StoredChunk] = Future()
        result.set_running_or_notify_cancel()  # work under way can't be cancelled, only awaited
        started = time.perf_counter()
        try:
            self._cpu.submit(self._cpu_phase, raw, result, started, expect)
        except BaseException:
            self._slots.release()
            raise
        result.add_done_callback(lambda _f: self._slots.release())
        return result

    # --- the two phases ---------------------------------------------------------------------

    def _cpu_phase(
        self, raw: Buffer, result: Future[StoredChunk], started: float, expect: str | None
    ) -> None:
        cid: ChunkId | None = None
        try:
            computed = compute_chunk_id(raw)
            if expect is not None and computed != expect:  # cid stays None: nothing to undo
                raise ChunkHashMismatch(
                    f"the {len(raw)} bytes received hash to {computed}, not to chunk id "
                    f"{expect}; nothing was stored"
                )
            cid = computed
            with self._lock:
                owner = self._inflight.setdefault(cid, result)
            if owner is not result:  # the same chunk is being stored right now: wait for it
                owner.add_done_callback(lambda f: self._follow(f, result, raw, started))
                cid = None
                return
            prepared = self._prepare(cid, raw)
            if isinstance(prepared, StoredChunk):
                self._finish(cid, result, prepared, started)
            else:
                self._commit.submit(self._io_phase, prepared, result, started)
            cid = None
        except BaseException as exc:
            if cid is not None:
                self._fail(cid, result, exc)
            else:
                result.set_exception(exc)

    def _io_phase(self, prep: _Prepared, result: Future[StoredChunk], started: float) -> None:
        rec = prep.record
        try:
            refs = self._write_shards(prep)
            # A new chunk is not fsynced on its own: the upload checkpoint that references it
            # is a durable commit, and it makes every earlier commit durable with it. A chunk
            # stored again is: its old files are orphans the next sweep deletes at once, and
            # nothing durable may follow (a repair), so an undone commit would leave its row
            # pointing at deleted files.
            with self._db.write(durable=prep.replaces is not None) as conn:
                replaced = prep.replaces is not None and chunk_index.replace(
                    conn, rec, refs, prep.replaces
                )  # else the damaged row is gone (gc): a new one, or replaced by another node
                inserted = replaced or chunk_index.insert(self._db, conn, rec, refs)
            if not inserted:  # another node won the race; ours are unreferenced duplicates
                self._delete_shards(refs)
                stored = StoredChunk(rec.chunk_id, rec.raw_size, 0, False)
            elif replaced:
                log.warning(
                    "chunk %s had missing or corrupt shards; stored again from bytes uploaded "
                    "now (its old shard files go with gc's orphan sweep)",
                    rec.chunk_id,
                )
                written = sum(r.size for r in refs) or rec.stored_size
                stored = StoredChunk(rec.chunk_id, rec.raw_size, written, False, healed=True)
            else:
                written = sum(r.size for r in refs) or rec.stored_size
                stored = StoredChunk(
                    rec.chunk_id, rec.raw_size, written, True, compressed_size=rec.stored_size
                )
            self._finish(rec.chunk_id, result, stored, started)
        except BaseException as exc:
            self._fail(rec.chunk_id, result, exc)
        finally:
            prep.shards.clear()  # the shard buffers, freed now rather than with the work item
            release_free_memory()

    def _follow(
        self, owner: Future[StoredChunk], result: Future[StoredChunk], raw: Buffer, started: float
    ) -> None:
        exc = owner.exception() if not owner.cancelled() else RuntimeError("chunk write cancelled")
        if exc is not None:
            result.set_exception(exc)
            return
        stored = owner.result()
        result.set_result(
            StoredChunk(stored.chunk_id, len(raw), 0, False, seconds=time.perf_counter() - started)
        )

    def _finish(
        self, cid: str, result: Future[StoredChunk], stored: StoredChunk, started: float
    ) -> None:
        with self._lock:
            self._inflight.pop(cid, None)
        result.set_result(replace(stored, seconds=time.perf_counter() - started))

    def _fail(self, cid: str, result: Future[StoredChunk], exc: BaseException) -> None:
        with self._lock:
            self._inflight.pop(cid, None)
        result.set_exception(exc)

    # --- work ---------------------------------------------------------------------------------

    def _prepare(self, cid: ChunkId, raw: Buffer) -> StoredChunk | _Prepared:
        with self._db.read() as conn:
            found = chunk_index.lookup(conn, cid)
        if found is not None and not found.damaged:
            if found.refcount > 0:
                return StoredChunk(cid, len(raw), 0, False)
            with self._db.write() as conn:  # unreferenced: restart its grace period first
                if chunk_index.keep_alive(conn, cid):
                    return StoredChunk(cid, len(raw), 0, False)
        # New, or damaged (a read found shards missing or corrupt): these bytes are the
        # chunk, verified by its id, so they make it whole again with shards of their own.
        replaces = found.generation if found is not None and found.damaged else None

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
                inline_data=bytes(stored),  # a row keeps it: never a view of a buffer
            )
            return _Prepared(record, [], replaces)
        names = self._dirs.writable_names()
        shard_files = shardfile.build(
            redundancy.codec, cid, redundancy.layout, redundancy.k, redundancy.m, codec, stored
        )
        placement = place(cid, len(shard_files), names)
        files = []
        for index, (shard, backend_name) in enumerate(zip(shard_files, placement, strict=True)):
            ref = ShardRef(
                cid,
                index,
                backend_name,
                shard_key(cid, generation, index),
                shard.header.payload_length,
                shard.header.payload_checksum,
            )
            files.append((ref, shard.parts))
        record = chunk_index.ChunkRecord(
            chunk_id=cid,
            raw_size=len(raw),
            stored_size=len(stored),
            compression=codec,
            layout=redundancy.layout,
            ec_k=redundancy.k,
            ec_m=redundancy.m,
            shard_size=shard_files[0].header.payload_length,
            generation=generation,
            refcount=0,
        )
        return _Prepared(record, files, replaces)

    def _write_shards(self, prep: _Prepared) -> list[ShardRef]:
        """Write all shards of a chunk at once, then make them durable with one flush per
        filesystem, shared with the chunks finishing at the same time (not an fsync per file
        and per directory).

        The writes go to different data dirs (disks) and overlap on the shard-I/O pool, which
        holds one aligned write buffer per thread: its size bounds that memory.
        """
        refs = [ref for ref, _ in prep.shards]
        backends = self._dirs.backends
        writes = [
            self._io.submit(backends[ref.backend].write, ref.key, parts)
            for ref, parts in prep.shards
        ]
        errors = [exc for exc in (w.exception() for w in writes) if exc is not None]
        if not errors:
            try:
                self._dirs.flush(ref.backend for ref in refs)
            except Exception as exc:
                errors.append(exc)
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
