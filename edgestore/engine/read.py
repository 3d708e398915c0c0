"""Reading: rebuild chunks from any sufficient set of shards, verify, stream objects back.

Data shards are read first; a missing or corrupt one is replaced by parity, transparently,
and the chunk is queued for repair. Every chunk is checked against its SHA-256 before a byte
of it leaves (invariant 3); too few intact shards is a clear error, never wrong bytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from edgestore.codec import compression, shardfile
from edgestore.codec.erasure import RedundancyCodec, ReedSolomon, Replication
from edgestore.codec.hashing import chunk_id as compute_chunk_id
from edgestore.engine.pipeline import ContextThreadPool
from edgestore.errors import (
    ChunkCorrupt,
    ChunkUnreadable,
    CorruptShard,
    StorageError,
    StorageUnavailable,
)
from edgestore.logonce import OncePer
from edgestore.metadata.chunks import ChunkRecord
from edgestore.storage.datadirs import DataDirs
from edgestore.types import Layout, ShardRef

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShardFault:
    chunk_id: str
    shard_index: int
    reason: str
    dir_down: str | None = None  # the data dir, when it failed as a whole (missing, unmarked)


# How often the log names a data dir that is down again, with the chunks read around since.
DIR_DOWN_LOG_SECONDS = 3600.0


class DirFaultLog:
    """Faults of shards whose whole data dir is down, said once per dir (and again hourly,
    with a count), not once per chunk: with a disk gone, every read and scrub of a chunk
    with a shard on it would otherwise log the same dir again (thousands of lines a round)."""

    def __init__(self, logger: logging.Logger, every: float = DIR_DOWN_LOG_SECONDS) -> None:
        self._log = logger
        self._due = OncePer(every)
        self._lock = threading.Lock()
        self._since: dict[str, int] = {}  # dir -> chunks read around since it was last named

    def per_chunk(self, faults: Sequence[ShardFault]) -> list[ShardFault]:
        """Note the faults of dirs down; return the rest, which the caller logs per chunk."""
        down = {f.dir_down: f.reason for f in faults if f.dir_down is not None}
        for name, reason in down.items():
            with self._lock:
                self._since[name] = self._since.get(name, 0) + 1
                if not self._due.due(name):
                    continue
                count = self._since.pop(name)
            self._log.error(
                "data dir %s is down (%s): chunks with shards on it are read around and "
                "queued for repair (%d so far; said again in an hour, not per chunk)",
                name,
                reason,
                count,
            )
        return [f for f in faults if f.dir_down is None]


class Examined(NamedTuple):
    """What `ChunkReader.examine` found: the chunk's raw bytes, verified; what is wrong with
    its shards; and its stored bytes (the decoded payload, before decompression: what its
    shard files encode, so repair can rebuild just the bad ones), None for an inline chunk."""

    raw: bytes
    faults: list[ShardFault]
    stored: bytes | None


FaultSink = Callable[[ChunkRecord, list[ShardFault]], None]
Reload = Callable[[str], ChunkRecord | None]


def _unreported(_rec: ChunkRecord, _faults: list[ShardFault]) -> None:
    pass


class ChunkReader:
    """Rebuilds and verifies single chunks; thread-safe."""

    def __init__(
        self,
        dirs: DataDirs,
        ec_backend: str | None,
        on_faults: FaultSink,
        io_threads: int = 0,
        reload: Reload | None = None,
    ) -> None:
        self._dirs = dirs
        self._ec_backend = ec_backend
        self._on_faults = on_faults
        # The chunk's current row: a reader holding a record loaded before the chunk was
        # stored again (repair, or an upload of a damaged chunk), or before repair rebuilt
        # some of its shards elsewhere, finds those files gone.
        self._reload = reload
        self.dir_faults = DirFaultLog(log)
        # Reads a chunk's shards at once (0: one after another). Its own threads, not the
        # writer's: downloads must not queue an upload's shard writes behind their reads.
        self._io = (
            ContextThreadPool(io_threads, thread_name_prefix="edgestore-read")
            if io_threads > 0
            else None
        )
        self._codecs: dict[tuple[Layout, int, int], RedundancyCodec] = {}

    def close(self) -> None:
        if self._io is not None:
            self._io.shutdown(wait=True, cancel_futures=True)

    def codec(self, rec: ChunkRecord) -> RedundancyCodec:
        """The codec that encodes (and decodes) the chunk's shards."""
        key = (rec.layout, rec.ec_k, rec.ec_m)
        codec = self._codecs.get(key)
        if codec is None:
            if rec.layout == Layout.EC:
                codec = ReedSolomon(rec.ec_k, rec.ec_m, self._ec_backend)
            else:
                codec = Replication(rec.ec_k + rec.ec_m)
            self._codecs[key] = codec
        return codec

    def read(self, rec: ChunkRecord) -> bytes:
        """The chunk's raw bytes, verified against its id.

        A record that no longer names the chunk's shards (stored again since it was loaded,
        its old files collected, or bad shards rebuilt elsewhere) is reloaded once, so a long
        download survives a repair."""
        try:
            return self._read(rec)
        except (ChunkUnreadable, ChunkCorrupt):
            fresh = self._reload(rec.chunk_id) if self._reload is not None else None
            if fresh is None or (fresh.generation, fresh.shards) == (rec.generation, rec.shards):
                raise
            return self._read(fresh)

    def _read(self, rec: ChunkRecord) -> bytes:
        if rec.layout == Layout.INLINE:
            if rec.inline_data is None:
                raise ChunkUnreadable(f"chunk {rec.chunk_id} has no inline data")
            return self._finish(rec, rec.inline_data, [], self._on_faults)
        got, faults = self._gather(rec)
        return self._rebuild(rec, got, faults)

    def check(self, rec: ChunkRecord) -> list[ShardFault]:
        """Read every shard of the chunk and check each against its own checksum, without
        decoding: what is wrong with it (scrub; a read takes only the shards it needs, so a
        lost parity shard goes unseen until then)."""
        if rec.layout == Layout.INLINE:
            return []
        return self._gather_every(rec)[1]

    def examine(self, rec: ChunkRecord) -> Examined:
        """What `check` finds, and the chunk's raw bytes, verified, rebuilt from the intact
        shards that check read (repair: each shard is read once, not k of them again to
        decode), with the stored bytes they decoded to. Raises as `read` does: fewer than k
        intact shards, or other bytes rebuilt.

        The faults are not queued: the chunk is queued already (repair is what looks at it),
        and a fault queued while repair works on it is a newer one, which must keep it
        queued (chunks.unqueue), not one repair queued itself."""
        if rec.layout == Layout.INLINE:
            if rec.inline_data is None:
                raise ChunkUnreadable(f"chunk {rec.chunk_id} has no inline data")
            return Examined(self._finish(rec, rec.inline_data, [], _unreported), [], None)
        got, faults = self._gather_every(rec)
        stored = self._decode(rec, got, faults, _unreported)
        return Examined(self._finish(rec, stored, faults, _unreported), faults, stored)

    def _gather_every(self, rec: ChunkRecord) -> tuple[dict[int, bytes], list[ShardFault]]:
        refs = list(rec.shards)
        got: dict[int, bytes] = {}
        faults: list[ShardFault] = []
        for ref, result in zip(refs, self._fetch_all(rec, refs), strict=True):
            if isinstance(result, ShardFault):
                faults.append(result)
            else:
                got[ref.shard_index] = result
        seen = {ref.shard_index for ref in refs}
        faults += [
            ShardFault(rec.chunk_id, i, "no shard recorded")
            for i in range(rec.ec_k + rec.ec_m)
            if i not in seen
        ]
        return got, faults

    def _gather(self, rec: ChunkRecord) -> tuple[dict[int, bytes], list[ShardFault]]:
        needed = self._needed(rec)
        got: dict[int, bytes] = {}
        faults: list[ShardFault] = []
        # Shard refs come ordered by index: data shards first, parity only when needed, as
        # many at a time as are still missing.
        todo = list(rec.shards)
        while todo and len(got) < needed:
            batch, todo = todo[: needed - len(got)], todo[needed - len(got) :]
            for ref, result in zip(batch, self._fetch_all(rec, batch), strict=True):
                if isinstance(result, ShardFault):
                    faults.append(result)
                else:
                    got[ref.shard_index] = result
        return got, faults

    @staticmethod
    def _needed(rec: ChunkRecord) -> int:
        return rec.ec_k if rec.layout == Layout.EC else 1

    def _rebuild(self, rec: ChunkRecord, got: dict[int, bytes], faults: list[ShardFault]) -> bytes:
        """Decode the intact shards' payloads, then finish."""
        sink = self._on_faults
        return self._finish(rec, self._decode(rec, got, faults, sink), faults, sink)

    def _decode(
        self, rec: ChunkRecord, got: dict[int, bytes], faults: list[ShardFault], sink: FaultSink
    ) -> bytes:
        """The chunk's stored bytes, decoded from the intact shards' payloads (the codec
        takes the first k); raises (and queues the chunk) if too few or the wrong size."""
        needed = self._needed(rec)
        if len(got) < needed:
            lost = ", ".join(f"#{f.shard_index}: {f.reason}" for f in faults)
            sink(rec, faults)
            raise ChunkUnreadable(
                f"chunk {rec.chunk_id} has {len(got)} intact shards of {len(rec.shards)}, "
                f"needs {needed} ({lost})"
            )
        stored = self.codec(rec).decode(got)
        if len(stored) != rec.stored_size:
            reason = f"decoded to {len(stored)} bytes, expected {rec.stored_size}"
            sink(rec, [*faults, ShardFault(rec.chunk_id, -1, reason)])
            raise ChunkCorrupt(f"chunk {rec.chunk_id} {reason}")
        return stored

    def _finish(
        self, rec: ChunkRecord, stored: bytes, faults: list[ShardFault], sink: FaultSink
    ) -> bytes:
        """Decompress and verify against the chunk's id; queue it if anything was wrong."""
        try:
            raw = compression.decompress(rec.compression, stored, rec.raw_size)
        except ValueError as exc:  # a damaged zstd frame, or not the recorded raw size
            sink(rec, [*faults, ShardFault(rec.chunk_id, -1, str(exc))])
            raise ChunkCorrupt(f"chunk {rec.chunk_id} cannot be decompressed: {exc}") from None
        if len(raw) != rec.raw_size or compute_chunk_id(raw) != rec.chunk_id:
            sink(rec, [ShardFault(rec.chunk_id, -1, "rebuilt chunk mismatch")])
            raise ChunkCorrupt(f"chunk {rec.chunk_id} does not match its SHA-256 after rebuild")
        if faults:
            sink(rec, faults)
        return raw

    def _fetch_all(self, rec: ChunkRecord, refs: Sequence[ShardRef]) -> list[bytes | ShardFault]:
        """The verified payloads of these shards (or why each is unusable), read in parallel:
        the reads of a chunk's shards wait on the disk (or disks) together, not in turn."""
        if self._io is None or len(refs) < 2:
            return [self._fetch(rec, ref) for ref in refs]
        futures = [self._io.submit(self._fetch, rec, ref) for ref in refs[1:]]
        first = self._fetch(rec, refs[0])
        return [first, *(f.result() for f in futures)]

    def _fetch(self, rec: ChunkRecord, ref: ShardRef) -> bytes | ShardFault:
        backend = self._dirs.backends.get(ref.backend)
        if backend is None:
            reason = (
                f"no configured data dir carries the marker of {ref.backend} "
                "(taken out of data_dirs, or its disk unmounted?)"
            )
            return ShardFault(rec.chunk_id, ref.shard_index, reason, ref.backend)
        try:
            # No more than the file's recorded size and a byte: one grown by damage (an
            # inode claiming gigabytes) is not taken into memory to find it is wrong.
            expected = shardfile.HEADER_SIZE + ref.size
            blob = backend.get(ref.key, expected + 1)
            if len(blob) > expected:
                raise CorruptShard(f"shard file is larger than the {expected} bytes recorded")
            header, payload = shardfile.unpack(blob, rec.chunk_id)
            if header.shard_index != ref.shard_index or header.payload_checksum != ref.checksum:
                raise StorageError("shard header disagrees with the index")
        except StorageUnavailable as exc:  # the dir, not this file (no marker, gone, EIO)
            return ShardFault(rec.chunk_id, ref.shard_index, str(exc), ref.backend)
        except StorageError as exc:
            return ShardFault(rec.chunk_id, ref.shard_index, str(exc))
        return bytes(payload)
