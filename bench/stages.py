"""Each ingest stage alone, on one thread, with the project's own code: bytes per second.

The data set is read straight into the chunker's buffer, as the engine reads a file (timed:
"read", the copy out of the page cache and the buffer's compaction, work of the thread that
cuts the stream), then cut ("chunk", chunks lent as in the engine); each chunk then goes
through the stages one after the other on one thread, each timed on its own, and its buffers
are freed before the next chunk, as in the engine, so memory stays at a chunker buffer
whatever the data set's size and each stage's figure includes what its memory costs in the
engine. "EC encode" and
"shard write" follow the engine's RedundancyPolicy: a chunk that compresses to at most
small_chunk_max_bytes is stored as m+1 whole copies (nothing to encode, more to write), a tiny
one inline (no files). "EC encode" lays out the shard files with their headers (and payload
checksums), as shardfile.build does in the engine; "shard write" writes them and syncs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bench import datasets
from edgestore.chunking import StreamChunker
from edgestore.codec import compression, shardfile
from edgestore.codec.hashing import ResumableSha256, chunk_id
from edgestore.config import Settings
from edgestore.engine.dedup import Redundancy, RedundancyPolicy
from edgestore.storage.local import LocalBackend
from edgestore.storage.placement import place, shard_key
from edgestore.types import ChunkId, Compression, Layout

READ = "read into the chunker"
CHUNK = "chunk (FastCDC)"
CHUNK_HASH = "chunk id SHA-256"
FILE_HASH = "whole-file SHA-256"
COMPRESS = "compress (probe + zstd)"
ENCODE = "EC encode (by policy)"
SHARD_WRITE = "shard write (+syncfs)"
STAGES = (READ, CHUNK, CHUNK_HASH, FILE_HASH, COMPRESS, ENCODE, SHARD_WRITE)


@dataclass(slots=True)
class Timing:
    wall: float = 0.0
    cpu: float = 0.0  # this thread's user + system time


@contextmanager
def timed(t: Timing) -> Iterator[None]:
    w0, c0 = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        t.wall += time.perf_counter() - w0
        t.cpu += time.thread_time() - c0


@dataclass(slots=True)
class StageRun:
    """One pass of every stage over a data set."""

    raw_bytes: int = 0
    timings: dict[str, Timing] = field(default_factory=lambda: {s: Timing() for s in STAGES})
    chunks: int = 0
    stored_bytes: int = 0  # after compression
    shard_bytes: int = 0  # shard files written, headers included
    layouts: dict[str, int] = field(default_factory=lambda: {la.value: 0 for la in Layout})
    sha256: str = ""

    def rate(self, stage: str) -> float:
        """Raw input bytes per wall-clock second."""
        return self.raw_bytes / max(self.timings[stage].wall, 1e-9)

    def cpu_rate(self, stage: str) -> float:
        """Raw input bytes per CPU second: what the stage costs a core, waits excluded."""
        return self.raw_bytes / max(self.timings[stage].cpu, 1e-9)

    def shard_write_rate(self) -> float:
        """Shard bytes written per wall-clock second."""
        return self.shard_bytes / max(self.timings[SHARD_WRITE].wall, 1e-9)


@dataclass(frozen=True, slots=True)
class _Encoded:
    chunk: ChunkId
    codec: Compression
    stored_size: int
    redundancy: Redundancy | None  # None: inline in the database, no shard files
    files: list[shardfile.ShardFile]


class _StagePipeline:
    def __init__(self, settings: Settings, shard_root: Path) -> None:
        self.settings = settings
        self.run = StageRun()
        self.chunker = StreamChunker(settings.chunker, lend=True)  # as the engine's
        self.hasher = ResumableSha256()
        self.policy = RedundancyPolicy(settings)
        self.backends: dict[str, LocalBackend] = {}
        for i in range(settings.ec_k + settings.ec_m):
            backend = LocalBackend(f"d{i}", shard_root / f"d{i}")
            backend.initialise()
            self.backends[backend.name] = backend
        self.names = list(self.backends)

    def feed(self, f: BinaryIO) -> None:
        """The whole file, as the engine's `_pull` reads it: straight into the chunker's
        buffer (one `readinto` per fill), then every chunk that became final."""
        while True:
            with timed(self.run.timings[READ]):
                piece = self.chunker.fill(f.readinto, 1 << 62)
            n = len(piece)
            piece.release()
            if not n:
                return
            self.run.raw_bytes += n
            while True:
                with timed(self.run.timings[CHUNK]):
                    chunk = self.chunker.pop()
                if chunk is None:
                    break
                self._process(chunk)
                del chunk  # a lent view: its block goes back to the pool once all are gone

    def finish(self) -> StageRun:
        with timed(self.run.timings[CHUNK]):
            chunks = self.chunker.finish()
        for chunk in chunks:
            self._process(chunk)
        self.run.sha256 = self.hasher.hexdigest()
        return self.run

    def _process(self, chunk: bytes) -> None:
        """Every later stage over one chunk, timed one by one; its buffers are freed before
        the next chunk, as in the engine (timing a whole batch per stage kept 128 MiB of
        encoded shards alive, and the fresh memory's page faults made EC encode look ~5x
        dearer than it is in the engine)."""
        run, t, s = self.run, self.run.timings, self.settings
        run.chunks += 1
        with timed(t[CHUNK_HASH]):
            cid = chunk_id(chunk)
        with timed(t[FILE_HASH]):
            self.hasher.update(chunk)
        with timed(t[COMPRESS]):
            codec, stored = compression.compress(chunk, s.zstd_level, s.compress_min_saving)
        # The engine's policy decides per stored size: EC, whole copies, or inline.
        with timed(t[ENCODE]):
            red = self.policy.for_size(len(stored))
            files = (
                shardfile.build(red.codec, cid, red.layout, red.k, red.m, codec, stored)
                if red is not None
                else []
            )
        e = _Encoded(cid, codec, len(stored), red, files)
        with timed(t[SHARD_WRITE]):
            run.shard_bytes += self._write(e)
        run.stored_bytes += e.stored_size
        run.layouts[(e.redundancy.layout if e.redundancy else Layout.INLINE).value] += 1

    def _write(self, e: _Encoded) -> int:
        """Write a chunk's shards one after the other, then one flush (syncfs) per chunk, as
        the engine's ChunkWriter lays them (it writes them in parallel)."""
        if e.redundancy is None:
            return 0
        generation = secrets.token_hex(6)
        written = 0
        placement = place(e.chunk, len(e.files), self.names)
        for index, (shard, name) in enumerate(zip(e.files, placement, strict=True)):
            self.backends[name].write(shard_key(e.chunk, generation, index), shard.parts)
            written += sum(len(p) for p in shard.parts)
        self.backends[self.names[0]].flush()  # the data dirs share one filesystem here
        return written


def run_stages(path: Path, settings: Settings, shard_root: Path) -> StageRun:
    """Every stage over the file at `path`; shard files go under `shard_root`, removed after."""
    try:
        pipeline = _StagePipeline(settings, shard_root)
        with open(path, "rb", buffering=0) as f:  # as `edgestore put` opens it
            pipeline.feed(f)
        return pipeline.finish()
    finally:
        datasets.discard(shard_root)


@dataclass(frozen=True, slots=True)
class Ceiling:
    """What two cores and the disk could ingest if the stages overlapped perfectly (bytes
    per second)."""

    one_core: float  # 1 / Σ 1/rate
    two_cores: float  # 2 / Σ 1/rate
    caps: dict[str, float]  # stages that cannot run on two cores at once, and the disk
    value: float
    formula: str

    @property
    def cpu(self) -> float:
        """The ceiling without the disk's cap: what the cores alone allow."""
        return min([self.two_cores, *(v for k, v in self.caps.items() if k != DISK)])


def serial_stages(encode_holds_gil: bool) -> tuple[str, ...]:
    """Stages of one stream that run on one thread at a time: the chunker cuts the stream in
    order, the whole-file SHA-256 runs on a serial lane, and EC encode too when it goes
    through pyeclib (which holds the GIL; the direct liberasurecode binding does not)."""
    return (CHUNK, FILE_HASH, ENCODE) if encode_holds_gil else (CHUNK, FILE_HASH)


DISK = "disk (shard write, wall)"
# The thread that cuts the stream also reads it into the chunker's buffer (Appender._pull):
# one thread, so its cap is the two stages' costs summed, not the chunker's rate alone.
CUTTING_THREAD = (READ, CHUNK)
CUTTING = "cutting thread (read + chunk)"


def ceiling(
    rates: dict[str, float],
    cores: int = 2,
    *,
    encode_holds_gil: bool = False,
    disk: float | None = None,
) -> Ceiling:
    """min(cores / Σ 1/rate, each serial thread's rate, the disk); rates are raw bytes per CPU
    second, `disk` raw bytes per wall second of the shard-write stage.

    The disk is a resource of its own: no number of cores writes shards faster than it takes
    them. This machine's virtual disk swings between ~230 and ~600 MB/s of shard bytes from
    one minute to the next; while it is slow it, not the cores, bounds an ingest. The stage
    writes one shard after another where the engine overlaps them, but that is not why it
    is slower: written the engine's way (9 files per chunk in parallel, 1, 2 or 4 chunks at a
    time, a syncfs per chunk) the disk took 263-276 MB/s against 254 one file at a time.
    """
    seconds_per_byte = sum(1.0 / rates[s] for s in STAGES)
    one = 1.0 / seconds_per_byte
    caps: dict[str, float] = {}
    names: list[str] = []
    for s in serial_stages(encode_holds_gil):
        if s == CHUNK:
            caps[CUTTING] = 1.0 / sum(1.0 / rates[t] for t in CUTTING_THREAD)
            names.append("1 / (1/rate[read] + 1/rate[chunk])")
        else:
            caps[s] = rates[s]
            names.append(f"rate[{s.split(' (')[0]}]")
    if disk is not None:
        caps[DISK] = disk
        names.append("wall rate[shard write]")
    value = min(cores * one, *caps.values())
    formula = f"min({cores} / Σ 1/rate[stage], " + ", ".join(names) + ")"
    return Ceiling(one, cores * one, caps, value, formula)
